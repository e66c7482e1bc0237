"""INQ as a training-engine plugin: incremental quantize-and-freeze to power-of-two weights (SPEC 9).

A task runs one engine phase per accumulated portion sigma_1 < ... < sigma_{K-1}: at the start
of phase k the plugin freezes round(sigma_k N) entries of every power-of-two layer (`lq.quant.inq`)
and sets them to their levels; the phase then retrains the free weights (and biases, BN) with a
fresh SGD and learning-rate schedule. The last portion, sigma_K = 1, only quantizes: after the
task every weight sits on its layer's level set and the model is an ordinary `pow2` model.

A frozen weight holds its level exactly. Its gradient is zero (the quantizer's `only` mask feeds
it through a detached branch), but SGD's weight decay and momentum would still move it, so after
every step the plugin writes the frozen levels back and clears their momentum.

Each layer's top exponent n1 is fixed when INQ first starts on it (`WeightQuantizer.fixed_exponent`)
and kept from then on, in the model's state. In the lifelong chain every task unfreezes all
weights, keeps n1 (so the level set, and the hardware's shifts, stay the same and the previous
task's model is exactly representable) and runs the portions again within the task: a new task
needs free weights to learn, and INQ's own answer to "how do quantized weights learn" is to let a
shrinking share of them train in float while the rest stay on the grid.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from lq.errors import LqError
from lq.quant.functions import pow2_round
from lq.quant.inq import PARTITIONS, check_portions, frozen_count, grow_frozen
from lq.quant.levels import pow2_layers
from lq.train.plugin import Optimization, Phase, Plugin, TaskContext, make_optimizer


@dataclass(frozen=True)
class InqSettings:
    """`quantizers.inq` in params.yaml: the portions, the partition and each phase's schedule."""

    portions: tuple[float, ...] = (0.5, 0.75, 0.875, 1.0)
    partition: str = "magnitude"
    epochs_per_phase: int = 2
    milestones: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "portions", check_portions(self.portions))
        object.__setattr__(self, "milestones", tuple(self.milestones))
        if self.partition not in PARTITIONS:
            raise LqError(f"quantizers.inq.partition '{self.partition}' is unknown; allowed: {', '.join(PARTITIONS)}")
        if isinstance(self.epochs_per_phase, bool) or not isinstance(self.epochs_per_phase, int) \
                or self.epochs_per_phase < 1:
            raise LqError(f"quantizers.inq.epochs_per_phase must be an integer >= 1, not {self.epochs_per_phase!r}")
        late = [m for m in self.milestones if not 0 < m <= self.epochs_per_phase]
        if late:
            raise LqError(f"quantizers.inq.milestones {list(self.milestones)}: each must be within 1.."
                          f"{self.epochs_per_phase} (quantizers.inq.epochs_per_phase)")




class Inq(Plugin):
    """Runs the portions of `settings` in every task of a stage; see the module doc."""

    name = "inq"

    def __init__(self, settings: InqSettings, seed: int = 0):
        self.settings, self.seed = settings, seed
        self.frozen: dict[str, torch.Tensor] = {}
        self._levels: dict[str, torch.Tensor] = {}
        self._optimizer: torch.optim.Optimizer | None = None
        self._task = 0

    # --- events -----------------------------------------------------------------------------------
    def before_task(self, ctx: TaskContext) -> None:
        layers = pow2_layers(ctx.model)
        if not layers:
            raise LqError("INQ needs power-of-two weights (quantizer pow2) at 2 to 8 bits; this model has none")
        self._task = ctx.task
        for name, layer in layers.items():
            layer.weight_quantizer.fixed_exponent(layer.weight)  # n1: fixed once, kept across tasks
            self.frozen[name] = torch.zeros_like(layer.weight, dtype=torch.bool)
        self._install(ctx.model)

    def phases(self, ctx: TaskContext, default: Sequence[Phase]) -> list[Phase]:
        base = default[0].schedule
        schedule = dataclasses.replace(base, epochs=self.settings.epochs_per_phase, milestones=self.settings.milestones)
        return [Phase(f"inq {portion:g}", schedule) for portion in self.settings.portions[:-1]]

    def before_phase(self, ctx: TaskContext, phase: Phase, index: int) -> Optimization:
        self._freeze(ctx.model, self.settings.portions[index], index)
        optimization = make_optimizer(ctx.model, phase.schedule)
        self._optimizer = optimization.optimizer
        return optimization

    @torch.no_grad()
    def after_step(self, model: nn.Module) -> None:
        for name, layer in pow2_layers(model).items():
            frozen = self.frozen[name]
            layer.weight.copy_(torch.where(frozen, self._levels[name], layer.weight))
            buffer = self._optimizer.state.get(layer.weight, {}).get("momentum_buffer") if self._optimizer else None
            if buffer is not None:
                buffer.masked_fill_(frozen, 0.0)

    def after_task(self, ctx: TaskContext) -> None:
        self._freeze(ctx.model, 1.0, len(self.settings.portions) - 1)  # the last portion only quantizes
        for layer in pow2_layers(ctx.model).values():
            layer.weight_quantizer.only = None  # an ordinary pow2 model from here on
        self._optimizer = None

    def state_dict(self) -> dict[str, Any]:
        return {"frozen": {name: mask.clone() for name, mask in self.frozen.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        frozen = state.get("frozen", {})
        for name, mask in frozen.items():
            self.frozen[name] = mask.to(self.frozen[name].device) if name in self.frozen else mask.clone()

    # --- the partition ----------------------------------------------------------------------------
    @torch.no_grad()
    def _freeze(self, model: nn.Module, portion: float, index: int) -> None:
        """Freeze `portion` of every layer (a resumed phase finds it frozen already) and put the
        frozen entries on their levels."""
        for k, (name, layer) in enumerate(pow2_layers(model).items()):
            quantizer, w = layer.weight_quantizer, layer.weight
            generator = torch.Generator().manual_seed(((self.seed * 1009 + self._task) * 1009 + index) * 1009 + k)
            self.frozen[name] = grow_frozen(w, self.frozen[name].to(w.device), frozen_count(portion, w.numel()),
                                            self.settings.partition, generator)
            levels = pow2_round(w, quantizer.fixed_exponent(w), quantizer.bits)
            w.copy_(torch.where(self.frozen[name], levels, w))
        self._install(model)

    def _install(self, model: nn.Module) -> None:
        """Point every layer's quantizer at its frozen mask and remember the frozen values."""
        for name, layer in pow2_layers(model).items():
            layer.weight_quantizer.only = self.frozen[name]
            self._levels[name] = torch.where(self.frozen[name], layer.weight.detach(), 0.0)
