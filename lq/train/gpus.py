"""Which GPU a job takes when Snakemake runs several on one machine: a lock file per GPU.

Kept apart from `lq.train.device` because it needs no torch: the claim is plain `flock`.
"""

from __future__ import annotations

import fcntl
import os
import tempfile
from pathlib import Path

# Locks held for the life of the process: the GPU this process claimed stays claimed until exit.
_CLAIMS: list[int] = []


def claim_free_gpu(count: int, lock_dir: Path | None = None) -> int:
    """The index of a GPU no other lq process on this machine holds, locked until this one exits.

    Parallel Snakemake jobs (`--resources gpu=N`) would otherwise all start on cuda:0. The lock
    is an advisory `flock` on a file per GPU, which the kernel releases when the process dies,
    so a killed job never leaves a GPU claimed. When every GPU is held, jobs share cuda:0.
    """
    lock_dir = lock_dir or Path(tempfile.gettempdir())
    for index in range(count):
        fd = os.open(lock_dir / f"lq-gpu-{index}.lock", os.O_CREAT | os.O_RDWR, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            continue
        _CLAIMS.append(fd)
        return index
    return 0
