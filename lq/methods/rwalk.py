"""RWalk (Riemannian Walk, Chaudhry et al., ECCV 2018): EWC++ Fisher plus a KL-normalised path score.

Every optimizer step, with g the task loss's gradient before the step and Δθ the step taken:

    F_i ← α g_i² + (1 − α) F_i                       (EWC++, eq. 6; the first step sets F = g²)
    s_i += −g_i Δθ_i / (½ F_i Δθ_i² + ε)             (eq. 7: loss drop per unit of KL moved)

When task k ends its score is clamped at 0 and averaged with the earlier tasks'
(s̄ ← ½ (s̄ + s_k); s̄ = s_0 after the first task), and task t ≥ 1 trains on (eq. 8)

    L = task loss over P_t  +  λ Σ_i (F̂_i + ŝ_i) (θ_i − θ_i^{t−1})²,

F̂ = F / max F and ŝ = s̄ / max s̄ (maxima over all parameters), both normalised to [0, 1] as the
paper asks so that neither term swamps the other.

Choices:
- α (`rwalk_alpha`, default 0.9) weighs the newest batch, as in the paper's eq. 6 and the
  authors' code, so F is a short-memory average; F runs on across tasks (it is never reset), and
  the F̂ of the penalty is its value when the task ended.
- g is the gradient of the task loss alone (BaLL or cross-entropy): `.grad` minus the penalty's
  closed-form gradient, as in SI. F is therefore the empirical Fisher of the training loss.
- The score is updated every step (the authors' code accumulates ω over Δt = 10 steps first);
  ε (`epsilon`, 1e-3 in params.yaml, the value in the authors' code) bounds it where F Δθ² ≈ 0.
- Clamping at 0 happens per task, before averaging: a task along which a parameter's moves raised
  the loss contributes 0 rather than cancelling another task's positive score.
- F, the running score, the averaged score and the anchor are state, so a resumed run continues.
- Scale: F̂ + ŝ is at most 2 whatever the model, so λ bounds the stiffness directly: SGD on the
  penalty is stable while lr · 4λ stays below about 2(1 + momentum) (λ = 100 at lr 0.01 is not).
- Training pool: train_t ∪ earlier replay, the pool LifeQuant uses, so only the penalty differs.
"""

from __future__ import annotations


import torch
from torch import nn

from lq.errors import LqError
from lq.lifelong import snapshot
from lq.methods.base import TaskContext
from lq.methods.quadratic import PathIntegralMethod, zeros_like_params
from lq.methods.registry import register_method


def _normalised(values: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Divide by the largest entry over all tensors (left as is when that is 0)."""
    top = max((v.max() for v in values.values() if v.numel()), default=None)
    if top is None or top.item() <= 0:
        return {n: v.clone() for n, v in values.items()}
    return {n: v / top for n, v in values.items()}


@register_method
class RWalk(PathIntegralMethod):
    name = "rwalk"
    state_keys = ("importance", "anchor", "fisher", "score", "past_score")

    def __init__(self, *, ll_lambda: float, balanced: bool, ball_form: str, alpha: float, epsilon: float):
        super().__init__(ll_lambda=ll_lambda, balanced=balanced, ball_form=ball_form)
        if not 0 < alpha <= 1:
            raise LqError(f"lifelong.methods.rwalk.alpha = {alpha!r} is invalid: need a number in (0, 1]")
        self.alpha, self.eps = float(alpha), float(epsilon)
        self.fisher: dict[str, torch.Tensor] = {}      # EWC++ running Fisher F
        self.score: dict[str, torch.Tensor] = {}       # this task's path score s
        self.past_score: dict[str, torch.Tensor] = {}  # s̄, the average over finished tasks

    def before_task(self, ctx: TaskContext) -> None:
        super().before_task(ctx)
        if ctx.task == 0:
            self.importance, self.fisher, self.past_score = {}, {}, {}
        self.anchor = snapshot(ctx.model)
        self.score = zeros_like_params(ctx.model)

    def after_backward(self, model: nn.Module) -> None:
        super().after_backward(model)
        for n, g in self._grad.items():
            if n in self.fisher:
                self.fisher[n].mul_(1 - self.alpha).add_(g.pow(2), alpha=self.alpha)
            else:
                self.fisher[n] = g.pow(2)

    def step_taken(self, name: str, grad: torch.Tensor, delta: torch.Tensor) -> None:
        kl = 0.5 * self.fisher[name] * delta.pow(2)
        self.score[name].add_(-grad * delta / (kl + self.eps))

    def after_task(self, ctx: TaskContext) -> None:
        self._place(ctx.model)
        task_score = {n: s.clamp_min(0) for n, s in self.score.items()}
        if self.past_score:
            self.past_score = {n: 0.5 * (self.past_score[n] + s) for n, s in task_score.items()}
        else:
            self.past_score = task_score
        fisher, score = _normalised(self.fisher), _normalised(self.past_score)
        self.importance = {n: fisher[n] + score[n] for n in score if n in fisher}
        self.score = {n: torch.zeros_like(s) for n, s in self.score.items()}
