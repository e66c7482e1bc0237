"""The quadratic (EWC-style) penalty that anchors parameters to the previous task's values (SPEC §7)."""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn as nn

from lq.errors import LqError


def snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    """Detached copies of every named parameter: the anchor θ^{t-1} taken after a task ends."""
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def quadratic_penalty(
    model: nn.Module,
    anchor: Mapping[str, torch.Tensor],
    importance: Mapping[str, torch.Tensor],
    lam: float,
) -> torch.Tensor:
    """``lam * Σ_i F_i (θ_i − θ_i^anchor)²`` over the parameters named in ``importance``.

    Parameters absent from ``importance`` are free (e.g. a method that anchors only the
    backbone). Its gradient w.r.t. θ is ``2 lam F (θ − θ^anchor)``. Anchor and importance should
    already be on the parameters' device; they are moved if not (a no-op when they are).
    """
    params = dict(model.named_parameters())
    total = None
    for name, f in importance.items():
        if name not in params:
            raise LqError(f"importance names parameter {name!r}, which the model does not have")
        if name not in anchor:
            raise LqError(f"anchor has no value for parameter {name!r} named in the importance")
        p = params[name]
        a = anchor[name]
        if a.shape != p.shape or f.shape != p.shape:
            raise LqError(
                f"parameter {name!r} has shape {tuple(p.shape)} but its anchor is "
                f"{tuple(a.shape)} and its importance {tuple(f.shape)}"
            )
        a = a.to(device=p.device, dtype=p.dtype)
        f = f.to(device=p.device, dtype=p.dtype)
        term = (f * (p - a).pow(2)).sum()
        total = term if total is None else total + term
    if total is None:
        first = next(iter(params.values()), None)
        device = first.device if first is not None else None
        return torch.zeros((), device=device)
    return lam * total
