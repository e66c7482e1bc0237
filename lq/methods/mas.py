"""MAS (Memory Aware Synapses, Aljundi et al., ECCV 2018): importance from output sensitivity.

    L = task loss over P_t  +  λ Σ_i Ω_i (θ_i − θ_i^{t−1})²,   Ω = Σ_{k<t} Ω_k,
    Ω_k,i = (1/N_k) Σ_{x in replay_k} | ∂ ‖f(x; θ^k)‖²₂ / ∂θ_i |

Choices:
- Unsupervised: only the inputs of the replay set are used, never the labels. f is the
  network's output (the logits), as in the paper.
- The absolute value is taken per input, as the paper's formula says; the absolute value of a
  batch's summed gradient would let opposite-sign gradients of two inputs cancel. That costs one
  backward pass per replay image, once per task.
- Several tasks: Ω_k of the task just finished (at θ^k) is added to the running sum, as in the
  paper's sequential setting; the anchor is the latest θ^{t−1}.
- Scale: Ω grows with the logits' size; on the digits w4a4 model it reaches ~10² where a Fisher
  is ~10⁻², so λ must be chosen for MAS (SGD on the penalty is stable while lr · 2λ max Ω stays
  below about 2(1 + momentum); λ = 100 or even 1 diverges there).
- Training pool: train_t ∪ earlier replay, the pool LifeQuant uses, so only the penalty differs.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from lq.errors import LqError
from lq.lifelong.importance import _eval_mode
from lq.methods.quadratic import Batch, Importance, ReplayImportanceMethod, trainable
from lq.methods.registry import register_method


def output_sensitivity(model: nn.Module, batches: Iterable[Batch]) -> dict[str, torch.Tensor]:
    """Mean over inputs of |∂‖f(x)‖²₂/∂θ| (labels ignored), in eval mode, `.grad` untouched."""
    named = trainable(model)
    names, params = list(named), list(named.values())
    acc = {n: torch.zeros_like(p).detach() for n, p in named.items()}
    count = 0
    with _eval_mode(model):
        for batch in batches:
            x = batch[0].to(params[0].device)
            for i in range(len(x)):
                out = model(x[i : i + 1])
                grads = torch.autograd.grad(out.pow(2).sum(), params, allow_unused=True)
                for n, g in zip(names, grads):
                    if g is not None:
                        acc[n].add_(g.abs())
                count += 1
    if count == 0:
        raise LqError("MAS importance needs at least one replay image; got none")
    return {n: a.div_(count) for n, a in acc.items()}


@register_method
class MAS(ReplayImportanceMethod):
    name = "mas"

    def task_importance(self, model: nn.Module, batches: Iterable[Batch], task: int) -> Importance:
        return output_sensitivity(model, batches)
