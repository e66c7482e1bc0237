"""The events of the training engine, and what a plugin sees at each (Avalanche-style).

The engine (`lq.train.engine.Engine`) calls, for every task of a stage:

    before_task(ctx)                   once, at the previous task's parameters
    phases(ctx, default) -> phases     how the task splits into phases (default: one)
    for each phase:
        before_phase(ctx, phase)       may return an `Optimization`: the phase's own optimizer
                                       and schedule (e.g. INQ's fresh SGD per portion)
        for each epoch:
            before_epoch(ctx, rows)    may return other training rows for this epoch (coresets)
            for each batch:
                loss(batch, forward)   the first plugin that returns a `StepLoss` defines the
                                       objective (it may draw more views of the batch)
                penalty(model)         summed over plugins, added to the loss
                after_backward(model)  gradients are there
                after_step(model)      the optimizer stepped (project or restore weights here)
            after_epoch(ctx, row)
    after_task(ctx)

A plugin overrides only the events it needs and keeps its state in `state_dict`, which the
engine saves in the resumable checkpoint after every epoch and task; on resume the engine
restores that state *before* calling `before_phase` again, so a plugin can tell from its own
state what it has already done.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from lq.train.settings import Schedule


@dataclass(frozen=True)
class Phase:
    """A stretch of a task trained with one optimizer and schedule."""

    name: str
    schedule: Schedule


def sgd(model: nn.Module, schedule: Schedule) -> torch.optim.SGD:
    """SGD with the schedule's momentum and weight decay over the model's trainable parameters.

    `foreach=True` everywhere (PyTorch picks it on CUDA only): one call per update step for all
    parameters instead of a Python loop over them. It runs the same ops in the same order, so
    the weights are bit for bit the loop's (a digits ResNet-20 update: 1.63 -> 1.45 ms).
    """
    params = [p for p in model.parameters() if p.requires_grad]
    return torch.optim.SGD(params, lr=schedule.lr, momentum=schedule.momentum, weight_decay=schedule.weight_decay,
                           foreach=True)


@dataclass
class Optimization:
    """What `before_phase` may hand the engine instead of the default SGD + MultiStepLR."""

    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler


def make_optimizer(model: nn.Module, schedule: Schedule) -> Optimization:
    """The default: `sgd` with the schedule's MultiStepLR."""
    optimizer = sgd(model, schedule)
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=list(schedule.milestones), gamma=schedule.gamma)
    return Optimization(optimizer, scheduler)


@dataclass
class TaskContext:
    """What a plugin may see of a task: never any test data.

    `replay` holds eval-mode batches (`lq.train.data.Batches`) of the replay sets of earlier
    tasks; `class_weights` the BaLL weights of this task's training pool (None outside the
    lifelong stage); `rows` the pool's store rows; `settings` what the stage knows that a plugin
    may need (the training seed, bit widths, the activation range).
    """

    task: int
    model: nn.Module
    device: torch.device
    replay: Sequence[Any] = ()
    class_weights: torch.Tensor | None = None
    rows: torch.Tensor | None = None
    settings: dict[str, Any] = field(default_factory=dict)


@dataclass
class StepLoss:
    """The objective of one batch and the logits its training accuracy is counted on (None: a loss
    without labels, e.g. self-supervised; the epoch then has no training accuracy)."""

    loss: torch.Tensor
    logits: torch.Tensor | None


class Batch:
    """One training batch: the augmented view `x`, its labels `y`, and more views on demand.

    `view(k)` draws the k-th extra augmented view of the same images from a generator seeded by
    the batch's position (seed, task, phase, epoch, step, k), so two-view losses (SimSiam, SSQL)
    are reproducible and a resumed run draws the same views.
    """

    def __init__(self, x: torch.Tensor, y: torch.Tensor, draw_view: Callable[[int], torch.Tensor] | None = None):
        self.x, self.y, self._draw = x, y, draw_view

    def view(self, k: int = 1) -> torch.Tensor:
        if self._draw is None:
            raise RuntimeError("this batch source cannot draw further views")
        return self._draw(k)


class Plugin:
    """Does nothing at every event; subclasses override what they need."""

    name: str = "plugin"

    def before_task(self, ctx: TaskContext) -> None:
        pass

    def phases(self, ctx: TaskContext, default: Sequence[Phase]) -> Sequence[Phase]:
        return default

    def before_phase(self, ctx: TaskContext, phase: Phase, index: int) -> Optimization | None:
        return None

    def before_epoch(self, ctx: TaskContext, epoch: int, rows: torch.Tensor) -> torch.Tensor | None:
        return None

    def loss(self, batch: Batch, forward: Callable[[torch.Tensor], torch.Tensor]) -> StepLoss | None:
        return None

    def penalty(self, model: nn.Module) -> torch.Tensor | None:
        return None

    def after_backward(self, model: nn.Module) -> None:
        pass

    def after_step(self, model: nn.Module) -> None:
        pass

    def after_epoch(self, ctx: TaskContext, row: dict[str, Any]) -> None:
        pass

    def after_task(self, ctx: TaskContext) -> None:
        pass

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state:
            raise ValueError(f"{self.name} has no state, got keys {sorted(state)}")


class CrossEntropy(Plugin):
    """The default objective: cross-entropy of the model's logits on the augmented batch."""

    name = "cross_entropy"

    def loss(self, batch: Batch, forward: Callable[[torch.Tensor], torch.Tensor]) -> StepLoss:
        logits = forward(batch.x)
        return StepLoss(torch.nn.functional.cross_entropy(logits, batch.y), logits)
