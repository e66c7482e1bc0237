"""BaLL (balanced lifelong learning): class weights and the re-balanced cross-entropy (SPEC §3, §7).

While learning task t the pool P_t holds all of train_t but only a few replayed samples of the
earlier tasks. BaLL re-weights the logits per class so that frequent classes are damped and the
rare (replayed) ones keep weight close to 1.

Choice documented here: in the additive form ``z' = z + softmax(z) * w`` the softmax is NOT
detached; the gradient flows through it, exactly as in the released LifeQuant code
(``logits + F.softmax(logits, dim=1) * wpc``). Detaching would turn the term into a data-dependent
constant offset; keeping it makes results comparable with the paper's.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F

from lq import tasks
from lq.errors import LqError

FORMS = ("additive", "multiplicative")
REDUCTIONS = ("mean", "sum", "none")


def ball_weights(counts: Mapping[int, int], num_classes: int) -> torch.Tensor:
    """The BaLL weights of `lq.tasks.ball_weights` (the one implementation) as a float32 tensor (C,)."""
    weights = tasks.ball_weights(counts, num_classes)
    return torch.tensor([weights[c] for c in range(num_classes)], dtype=torch.float64).to(torch.float32)


def _check(logits: torch.Tensor, weights: torch.Tensor, form: str) -> None:
    if form not in FORMS:
        raise LqError(f"unknown BaLL form {form!r}; use one of {', '.join(FORMS)}")
    if logits.dim() != 2:
        raise LqError(f"BaLL expects logits of shape (batch, classes), got {tuple(logits.shape)}")
    if weights.shape != (logits.shape[1],):
        raise LqError(
            f"BaLL weights must have one entry per class ({logits.shape[1]}), "
            f"got shape {tuple(weights.shape)}"
        )


def ball_logits(logits: torch.Tensor, weights: torch.Tensor, form: str = "additive") -> torch.Tensor:
    """Re-balanced logits: additive ``z + softmax(z) * w`` or multiplicative ``z * w``.

    The softmax of the additive form keeps its gradient (see the module docstring).
    """
    _check(logits, weights, form)
    w = weights.to(device=logits.device, dtype=logits.dtype)
    if form == "additive":
        return logits + torch.softmax(logits, dim=1) * w
    return logits * w


def ball_loss(
    logits: torch.Tensor,
    targets: torch.Tensor,
    weights: torch.Tensor,
    form: str = "additive",
    reduction: str = "mean",
) -> torch.Tensor:
    """Cross-entropy on the BaLL re-balanced logits (the task loss of the LifeQuant objective)."""
    if reduction not in REDUCTIONS:
        raise LqError(f"unknown reduction {reduction!r}; use one of {', '.join(REDUCTIONS)}")
    return F.cross_entropy(ball_logits(logits, weights, form), targets, reduction=reduction)
