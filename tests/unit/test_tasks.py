"""The lifelong split, replay sampling and BaLL weights (SPEC sections 1-3)."""

import math

import numpy as np
import pandas as pd
import pytest

from lq.errors import LqError
from lq.tasks import (
    ball_weights,
    class_counts,
    class_order,
    classes_per_task,
    sample_replay,
    subsample_per_class,
    task_classes,
    training_pool,
)


def reference_order(num_classes: int, seed: int) -> np.ndarray:
    """The reference generator, literally: NumPy's legacy *global* RNG."""
    state = np.random.get_state()
    try:
        np.random.seed(seed)
        order = np.arange(num_classes)
        np.random.shuffle(order)
        return order
    finally:
        np.random.set_state(state)


def test_class_order_matches_reference_generator_for_seed_123():
    ours = class_order(100, 123)
    assert ours[:10].tolist() == reference_order(100, 123)[:10].tolist()
    assert sorted(ours.tolist()) == list(range(100))


def test_class_order_depends_on_seed():
    assert class_order(100, 123).tolist() != class_order(100, 124).tolist()


@pytest.mark.parametrize("C,T,gamma", [(100, 3, 0.25), (10, 3, 0.5), (10, 1, 0.0), (7, 3, 0.5), (100, 5, 0.1), (20, 4, 0.9)])
def test_split_properties(C, T, gamma):
    tasks = task_classes(C, T, gamma, seed=123)
    n_task = math.floor(C / (1 + gamma * (T - 1)))
    step = math.floor(n_task * gamma)
    assert len(tasks) == T
    for t in range(T - 1):
        assert len(tasks[t]) == n_task
        # consecutive tasks share n_task - step classes
        assert len(set(tasks[t]) & set(tasks[t + 1])) == n_task - step
    # the last task takes everything from its start to the end of the order
    order = class_order(C, 123)
    assert tasks[-1].tolist() == order[(T - 1) * step :].tolist()
    # the union covers every class
    assert set().union(*map(set, tasks)) == set(range(C))


def test_paper_split_sizes():
    # CIFAR-100-LL: n_task = floor(100 / 1.5) = 66, step = floor(16.5) = 16, last = 100 - 32 = 68
    assert classes_per_task(100, 3, 0.25) == 66
    assert [len(t) for t in task_classes(100, 3, 0.25, 123)] == [66, 66, 68]


@pytest.mark.parametrize(
    "C,T,gamma,match",
    [
        (100, 3, 25, "diminish_rate"),      # the seed README's value
        (100, 3, -0.1, "diminish_rate"),
        (100, 3, 1.0, "diminish_rate"),
        (100, 0, 0.25, "num_tasks"),
        (5, 6, 0.0, "more than the 5 classes"),
        (3, 4, 0.9, "fewer than one class per task"),
        (7, 7, 0.0, "every task is the same"),  # γ = 0 replaces no class: tasks that do not move
    ],
)
def test_invalid_split_parameters(C, T, gamma, match):
    with pytest.raises(LqError, match=match):
        task_classes(C, T, gamma, seed=123)


def test_diminish_rate_25_suggests_the_fraction():
    with pytest.raises(LqError, match="did you mean 0.25"):
        task_classes(100, 3, 25, seed=123)


def _table(n, label=0, prefix="train"):
    return pd.DataFrame({"image": [f"{prefix}/c{label}/{i}.png" for i in range(n)], "label": label})


@pytest.mark.parametrize("rate", [0.2, 0.5, 1.0, 0.01])
def test_replay_fraction_and_membership(rate):
    train = _table(250)
    replay = sample_replay(train, rate, seed=123, task=0)
    assert len(replay) == max(1, round(rate * 250))
    assert replay["image"].is_unique
    assert set(replay["image"]) <= set(train["image"])
    assert all(img.startswith("train/") for img in replay["image"])


def test_replay_is_seeded_and_task_specific():
    train = _table(100)
    a = sample_replay(train, 0.2, seed=1, task=0)
    assert a.equals(sample_replay(train, 0.2, seed=1, task=0))
    assert not a.equals(sample_replay(train, 0.2, seed=2, task=0))
    assert not a.equals(sample_replay(train, 0.2, seed=1, task=1))


@pytest.mark.parametrize("rate", [0.0, -0.5, 1.5])
def test_invalid_replay_rate(rate):
    with pytest.raises(LqError, match="replay_rate"):
        sample_replay(_table(10), rate, seed=0, task=0)


def test_ball_weights_spec_example():
    # counts {a: 100, b: 100, c: 10}: N = 210, C_t = 3
    # w_a = 1 / ((100/210 + 1/3) * 3) = 1 / (10/7 + 1) = 7/17 = 0.41176...
    # w_c = 1 / ((10/210 + 1/3) * 3) = 1 / (1/7 + 1) = 7/8 = 0.875
    w = ball_weights({0: 100, 1: 100, 2: 10}, num_classes=4)
    assert w[0] == pytest.approx(7 / 17)
    assert w[1] == pytest.approx(7 / 17)
    assert w[2] == pytest.approx(0.875)
    assert w[3] == 1.0  # absent class
    assert all(0 < v <= 1 for v in w.values())


def test_training_pool_is_a_set_union():
    train1 = pd.concat([_table(10, 1), _table(10, 2)], ignore_index=True)
    replay0 = pd.concat([_table(2, 0), _table(3, 1)], ignore_index=True)  # class 1 rows are already in train1
    pool = training_pool(train1, [replay0])
    assert class_counts(pool["label"]) == {0: 2, 1: 10, 2: 10}


# --------------------------------------------------------------------------- training subsample


def _labelled(counts: dict[int, int]) -> pd.DataFrame:
    labels = [c for c, n in counts.items() for _ in range(n)]
    order = np.random.default_rng(5).permutation(len(labels))  # classes interleaved, as in a real index
    return pd.DataFrame({"image": [f"train/{labels[i]}/{i:03d}.png" for i in order],
                         "label": [labels[i] for i in order]})


def test_subsample_keeps_per_class_rows_in_table_order() -> None:
    table = _labelled({0: 10, 1: 7, 2: 3})
    kept = subsample_per_class(table, 4, seed=1)
    assert kept["label"].value_counts().sort_index().tolist() == [4, 4, 3]  # class 2 has only 3: all kept
    positions = [table.index[table["image"] == image][0] for image in kept["image"]]
    assert positions == sorted(positions)  # a subsequence of the table
    assert set(kept["image"]) <= set(table["image"])


def test_subsample_is_seeded_and_one_class_does_not_move_another() -> None:
    table = _labelled({0: 10, 1: 7})
    first, again = subsample_per_class(table, 4, seed=1), subsample_per_class(table, 4, seed=1)
    assert first.equals(again)
    assert not first.equals(subsample_per_class(table, 4, seed=2))
    # more rows of class 1 leave class 0's draw unchanged (each class draws from its own stream)
    wider = pd.concat([table, pd.DataFrame({"image": ["train/1/extra.png"], "label": [1]})], ignore_index=True)
    class0 = subsample_per_class(wider, 4, seed=1).query("label == 0")["image"].tolist()
    assert class0 == first.query("label == 0")["image"].tolist()


def test_subsample_none_keeps_everything_and_bad_sizes_are_refused() -> None:
    table = _labelled({0: 3, 1: 2})
    assert subsample_per_class(table, None, seed=0) is table
    for bad in (0, -1, 2.5, True):
        with pytest.raises(LqError, match="train_per_class"):
            subsample_per_class(table, bad, seed=0)
