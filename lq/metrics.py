"""Evaluation metrics (SPEC §8): pure functions of the accuracy matrix, plus two batch helpers.

``R[t][j]`` is the accuracy on task j's test split after training task t (a T×T numpy array or
nested lists). Entries with j > t (tasks not yet learnt) may be filled in, but no metric here
reads them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import NamedTuple

import numpy as np
import torch

from lq.errors import LqError


def _matrix(R) -> np.ndarray:
    """R as a float T×T array; a clear error for anything else."""
    try:
        a = np.asarray(R, dtype=np.float64)
    except (ValueError, TypeError) as e:
        raise LqError(f"accuracy matrix must be a square T×T table of numbers: {e}") from None
    if a.ndim != 2 or a.shape[0] != a.shape[1] or a.shape[0] == 0:
        raise LqError(f"accuracy matrix must be square and non-empty (T×T, T >= 1), got shape {a.shape}")
    return a


def average_accuracy(R, after_task: int | None = None) -> float:
    """Mean of ``R[t][j]`` over the tasks seen so far, j ≤ t (default t = T−1: the final average)."""
    a = _matrix(R)
    t = a.shape[0] - 1 if after_task is None else after_task
    if isinstance(t, bool) or not isinstance(t, (int, np.integer)) or not 0 <= t < a.shape[0]:
        raise LqError(f"after_task must be an integer in [0, {a.shape[0] - 1}], got {after_task!r}")
    return float(a[t, : t + 1].mean())


def average_accuracy_curve(R) -> list[float]:
    """Average accuracy after each task t = 0..T−1 (the curve plotted against the task index)."""
    a = _matrix(R)
    return [float(a[t, : t + 1].mean()) for t in range(a.shape[0])]


class Forgetting(NamedTuple):
    """Forgetting of each earlier task j < T−1 and their mean."""

    per_task: list[float]
    mean: float


def forgetting(R) -> Forgetting:
    """Per task j < T−1: ``max_{l in [j, T−2]} R[l][j] − R[T−1][j]``; and the mean over those j.

    Only rows from j on count (before task j was learnt its accuracy says nothing). Negative
    values mean the task improved. With T = 1 no task can be forgotten: empty list, mean 0.0.
    """
    a = _matrix(R)
    last = a.shape[0] - 1
    per = [float(a[j:last, j].max() - a[last, j]) for j in range(last)]
    return Forgetting(per, float(np.mean(per)) if per else 0.0)


def backward_transfer(R) -> float:
    """Mean over j < T−1 of ``R[T−1][j] − R[j][j]`` (negative = forgetting); 0.0 when T = 1."""
    a = _matrix(R)
    last = a.shape[0] - 1
    if last == 0:
        return 0.0
    j = np.arange(last)
    return float((a[last, j] - a[j, j]).mean())


def topk_correct(logits: torch.Tensor, targets: torch.Tensor, ks: Sequence[int] = (1, 5)) -> torch.Tensor:
    """Number of samples whose target is among the top-k logits, for each k in ``ks``.

    Returns an int64 tensor (len(ks),) on the logits' device, so a loop can add batches up
    without a host sync per batch. A k above the number of classes counts as all classes.
    """
    if logits.dim() != 2 or targets.dim() != 1 or targets.shape[0] != logits.shape[0]:
        raise LqError(
            f"topk_correct needs logits (B, C) and targets (B,), got {tuple(logits.shape)} "
            f"and {tuple(targets.shape)}"
        )
    ks = tuple(ks)
    if not ks or any(isinstance(k, bool) or not isinstance(k, int) or k < 1 for k in ks):
        raise LqError(f"ks must be positive integers, got {ks!r}")
    num_classes = logits.shape[1]
    kmax = min(max(ks), num_classes)
    top = logits.topk(kmax, dim=1).indices  # (B, kmax), best first
    hit = (top == targets.to(top.device).unsqueeze(1)).cumsum(dim=1).sum(dim=0)  # hits within top-i
    return torch.stack([hit[min(k, num_classes) - 1] for k in ks]).to(torch.int64)


def model_size_bits(bit_widths: Mapping[str, int], numels: Mapping[str, int]) -> int:
    """Model size in bits, ``Σ numel · bits``; both maps must name the same tensors."""
    missing = sorted(set(numels) - set(bit_widths))
    extra = sorted(set(bit_widths) - set(numels))
    if missing or extra:
        raise LqError(
            f"bit widths and element counts must name the same tensors; "
            f"no bit width for {missing}, no element count for {extra}"
        )
    total = 0
    for name, n in numels.items():
        b = bit_widths[name]
        if isinstance(b, bool) or not isinstance(b, (int, np.integer)) or not 1 <= b <= 32:
            raise LqError(f"bit width of {name!r} must be an integer in 1..32, got {b!r}")
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0:
            raise LqError(f"element count of {name!r} must be a non-negative integer, got {n!r}")
        total += int(n) * int(b)
    return total
