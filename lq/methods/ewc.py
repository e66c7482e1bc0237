"""EWC (Kirkpatrick et al., PNAS 2017): a diagonal-Fisher quadratic penalty, accumulated online.

    L = task loss over P_t  +  λ Σ_i F_i (θ_i − θ_i^{t−1})²,   F = Σ_{k<t} F_k,
    F_k,i = mean over replay_k batches of (∂ CE(f(x; θ^k), y) / ∂θ_i)²

Choices:
- F_k is the empirical diagonal Fisher of plain cross-entropy (never BaLL: the Fisher is a
  property of the model's likelihood, not of the training loss's re-weighting), on the replay
  set of task k (the only data of task k the stream keeps), taken at θ^k: computed when task
  k+1 starts, with `lq.lifelong.squared_grad_importance` (one squared gradient per batch).
- Several tasks: online accumulation (online EWC, Schwarz et al. 2018, without decay). Each
  finished task adds its own F_k once and the anchor is the latest θ^{t−1}, instead of one
  penalty term per task with its own anchor, whose memory would grow with the number of tasks.
  Every task weighs the same.
- Training pool: train_t ∪ earlier replay, the pool LifeQuant uses, so only the penalty differs.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch.nn.functional as F
from torch import nn

from lq.lifelong import squared_grad_importance
from lq.methods.quadratic import Batch, Importance, ReplayImportanceMethod
from lq.methods.registry import register_method


@register_method
class EWC(ReplayImportanceMethod):
    name = "ewc"

    def task_importance(self, model: nn.Module, batches: Iterable[Batch], task: int) -> Importance:
        return squared_grad_importance(model, F.cross_entropy, batches)
