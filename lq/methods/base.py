"""A lifelong method is a plugin of the training engine that also owns the task loss and the pool.

Besides the engine's events (`lq.train.plugin.Plugin`), a method says which table a task trains
on (`pool`) and which per-batch loss it minimises (`criterion`, cross-entropy here). Its settings
come from its own block of params.yaml, `lifelong.methods.<name>`, as keyword arguments of its
constructor: the schema lists exactly those keys, so a misspelt setting is an error, and a method
without a λ cannot run with λ = 0 by accident.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import ClassVar

import pandas as pd
import torch
import torch.nn.functional as F

from lq.tasks import training_pool
from lq.train.plugin import Batch, Plugin, StepLoss, TaskContext

__all__ = ["Method", "TaskContext"]


class Method(Plugin):
    """The plain lifelong loop: cross-entropy, no penalty (fine-tuning)."""

    name: ClassVar[str] = "method"
    uses_replay: ClassVar[bool] = False  # reads `TaskContext.replay` (so keeps those images stored)

    @classmethod
    def pool(cls, train: pd.DataFrame, earlier_replay: Sequence[pd.DataFrame],
             earlier_train: Sequence[pd.DataFrame], replay_in_pool: bool) -> pd.DataFrame:
        """The training table of a task: train_t plus earlier replay sets (the paper's pool),
        or train_t alone when replay only feeds the importance (the reference code)."""
        return training_pool(train, earlier_replay if replay_in_pool else [])

    def criterion(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """The task loss of one batch (also what importance estimates differentiate)."""
        return F.cross_entropy(logits, targets)

    def loss(self, batch: Batch, forward: Callable[[torch.Tensor], torch.Tensor]) -> StepLoss:
        logits = forward(batch.x)
        return StepLoss(self.criterion(logits, batch.y), logits)
