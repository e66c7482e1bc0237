"""Scored replay: which of a task's samples to keep for replay, chosen by ACS's scores (issue 13).

With `replay.selection` other than `random`, the lifelong stage picks replay_t itself, right after
task t is trained: per class, round(rho * n_c) samples of train_t (Python's rounding, as the
coreset), by the scores of the model just trained (eval mode, un-augmented images):

- `evs`: the largest error vector score ||p - onehot(y)|| (the samples the model still gets wrong);
- `ds`: the largest disagreement ||p - p_ref|| with the model the task started from (theta^{t-1};
  the qat8 model for task 0): the samples the task changed the model's mind on most;
- `acs`: (EVS + DS) / 2, the two with equal weight. After training t = E, where the paper's
  beta(E) = 0 would make `acs` the same as `ds`; equal weights (the release's fallback setting)
  keep both signals;
- `acs_low`: the *least* scored ACS share, the control (easy, typical samples).

The choice feeds everything after it as the random replay sets would: the pools of the later
tasks, their BaLL weights (counted in the stage from those pools, as the `count` stage counts the
random ones), the methods' importance and the replay memory. The chosen positions are plugin state,
saved with each task's checkpoint, so a resumed run keeps earlier tasks' choices.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from typing import Any

import pandas as pd
import torch
from torch import nn

from lq.errors import LqError
from lq.train.coreset import (REPLAY_SELECTORS, disagreement_score, error_vector_score, probabilities,
                              top_per_class)
from lq.train.plugin import Plugin, TaskContext


class ScoredReplay(Plugin):
    """After each task, chooses its replay set by score; `chosen(t)` is the table of task t's set."""

    name = "scored_replay"

    def __init__(self, selection: str, rate: float, trains: Sequence[pd.DataFrame], *,
                 rows: Callable[[pd.DataFrame], torch.Tensor], labels: Callable[[torch.Tensor], torch.Tensor],
                 batches: Callable[[torch.Tensor], Any]):
        if selection not in REPLAY_SELECTORS or selection == "random":
            raise LqError(f"replay.selection '{selection}' is not a scored selection; allowed: "
                          f"{', '.join(s for s in REPLAY_SELECTORS if s != 'random')}")
        self.selection, self.rate, self.trains = selection, rate, list(trains)
        self._rows, self._labels, self._batches = rows, labels, batches
        self.reference: nn.Module | None = None
        self.positions: dict[str, torch.Tensor] = {}  # task -> chosen positions in train_t

    def before_task(self, ctx: TaskContext) -> None:
        if self.selection != "evs":
            self.reference = copy.deepcopy(ctx.model).eval()  # the model the task starts from

    def after_task(self, ctx: TaskContext) -> None:
        rows = self._rows(self.trains[ctx.task])
        labels = self._labels(rows)
        batches = self._batches(rows)
        probs = probabilities(ctx.model, batches)
        evs = error_vector_score(probs, labels)
        if self.selection == "evs":
            scores = evs
        else:
            ds = disagreement_score(probs, probabilities(self.reference, batches))
            scores = ds if self.selection == "ds" else 0.5 * evs + 0.5 * ds
        self.positions[str(ctx.task)] = top_per_class(scores, labels, self.rate, lowest=self.selection == "acs_low")
        self.reference = None

    def chosen(self, task: int) -> pd.DataFrame:
        if str(task) not in self.positions:
            raise LqError(f"the replay set of task {task} has not been chosen yet")
        return self.trains[task].iloc[self.positions[str(task)].numpy()].reset_index(drop=True)

    def state_dict(self) -> dict[str, Any]:
        return {"positions": {k: v.clone() for k, v in self.positions.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.positions = {k: v.clone() for k, v in state.get("positions", {}).items()}
