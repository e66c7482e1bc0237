"""Pick the device once, at the entry point, and pass it down."""

from __future__ import annotations

import os

import torch

from lq.errors import LqError
from lq.train.gpus import claim_free_gpu


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
