"""Joint training: the upper bound every lifelong method is compared against.

Task t trains on the union of the training tables of tasks 0..t (every image seen so far, not
only the replayed share), with plain cross-entropy and no penalty. Nothing is forgotten because
nothing is withheld, so its accuracy matrix shows what the model could reach with unlimited
memory; the gap between it and a method measures that method's forgetting and its cost in
plasticity. It ignores `replay_in_pool` (it needs no replay) and `balanced` (BaLL re-weights the
few replayed images of a replay pool; the task's BaLL weights do not describe the joint pool).
"""

from collections.abc import Sequence

import pandas as pd

from lq.methods.base import Method
from lq.methods.registry import register_method
from lq.tasks import training_pool


@register_method
class Joint(Method):
    name = "joint"

    def __init__(self) -> None:
        pass

    @classmethod
    def pool(cls, train: pd.DataFrame, earlier_replay: Sequence[pd.DataFrame],
             earlier_train: Sequence[pd.DataFrame], replay_in_pool: bool) -> pd.DataFrame:
        """train_t ∪ train_0 ∪ … ∪ train_{t−1}, as a set of images (tasks share classes)."""
        return training_pool(train, earlier_train)
