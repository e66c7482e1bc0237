"""INQ's incremental partition (SPEC 9): how many weights each portion freezes, and which.

At portion k exactly round(sigma_k * N) entries of a tensor are frozen (half rounds up): the ones
frozen before plus, among the free ones, the largest |w| (ties by flat index: a stable sort) or,
for the paper's ablation, a seeded random choice. The frozen set only ever grows within a task;
the Caffe release re-sorted every step (so frozen weights could thaw) and froze every |w| at or
above the sorted value at index int(0.7 N) - 1, one entry more than the 30 % it meant.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from lq.checks import portions_problem
from lq.errors import LqError

PARTITIONS = ("magnitude", "random")


def check_portions(portions: Sequence[float]) -> tuple[float, ...]:
    """Accumulated portions sigma_1 < ... < sigma_K = 1, each in (0, 1]."""
    problem = portions_problem(portions)
    if problem:
        raise LqError(problem)
    return tuple(float(p) for p in portions)


def frozen_count(portion: float, numel: int) -> int:
    """round(portion * numel), half up: how many entries portion `portion` holds frozen."""
    return min(numel, math.floor(portion * numel + 0.5))


def grow_frozen(w: Tensor, frozen: Tensor, count: int, partition: str = "magnitude",
                generator: torch.Generator | None = None) -> Tensor:
    """The frozen mask grown to `count` entries: `frozen` plus the chosen free entries of `w`."""
    if partition not in PARTITIONS:
        raise LqError(f"INQ partition '{partition}' is unknown; allowed: {', '.join(PARTITIONS)}")
    have = int(frozen.sum())
    if count < have:
        raise LqError(f"INQ cannot freeze {count} entries of a tensor that already holds {have} frozen")
    flat = frozen.flatten().clone()
    if count == have:
        return flat.view_as(frozen)
    free = (~flat).nonzero().squeeze(1)
    if partition == "magnitude":
        order = torch.sort(w.detach().flatten()[free].abs(), descending=True, stable=True).indices
    else:
        order = torch.randperm(len(free), generator=generator, device="cpu").to(free.device)
    flat[free[order[: count - have]]] = True
    return flat.view_as(frozen)
