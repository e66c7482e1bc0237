"""A test hook: hold training at a known step, once, until the job is stopped from outside.

`LQ_TEST_PAUSE_AT=task:epoch:step` (phase 0) or `task:phase:epoch:step`, with
`LQ_TEST_PAUSE_FLAG=FILE`: the first process to finish that step creates FILE (holding its pid
and its SLURM job id, if any) and sleeps until it is killed; a later process (the job's retry)
finds FILE and trains on. A test waits for FILE, then cancels the job (`scancel`) in the middle
of an epoch: tests/integration/test_slurm.py. Unset, the hook does nothing.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path


def pause_hook() -> Callable[[int, int, int, int], None]:
    spec = os.environ.get("LQ_TEST_PAUSE_AT")
    flag = os.environ.get("LQ_TEST_PAUSE_FLAG")
    if not spec or not flag:
        return lambda *_: None
    parts = tuple(int(v) for v in spec.split(":"))
    target = (parts[0], 0, *parts[1:]) if len(parts) == 3 else parts

    def hook(task: int, phase: int, epoch: int, step: int) -> None:
        if (task, phase, epoch, step) != target:
            return
        try:
            fd = os.open(flag, os.O_WRONLY | os.O_CREAT | os.O_EXCL)
        except FileExistsError:
            return  # an earlier attempt paused here: this one trains on
        with os.fdopen(fd, "w") as fh:  # `paused` reads None until the JSON is whole
            json.dump({"pid": os.getpid(), "slurm_job_id": os.environ.get("SLURM_JOB_ID")}, fh)
        while True:
            time.sleep(1)

    return hook


def paused(flag: str | Path) -> dict | None:
    """What the paused process wrote into FILE, or None before it got there."""
    try:
        return json.loads(Path(flag).read_text())
    except (OSError, ValueError):
        return None
