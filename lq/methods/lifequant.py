"""LifeQuant (ICCV 2023): BaLL-rebalanced task loss plus an importance-weighted proximal penalty.

For task t >= 1 the objective is  BaLL(f(x), y) over P_t  +  λ Σ_i F_i (θ_i − θ_i^{t−1})²,
with F the mean squared gradient of the BaLL loss over the replay data of tasks 0..t−1 taken at
θ^{t−1} (optionally plus the reference's quantization-noise term). ProxQ, the other half of the
method, is the weight quantizer (`quant.weight_quantizer: proxq`).

Training pool: train_t ∪ the replay sets of tasks < t (`Method.pool`), the paper's P_t. Unlike
the online baselines, F is recomputed at every task from all replay data at θ^{t−1}.
"""

from __future__ import annotations

from itertools import chain

import torch

from lq.lifelong import noise_amplitude, quant_noise_importance, snapshot, squared_grad_importance
from lq.methods.base import TaskContext
from lq.methods.quadratic import QuadraticMethod
from lq.methods.registry import register_method


@register_method
class LifeQuant(QuadraticMethod):
    name = "lifequant"
    uses_replay = True

    def __init__(self, *, ll_lambda: float, balanced: bool, ball_form: str, noise_importance: bool, noise_draws: int):
        super().__init__(ll_lambda=ll_lambda, balanced=balanced, ball_form=ball_form)
        self.noise_importance, self.noise_draws = noise_importance, noise_draws

    def before_task(self, ctx: TaskContext) -> None:
        super().before_task(ctx)
        if ctx.task == 0 or not ctx.replay:
            self.importance, self.anchor = {}, {}
            return
        replay = chain.from_iterable(r.epoch(0) for r in ctx.replay)
        amplitude = noise_amplitude(ctx.settings["act_range"], ctx.settings["act_bits"]) if self.noise_importance else 0.0
        if amplitude > 0:
            # The noise term joins the BaLL loss before squaring, weighted 1 / (replay batches) as
            # in the reference (lq.lifelong.quant_noise_importance).
            generator = torch.Generator(device=ctx.device).manual_seed(ctx.settings["seed"] + ctx.task)
            importance = quant_noise_importance(
                ctx.model, self.criterion, replay, amplitude=amplitude, draws=self.noise_draws,
                weight=1.0 / sum(len(r) for r in ctx.replay), generator=generator)
        else:
            importance = squared_grad_importance(ctx.model, self.criterion, replay)
        self.importance, self.anchor = importance, snapshot(ctx.model)
