"""The pause hook the SLURM test cancels a training job at (lq/train/pause.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

from lq.train import pause
from tests.conftest import REPO


def test_the_pause_hook_holds_once_and_a_retry_trains_on(tmp_path):
    flag = tmp_path / "paused"
    code = ("from lq.train.pause import pause_hook; import sys; hook = pause_hook(); "
            "[hook(0, 0, e, s) for e in range(2) for s in range(3)]; print('went on', flush=True)")
    env = {**os.environ, "LQ_TEST_PAUSE_AT": "0:1:1", "LQ_TEST_PAUSE_FLAG": str(flag), "SLURM_JOB_ID": "41"}
    first = subprocess.Popen([sys.executable, "-c", code], cwd=REPO, env=env, stdout=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while pause.paused(flag) is None:
            assert first.poll() is None, "the first process did not hold"
            assert time.monotonic() < deadline, "no flag"
            time.sleep(0.05)
        assert pause.paused(flag) == {"pid": first.pid, "slurm_job_id": "41"}
        time.sleep(0.3)
        assert first.poll() is None, "the first process went on"
    finally:
        first.kill()
        first.wait()
    retry = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
    assert retry.stdout == "went on\n", retry.stderr
    assert json.loads(flag.read_text())["pid"] == first.pid


def test_the_pause_hook_does_nothing_unset(monkeypatch):
    monkeypatch.delenv("LQ_TEST_PAUSE_AT", raising=False)
    pause.pause_hook()(0, 0, 0, 0)
