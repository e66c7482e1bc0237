"""SCP (Sliced Cramér Preservation, Kolouri et al., ICLR 2020): importance from sliced outputs.

For the task k just finished, with μ(θ) = (1/N_k) Σ_{x in replay_k} f(x; θ) the mean network
output (logits) over its replay inputs and ξ_1..ξ_L random unit vectors,

    Γ_k,i = (1/L) Σ_l ( ∂ (ξ_lᵀ μ(θ)) / ∂θ_i )²    at θ^k,     Γ = Σ_{k<t} Γ_k,

and task t ≥ 1 trains on  L = task loss over P_t  +  λ Σ_i Γ_i (θ_i − θ_i^{t−1})².

Choices:
- μ is the mean over the whole replay set of task k, not per batch: ∂μ/∂θ is linear in the
  samples, so the per-batch vector-Jacobian products are summed and squared only at the end.
- ξ_l: L = `scp_projections` (default 100) Gaussian draws normalised to unit
  length, from `torch.Generator().manual_seed(seed + t)` with t the task about to start (the
  convention of LifeQuant's noise draws), so a run is reproducible and another seed draws other
  slices.
- Batched: the products are taken with `torch.autograd.grad(..., is_grads_batched=True)` over
  chunks of projections, not one backward pass per projection. With C outputs and L > C
  projections the C rows of ∂μ/∂θ are enough: (1/L) Σ_l (ξ_lᵀ J)² = Σ_{c,c'} M_cc' J_c J_c'
  with M = (1/L) Σ_l ξ_l ξ_lᵀ, so a task costs min(C, L) products per replay batch.
- Several tasks: Γ_k of the task just finished is added to the running sum (online, as EWC);
  the anchor is the latest θ^{t−1}.
- Training pool: train_t ∪ earlier replay, the pool LifeQuant uses, so only the penalty differs.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from lq.errors import LqError
from lq.lifelong.importance import _eval_mode
from lq.methods.base import TaskContext
from lq.methods.quadratic import Batch, Importance, ReplayImportanceMethod, trainable
from lq.methods.registry import register_method


def unit_projections(count: int, dim: int, generator: torch.Generator) -> torch.Tensor:
    """`count` directions uniform on the unit sphere of R^dim (rows), drawn from `generator`."""
    xi = torch.randn(count, dim, generator=generator, device=generator.device, dtype=torch.float64)
    return (xi / xi.norm(dim=1, keepdim=True)).to(torch.float32)


def sliced_importance(model: nn.Module, batches: Iterable[Batch], projections: torch.Tensor | None = None, *,
                      count: int = 100, generator: torch.Generator | None = None, chunk: int = 16,
                      batched: bool = True) -> dict[str, torch.Tensor]:
    """Γ_i = mean_l (∂(ξ_lᵀ μ)/∂θ_i)², μ the mean output of `model` over all inputs of `batches`.

    `projections` (L, C) gives the ξ_l; otherwise `count` unit vectors are drawn from `generator`
    once the output size C is known. Labels are ignored. `batched=False` takes one backward pass
    per row (the reference the tests compare the batched products with).
    """
    named = trainable(model)
    names, params = list(named), list(named.values())
    device = params[0].device
    sums: dict[str, torch.Tensor] | None = None  # Σ_x ∂(r_kᵀ f(x))/∂θ per row r_k: (K, *shape)
    rows = mix = None
    count_x = 0
    with _eval_mode(model):
        for batch in batches:
            x = batch[0].to(device)
            out = model(x).sum(0)  # (C,): Σ_x f(x); its products with r_k are linear in x
            if rows is None:
                if projections is None:
                    projections = unit_projections(count, out.numel(), generator or torch.Generator())
                projections = projections.to(device=device, dtype=out.dtype)
                if projections.shape[1] != out.numel():
                    raise LqError(f"SCP projections have {projections.shape[1]} entries, "
                                  f"the model's output {out.numel()}")
                if len(projections) > out.numel():   # L > C: take the C rows of J, mix with M
                    rows = torch.eye(out.numel(), device=device, dtype=out.dtype)
                    mix = projections.T @ projections / len(projections)
                else:
                    rows = projections
                sums = {n: p.new_zeros((len(rows), *p.shape)) for n, p in named.items()}
            count_x += len(x)
            step = chunk if batched else 1
            for start in range(0, len(rows), step):
                part = rows[start : start + step]
                last = start + step >= len(rows)
                if batched:
                    grads = torch.autograd.grad(out, params, grad_outputs=part, is_grads_batched=True,
                                                retain_graph=not last, allow_unused=True)
                else:
                    grads = torch.autograd.grad(out, params, grad_outputs=part[0], retain_graph=not last,
                                                allow_unused=True)
                    grads = [None if g is None else g.unsqueeze(0) for g in grads]
                for n, g in zip(names, grads):
                    if g is not None:
                        sums[n][start : start + len(part)] += g
    if sums is None or count_x == 0:
        raise LqError("SCP importance needs at least one replay image; got none")
    importance = {}
    for n, s in sums.items():
        jac = s / count_x  # ∂(r_kᵀ μ)/∂θ
        if mix is None:
            importance[n] = jac.pow(2).mean(0)
        else:
            importance[n] = (torch.tensordot(mix, jac, dims=1) * jac).sum(0).clamp_min_(0)  # PSD form
    return importance


@register_method
class SCP(ReplayImportanceMethod):
    name = "scp"

    def __init__(self, *, ll_lambda: float, balanced: bool, ball_form: str, projections: int):
        super().__init__(ll_lambda=ll_lambda, balanced=balanced, ball_form=ball_form)
        if isinstance(projections, bool) or not isinstance(projections, int) or projections < 1:
            raise LqError(f"lifelong.methods.scp.projections = {projections!r} is invalid: need an integer >= 1")
        self.projections, self.seed = projections, 0

    def before_task(self, ctx: TaskContext) -> None:
        self.seed = int(ctx.settings.get("seed", 0))  # the run's training seed draws the projections
        super().before_task(ctx)

    def task_importance(self, model: nn.Module, batches: Iterable[Batch], task: int) -> Importance:
        # seed + t, with t = task + 1 the task about to start
        generator = torch.Generator().manual_seed(self.seed + task + 1)
        return sliced_importance(model, batches, count=self.projections, generator=generator)
