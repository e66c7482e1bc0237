"""SI (Synaptic Intelligence, Zenke et al., ICML 2017): importance from the path integral.

While training task k, every optimizer step adds each parameter's share of the loss decrease,

    ω_i += −g_i · Δθ_i     (g: gradient of the task loss alone, before the step;
                            Δθ: θ after the step − θ before it),

and when the task ends  Ω_i ← max(Ω_i + ω_i / ((Δ_k,i)² + ξ), 0)  with Δ_k = θ^k − θ^{k−1} the
task's total displacement; ω restarts at 0. Task t ≥ 1 then trains on

    L = task loss over P_t  +  c Σ_i Ω_i (θ_i − θ_i^{t−1})²     (c = `ll_lambda`, ξ = `epsilon`).

Choices:
- g is the task loss's gradient (BaLL or cross-entropy) without the penalty's, as in the authors'
  code: `after_backward` reads `.grad` of loss + penalty and subtracts the penalty's closed-form
  gradient 2cΩ(θ − θ*), so no second backward pass is needed. Δθ includes momentum and weight
  decay: it is the step the optimizer actually took.
- Clamping at 0, as the authors' code does (the paper's formula has no clamp): with momentum a
  step can raise the loss along a parameter, making ω negative, and a negative Ω would reward
  moving away from the anchor and leave the penalty unbounded below.
- ξ (`epsilon`, 0.1 in params.yaml) keeps Ω bounded where a parameter hardly moved over the task.
- ω and the task's start θ^{k−1} (= the anchor) are state, so a run resumed mid-task continues
  the same path integral.
- Training pool: train_t ∪ earlier replay, the pool LifeQuant uses, so only the penalty differs.
"""

from __future__ import annotations


import torch

from lq.lifelong import snapshot
from lq.methods.base import TaskContext
from lq.methods.quadratic import PathIntegralMethod, trainable, zeros_like_params
from lq.methods.registry import register_method


@register_method
class SI(PathIntegralMethod):
    name = "si"
    state_keys = ("importance", "anchor", "omega")

    def __init__(self, *, ll_lambda: float, balanced: bool, ball_form: str, epsilon: float):
        super().__init__(ll_lambda=ll_lambda, balanced=balanced, ball_form=ball_form)
        self.xi = float(epsilon)
        self.omega: dict[str, torch.Tensor] = {}

    def before_task(self, ctx: TaskContext) -> None:
        super().before_task(ctx)
        if ctx.task == 0:
            self.importance = {}
        self.anchor = snapshot(ctx.model)          # θ^{t−1}: the anchor and the path's start
        self.omega = zeros_like_params(ctx.model)

    def step_taken(self, name: str, grad: torch.Tensor, delta: torch.Tensor) -> None:
        self.omega[name].sub_(grad * delta)         # ω += −g·Δθ

    def after_task(self, ctx: TaskContext) -> None:
        self._place(ctx.model)
        params = trainable(ctx.model)
        importance = {}
        for n, w in self.omega.items():
            displacement = params[n].detach() - self.anchor[n]
            total = w / (displacement.pow(2) + self.xi)
            if n in self.importance:
                total = total + self.importance[n]
            importance[n] = total.clamp_min_(0)
        self.importance = importance
        self.omega = {n: torch.zeros_like(w) for n, w in self.omega.items()}
