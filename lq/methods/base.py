"""Lifelong methods are plugins on the events of one fixed training loop (Avalanche-style).

The loop (`lq.train.loop.fit`) calls, in order: `before_task` once per task, then per batch
`loss` (the task loss) plus `penalty` (the regulariser) before backward, `after_backward` and
`after_step`; finally `after_task`. A method overrides only the events it needs, and keeps its
state in `state_dict` so a killed run resumes with it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from lq.tasks import training_pool


@dataclass
class TaskContext:
    """What a method may see when a task starts: never any test data."""

    task: int
    model: nn.Module
    device: torch.device
    replay: Sequence[Any]          # lq.train.data.Batches of the replay sets of tasks < task
    class_weights: torch.Tensor    # BaLL weights of this task's training pool (C,)


class Method:
    """The plain loop: cross-entropy, no penalty (fine-tuning)."""

    name: ClassVar[str] = "method"
    uses_replay: ClassVar[bool] = False  # reads `TaskContext.replay` (so keeps those images stored)

    def pool(self, train: pd.DataFrame, earlier_replay: Sequence[pd.DataFrame],
             earlier_train: Sequence[pd.DataFrame], replay_in_pool: bool) -> pd.DataFrame:
        """The training table of a task: train_t plus earlier replay sets (the paper's pool),
        or train_t alone when replay only feeds the importance (the reference code)."""
        return training_pool(train, earlier_replay if replay_in_pool else [])

    def before_task(self, ctx: TaskContext) -> None:
        """Called once before training task `ctx.task`, at the previous task's parameters."""

    def loss(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits, targets)

    def penalty(self, model: nn.Module) -> torch.Tensor | None:
        """Added to the loss before backward; None when the method has none."""
        return None

    def after_backward(self, model: nn.Module) -> None:
        """Gradients are available (path-integral methods read them here)."""

    def after_step(self, model: nn.Module) -> None:
        """The optimizer has stepped."""

    def after_task(self, ctx: TaskContext) -> None:
        """Called once after training task `ctx.task`."""

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state:
            raise ValueError(f"{self.name} has no state, got keys {sorted(state)}")
