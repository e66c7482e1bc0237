"""Pick the device once, at the entry point, and pass it down."""

from __future__ import annotations

import fcntl
import os
import tempfile
from pathlib import Path

import torch

from lq.errors import LqError

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


def resolve_device(name: str) -> torch.device:
    """'auto' is a free CUDA device when present (one per job, see `claim_free_gpu`), else CPU;
    an explicit CUDA request without CUDA is an error. Under torchrun each rank uses its own
    LOCAL_RANK device instead (lq.train.distributed)."""
    if name == "auto":
        if not torch.cuda.is_available():
            return torch.device("cpu")
        count = torch.cuda.device_count()
        if count == 1 or "LOCAL_RANK" in os.environ:
            return torch.device("cuda")
        return torch.device("cuda", claim_free_gpu(count))
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise LqError(f"train.device = {name!r} but no CUDA device is available; use 'auto' or 'cpu'")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise LqError(f"train.device = {name!r}: only {torch.cuda.device_count()} CUDA device(s) present")
    return device


def use_deterministic_kernels(enabled: bool) -> None:
    """`train.deterministic`: make GPU runs repeatable, at some cost in speed.

    On CPU every kernel lq uses is deterministic already. On CUDA, cuDNN may pick convolution
    algorithms whose backward passes accumulate with atomics (run-to-run float differences),
    autotuning may pick different algorithms per run, and cuBLAS needs a fixed workspace to
    reduce in a fixed order. This switch turns all three off, and any other nondeterministic op
    then fails loudly instead of silently varying.
    """
    if not enabled:
        return
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.backends.cudnn.benchmark = False
    torch.backends.cudnn.deterministic = True
    torch.use_deterministic_algorithms(True)


def describe(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)})"
    return f"cpu ({torch.get_num_threads()} threads)"
