"""Metrics are pure functions of the accuracy matrix; checked on a hand-made matrix.

R[t][j] = accuracy on task j's test split after training task t. The matrix below is chosen so
that the common mistakes give different numbers: entries above the diagonal (tasks not yet
trained) must be ignored by the average, and R[0][1] (task 1 before it was learnt) must be
ignored by forgetting.
"""

import numpy as np
import pytest
import torch

from lq.errors import LqError
from lq.metrics import (
    average_accuracy,
    average_accuracy_curve,
    backward_transfer,
    forgetting,
    model_size_bits,
    topk_correct,
)

R = [
    [0.82, 0.95, 0.05],
    [0.85, 0.90, 0.20],
    [0.60, 0.75, 0.96],
]


def test_average_accuracy():
    # after task 0: R[0][0] = 0.82            (all of row 0 would be (0.82+0.95+0.05)/3 = 0.6067)
    # after task 1: (0.85 + 0.90) / 2 = 0.875 (all of row 1 would be 0.65)
    # after task 2: (0.60 + 0.75 + 0.96) / 3 = 2.31 / 3 = 0.77
    assert average_accuracy(R, after_task=0) == pytest.approx(0.82)
    assert average_accuracy(R, after_task=1) == pytest.approx(0.875)
    assert average_accuracy(R, after_task=2) == pytest.approx(0.77)
    assert average_accuracy(R) == pytest.approx(0.77)  # final: mean over all j of R[T-1][j]
    assert average_accuracy(np.array(R)) == pytest.approx(0.77)
    assert isinstance(average_accuracy(R), float)


def test_average_accuracy_curve():
    curve = average_accuracy_curve(R)
    assert isinstance(curve, list) and len(curve) == 3
    assert curve == pytest.approx([0.82, 0.875, 0.77])


def test_average_accuracy_bad_task_index():
    with pytest.raises(LqError):
        average_accuracy(R, after_task=3)
    with pytest.raises(LqError):
        average_accuracy(R, after_task=-1)


def test_forgetting():
    # task 0: max over l in [0, 1] of R[l][0] = max(0.82, 0.85) = 0.85; minus R[2][0] = 0.60 -> 0.25
    # task 1: max over l in [1, 1] of R[l][1] = 0.90 (R[0][1] = 0.95 is before task 1, excluded);
    #         minus R[2][1] = 0.75 -> 0.15
    # mean = (0.25 + 0.15) / 2 = 0.20
    f = forgetting(R)
    assert f.per_task == pytest.approx([0.25, 0.15])
    assert f.mean == pytest.approx(0.20)
    per_task, mean = f  # unpacks like a tuple
    assert mean == pytest.approx(0.20)


def test_backward_transfer():
    # task 0: R[2][0] - R[0][0] = 0.60 - 0.82 = -0.22
    # task 1: R[2][1] - R[1][1] = 0.75 - 0.90 = -0.15
    # mean = -0.37 / 2 = -0.185
    assert backward_transfer(R) == pytest.approx(-0.185)


def test_positive_backward_transfer_and_zero_forgetting():
    # Learning task 1 improved task 0: R[1][0] = 0.7 > R[0][0] = 0.5.
    # forgetting task 0 = max(0.5) - 0.7 = -0.2 (negative: no forgetting); BWT = 0.7 - 0.5 = 0.2
    r = [[0.5, 0.0], [0.7, 0.9]]
    assert forgetting(r).per_task == pytest.approx([-0.2])
    assert backward_transfer(r) == pytest.approx(0.2)


def test_single_task():
    # T = 1: nothing can be forgotten; per-task list empty, mean 0.0, BWT 0.0.
    r = [[0.5]]
    assert average_accuracy(r) == pytest.approx(0.5)
    assert average_accuracy_curve(r) == pytest.approx([0.5])
    f = forgetting(r)
    assert f.per_task == [] and f.mean == 0.0
    assert backward_transfer(r) == 0.0


@pytest.mark.parametrize(
    "bad",
    [[], [[]], [[0.1, 0.2]], [[0.1, 0.2], [0.3]], np.zeros((2, 2, 2)), np.zeros(3), [[0.1, 0.2], [0.3, 0.4], [0.5, 0.6]]],
)
def test_invalid_matrix(bad):
    for fn in (average_accuracy, average_accuracy_curve, forgetting, backward_transfer):
        with pytest.raises(LqError):
            fn(bad)


def test_topk_correct():
    # row 0: target 2; order 1 > 2 > 0 -> top1 wrong, top2 right
    # row 1: target 0; order 0 > 1 > 2 -> top1 right
    # row 2: target 0; order 2 > 1 > 0 -> right only in top3
    # top1 = 1, top2 = 2, top5 clamps to top3 = 3
    logits = torch.tensor([[0.1, 0.5, 0.4], [0.9, 0.06, 0.04], [0.2, 0.3, 0.5]])
    targets = torch.tensor([2, 0, 0])
    got = topk_correct(logits, targets, ks=(1, 2, 5))
    assert got.tolist() == [1, 2, 3]
    assert got.dtype == torch.int64
    assert topk_correct(logits, targets).tolist() == [1, 3]  # default ks = (1, 5)


def test_topk_correct_invalid():
    logits = torch.zeros(2, 3)
    with pytest.raises(LqError):
        topk_correct(logits, torch.tensor([0, 1, 2]))  # batch mismatch
    with pytest.raises(LqError):
        topk_correct(logits, torch.tensor([0, 1]), ks=(0,))
    with pytest.raises(LqError):
        topk_correct(torch.zeros(3), torch.tensor([0]))


def test_model_size_bits():
    # 432 weights at 4 bits + 6400 at 32 bits = 1728 + 204800 = 206528 bits
    bits = {"conv.weight": 4, "fc.weight": 32}
    numels = {"conv.weight": 432, "fc.weight": 6400}
    assert model_size_bits(bits, numels) == 206528
    assert model_size_bits({}, {}) == 0
    with pytest.raises(LqError):
        model_size_bits({"conv.weight": 4}, numels)  # fc.weight has no bit width
    with pytest.raises(LqError):
        model_size_bits({**bits, "extra.weight": 8}, numels)  # a bit width for no tensor
    with pytest.raises(LqError):
        model_size_bits({"conv.weight": 0}, {"conv.weight": 1})
    with pytest.raises(LqError):
        model_size_bits({"conv.weight": 4}, {"conv.weight": -1})
