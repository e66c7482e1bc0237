"""The lifelong task stream: class order, task split, replay sampling, class counts (SPEC 1-3).

Pure functions on class ids and tables; the stage entry points in `lq.steps` do the file work.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from lq.checks import split_problem
from lq.errors import LqError


def check_split_params(num_classes: int, num_tasks: int, diminish_rate: float) -> None:
    """Reject a split that cannot be made, naming the parameter and what would work."""
    if not isinstance(num_tasks, int) or isinstance(num_tasks, bool) or num_tasks < 1:
        raise LqError(f"split.num_tasks = {num_tasks!r} is invalid: need an integer >= 1")
    if not 0 <= diminish_rate < 1:
        hint = f" (did you mean {diminish_rate / 100:g}?)" if 1 <= diminish_rate <= 100 else ""
        raise LqError(
            f"split.diminish_rate = {diminish_rate!r} is invalid: need a fraction in [0, 1){hint}"
        )
    # Fewer classes than tasks, or tasks that do not move (step = floor(n_task·γ) = 0 makes
    # consecutive tasks identical): refused with the γ or T that would work.
    problem = split_problem(num_classes, num_tasks, diminish_rate)
    if problem:
        raise LqError(problem)


def classes_per_task(num_classes: int, num_tasks: int, diminish_rate: float) -> int:
    """n_task = floor(C / (1 + γ (T − 1))): tasks of equal size that together cover C classes."""
    return math.floor(num_classes / (1 + diminish_rate * (num_tasks - 1)))


def class_order(num_classes: int, seed: int) -> np.ndarray:
    """The reference generator's permutation: NumPy's legacy global RNG, seeded, then shuffle.

    A private `RandomState` gives the same stream as `np.random.seed(seed)` without touching
    global state.
    """
    order = np.arange(num_classes)
    np.random.RandomState(seed).shuffle(order)
    return order


def task_classes(num_classes: int, num_tasks: int, diminish_rate: float, seed: int) -> list[np.ndarray]:
    """Class ids of each task: a window of n_task classes sliding by floor(n_task·γ) per task.

    The last task takes everything from its start to the end of the order, so every class
    belongs to at least one task.
    """
    check_split_params(num_classes, num_tasks, diminish_rate)
    order = class_order(num_classes, seed)
    n_task = classes_per_task(num_classes, num_tasks, diminish_rate)
    step = math.floor(n_task * diminish_rate)
    tasks = [order[t * step : t * step + n_task] for t in range(num_tasks - 1)]
    tasks.append(order[(num_tasks - 1) * step :])
    return tasks


def subsample_per_class(table: pd.DataFrame, per_class: int | None, seed: int) -> pd.DataFrame:
    """At most `per_class` rows of each label, drawn without replacement, in the table's order.

    A class with fewer rows keeps them all; `None` keeps the whole table. Each class draws from its
    own stream, seeded by (seed, label), so one class's size does not change another's sample.
    """
    if per_class is None:
        return table
    if isinstance(per_class, bool) or not isinstance(per_class, (int, np.integer)) or per_class < 1:
        raise LqError(f"split.train_per_class = {per_class!r} is invalid: need an integer >= 1 or null")
    keep = np.zeros(len(table), dtype=bool)
    labels = table["label"].to_numpy()
    for label in np.unique(labels):
        rows = np.flatnonzero(labels == label)
        if len(rows) > per_class:
            rows = np.random.default_rng([seed, int(label)]).choice(rows, size=int(per_class), replace=False)
        keep[rows] = True
    return table[keep].reset_index(drop=True)


def select_classes(table: pd.DataFrame, classes: Sequence[int]) -> pd.DataFrame:
    """Rows of `table` whose label is in `classes`, in the table's own order."""
    return table[table["label"].isin(set(int(c) for c in classes))].reset_index(drop=True)


def sample_replay(train_task: pd.DataFrame, replay_rate: float, seed: int, task: int) -> pd.DataFrame:
    """A uniform sample without replacement of round(ρ·n) rows (at least one), in table order.

    Each task draws from its own stream, seeded by (seed, task), so changing the number of tasks
    does not change the replay set of the earlier ones.
    """
    if not 0 < replay_rate <= 1:
        raise LqError(f"replay.replay_rate = {replay_rate!r} is invalid: need a fraction in (0, 1]")
    n = len(train_task)
    if n == 0:
        raise LqError(f"task {task} has no training images to replay")
    k = max(1, round(replay_rate * n))
    rng = np.random.default_rng([seed, task])
    rows = np.sort(rng.choice(n, size=k, replace=False))
    return train_task.iloc[rows].reset_index(drop=True)


def training_pool(train_task: pd.DataFrame, earlier_replay: Sequence[pd.DataFrame]) -> pd.DataFrame:
    """P_t = train_t ∪ replay_0 ∪ … ∪ replay_{t−1}, as a set of images (no duplicates).

    An earlier task's replayed image of a class the current task still holds is already in
    train_t, so the union adds only images of classes the task has dropped: the rare classes that
    BaLL up-weights.
    """
    pool = pd.concat([train_task, *earlier_replay], ignore_index=True)
    return pool.drop_duplicates(subset="image", keep="first").reset_index(drop=True)


def class_counts(labels: Sequence[int]) -> dict[int, int]:
    """Samples per class, keys sorted."""
    values, counts = np.unique(np.asarray(labels, dtype=np.int64), return_counts=True)
    return {int(v): int(c) for v, c in zip(values, counts)}


def ball_weights(counts: Mapping[int, int], num_classes: int) -> dict[int, float]:
    """BaLL class weights: w_c = 1 / ((n_c / N + 1 / C_t) · C_t); absent classes get 1.

    C_t is the number of classes present (count > 0). Algebraically w_c = 1 / (1 + C_t·n_c/N),
    so every weight is in (0, 1]: rare classes (the few replayed ones) stay near 1, frequent
    ones are damped.
    """
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise LqError(f"num_classes must be a positive integer, got {num_classes!r}")
    present: dict[int, int] = {}
    for c, n in counts.items():
        c, n = int(c), int(n)
        if not 0 <= c < num_classes:
            raise LqError(f"class id {c} in the class counts is outside [0, {num_classes})")
        if n < 0:
            raise LqError(f"class {c} has a negative sample count ({n}); counts must be >= 0")
        if n > 0:
            present[c] = n
    total = sum(present.values())
    c_t = len(present)
    weights = {c: 1.0 for c in range(num_classes)}
    for c, n in present.items():
        weights[c] = 1.0 / ((n / total + 1.0 / c_t) * c_t)
    return weights
