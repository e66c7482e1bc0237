"""LifeQuant (ICCV 2023): BaLL-rebalanced task loss plus an importance-weighted proximal penalty.

For task t >= 1 the objective is  BaLL(f(x), y) over P_t  +  λ Σ_i F_i (θ_i − θ_i^{t−1})²,
with F the mean squared gradient of the BaLL loss over the replay data of tasks 0..t−1 taken at
θ^{t−1} (optionally plus the reference's quantization-noise term). ProxQ, the other half of the
method, is the weight quantizer (`quant.weight_quantizer: proxq`).
"""

from __future__ import annotations

from itertools import chain
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from lq.lifelong import ball_loss, combine, quadratic_penalty, quant_noise_importance, snapshot, squared_grad_importance
from lq.methods.base import Method, TaskContext
from lq.methods.registry import register_method


@register_method
class LifeQuant(Method):
    name = "lifequant"

    def __init__(self, *, ll_lambda: float, balanced: bool = True, ball_form: str = "additive",
                 noise_importance: bool = False, noise_draws: int = 100, noise_amplitude: float = 0.0,
                 seed: int = 0, **_: Any):
        self.lam, self.balanced, self.form = ll_lambda, balanced, ball_form
        self.noise_importance, self.noise_draws, self.noise_amplitude = noise_importance, noise_draws, noise_amplitude
        self.seed = seed
        self.weights: torch.Tensor | None = None
        self.importance: dict[str, torch.Tensor] = {}
        self.anchor: dict[str, torch.Tensor] = {}

    def loss(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        if self.balanced and self.weights is not None:
            return ball_loss(logits, targets, self.weights, form=self.form)
        return F.cross_entropy(logits, targets)

    def before_task(self, ctx: TaskContext) -> None:
        self.weights = ctx.class_weights
        if ctx.task == 0 or not ctx.replay:
            self.importance, self.anchor = {}, {}
            return
        replay = lambda: chain.from_iterable(r.epoch(0) for r in ctx.replay)  # noqa: E731
        importance = squared_grad_importance(ctx.model, self.loss, replay())
        if self.noise_importance and self.noise_amplitude > 0:
            generator = torch.Generator(device=ctx.device).manual_seed(self.seed + ctx.task)
            noise = quant_noise_importance(ctx.model, replay(), amplitude=self.noise_amplitude,
                                           draws=self.noise_draws, generator=generator)
            importance = combine(importance, noise)
        self.importance, self.anchor = importance, snapshot(ctx.model)

    def penalty(self, model: nn.Module) -> torch.Tensor | None:
        if not self.importance or self.lam == 0:
            return None
        return quadratic_penalty(model, self.anchor, self.importance, self.lam)

    def state_dict(self) -> dict[str, Any]:
        return {"importance": self.importance, "anchor": self.anchor}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.importance, self.anchor = dict(state["importance"]), dict(state["anchor"])
