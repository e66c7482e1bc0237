"""Power-of-two weights (INQ's level set, SPEC 9): hand-computed levels, boundaries and tie rule."""

import pytest
import torch

from lq.errors import LqError
from lq.quant import functions as F
from lq.quant.config import QuantConfig
from lq.quant.modules import WeightQuantizer

# SPEC 9's hand case: s = 0.9, so n1 = floor(log2(1.2)) = 0.
W = torch.tensor([0.9, -0.6, 0.3, -0.2, 0.11, -0.05, 0.02, 0.003])


def levels(bits: int, n1: int) -> set[float]:
    """P written out: {0} and +-2^n for n2 <= n <= n1."""
    n2 = n1 + 1 - 2 ** (bits - 2)
    return {0.0, *(s * 2.0**n for n in range(n2, n1 + 1) for s in (1, -1))}


def test_top_exponent_of_the_hand_case_is_zero():
    assert int(F.pow2_top_exponent(W)) == 0


@pytest.mark.parametrize("bits, expected", [
    (5, [1, -0.5, 0.25, -0.25, 0.125, -0.0625, 0.015625, 0]),
    (3, [1, -0.5, 0.5, 0, 0, 0, 0, 0]),
    (2, [1, -1, 0, 0, 0, 0, 0, 0]),
])
def test_hand_case_levels(bits, expected):
    assert F.pow2_round(W, 0, bits).tolist() == expected
    assert F.pow2_weight(W, bits).tolist() == expected


@pytest.mark.parametrize("largest, n1", [(0.75, 0), (1.49, 0), (1.5, 1), (0.7499, -1), (3.0, 2), (2.99, 1)])
def test_n1_boundaries(largest, n1):
    assert int(F.pow2_top_exponent(torch.tensor([0.01, -largest, 0.2]))) == n1


def test_level_set_sizes():
    for bits in range(2, 9):
        n2, n1 = F.pow2_exponent_range(0, bits)
        assert n1 - n2 + 1 == 2 ** (bits - 2) and len(levels(bits, 0)) == 2 ** (bits - 1) + 1


def test_ties_go_upward_and_the_zero_boundary_is_half_the_smallest_level():
    # b = 3, n1 = 0: P = {0, +-0.5, +-1}. Midpoints 0.75 (between 0.5 and 1) and 0.25 (0 and 0.5).
    x = torch.tensor([0.75, -0.75, 0.7499, 0.25, -0.25, 0.2499, 1.0, 7.0, -7.0])
    assert F.pow2_round(x, 0, 3).tolist() == [1, -1, 0.5, 0.5, -0.5, 0, 1, 1, -1]


@pytest.mark.parametrize("bits", range(2, 9))
def test_random_tensors_land_in_p_with_the_nearest_level(bits):
    g = torch.Generator().manual_seed(bits)
    w = torch.randn(4000, generator=g) * 0.3
    n1 = int(F.pow2_top_exponent(w))
    q = F.pow2_round(w, n1, bits)
    grid = torch.tensor(sorted(levels(bits, n1)))
    assert set(q.tolist()) <= set(grid.tolist())
    assert torch.unique(q).numel() <= 2 ** (bits - 1) + 1
    # nearest: no level of P is strictly closer than the chosen one
    best = (w[:, None] - grid[None, :]).abs().min(1).values
    assert torch.all((w - q).abs() <= best)


def test_straight_through_gradient_is_the_identity():
    w = (torch.randn(50) * 2).requires_grad_()
    c = torch.randn(50)
    (F.pow2_weight(w, 4) * c).sum().backward()
    assert torch.equal(w.grad, c)


def test_quantizing_twice_changes_nothing():
    w = torch.randn(300) * 0.1
    once = F.pow2_weight(w, 4)
    assert torch.equal(F.pow2_weight(once, 4), once)  # max|once| = 2^n1, so n1 is found again


def test_an_all_zero_tensor_stays_zero():
    assert F.pow2_weight(torch.zeros(5), 4).tolist() == [0.0] * 5


@pytest.mark.parametrize("bits", [1, 0, 9])
def test_unsupported_widths_are_refused(bits):
    with pytest.raises(LqError, match=str(bits)):
        F.pow2_round(W, 0, bits)


def test_one_bit_is_refused_by_the_config_and_the_module():
    with pytest.raises(LqError, match="too few for the 'pow2'"):
        QuantConfig(weight_bits=1, weight_quantizer="pow2")
    with pytest.raises(LqError, match="pow2"):
        WeightQuantizer(1, "pow2")


def test_the_module_fixes_n1_at_its_first_input_and_keeps_it_in_its_state():
    quantizer = WeightQuantizer(3, "pow2")
    first = torch.tensor([0.9, -0.3, 0.1])  # n1 = 0
    assert quantizer(first).tolist() == [1, -0.5, 0]
    grown = torch.tensor([3.0, -0.3, 0.1])  # alone it would give n1 = 2; the fixed n1 saturates it
    assert quantizer(grown).tolist() == [1, -0.5, 0]
    copy = WeightQuantizer(3, "pow2")
    copy.load_state_dict(quantizer.state_dict())
    assert int(copy.top_exponent) == 0 and copy(grown).tolist() == [1, -0.5, 0]
    assert WeightQuantizer(3, "pow2")(grown).tolist() == [4, -0, 0]  # a fresh one fixes n1 = 2


def test_only_quantizes_the_masked_entries_and_feeds_gradients_to_the_others():
    quantizer = WeightQuantizer(3, "pow2")
    w = torch.tensor([0.9, -0.3, 0.1, 0.6], requires_grad=True)
    quantizer.only = torch.tensor([True, False, True, False])
    out = quantizer(w)
    assert out.tolist() == pytest.approx([1, -0.3, 0, 0.6])
    out.sum().backward()
    assert w.grad.tolist() == [0, 1, 0, 1]
