"""Pick the device once, at the entry point, and pass it down."""

from __future__ import annotations

import torch

from lq.errors import LqError


def resolve_device(name: str) -> torch.device:
    """'auto' is CUDA when present, else CPU; an explicit CUDA request without CUDA is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise LqError(f"train.device = {name!r} but no CUDA device is available; use 'auto' or 'cpu'")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise LqError(f"train.device = {name!r}: only {torch.cuda.device_count()} CUDA device(s) present")
    return device


def describe(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)})"
    return f"cpu ({torch.get_num_threads()} threads)"
