"""PTQ min/max quantizers (SPEC 11): SPEC's hand cases, per-channel scales, edge cases, registry."""

from __future__ import annotations

import pytest
import torch

from lq.errors import LqError
from lq.quant import functions
from lq.quant.config import PTQ_ACT_QUANTIZERS, PTQ_WEIGHT_QUANTIZERS


def test_weights_b4_hand_case_rounds_half_to_even():
    # SPEC 11: s = 7.5 / 7.5 = 1; 7.5 -> 8 clamps to 7, -7.5 -> -8, 3.5 -> 4, 2.5 -> 2, -0.5 -> 0.
    w = torch.tensor([[7.5, -7.5, 3.5, 2.5, -0.5]])
    scale = functions.symmetric_scale(w, 4)
    assert scale.tolist() == [1.0]
    assert functions.symmetric_codes(w, scale, 4).tolist() == [[7, -8, 4, 2, 0]]
    assert functions.minmax_weight(w, 4).tolist() == [[7.0, -8.0, 4.0, 2.0, 0.0]]


def test_weight_scales_are_per_output_channel():
    # Channel 1 is channel 0 times 4 (exact in binary): the same codes, four times the values.
    # The channel's extreme always lands on +-(2^b - 1)/2, a tie: -1.0 -> -3.5 -> -4 (half to even).
    c0 = torch.tensor([[0.3, -1.0], [0.5, 0.1]])
    w = torch.stack([c0, 4 * c0])  # (2 out channels, 2, 2) like a conv weight
    scale = functions.symmetric_scale(w, 3)
    assert torch.allclose(scale, torch.tensor([1.0, 4.0]) / 3.5)
    codes = functions.symmetric_codes(w, scale, 3)
    assert codes[0].tolist() == [[1, -4], [2, 0]]
    assert torch.equal(codes[0], codes[1])
    q = functions.minmax_weight(w, 3)
    assert torch.equal(q[1], 4 * q[0])
    assert len(torch.unique(q[0])) <= 2**3


def test_activations_b2_hand_case():
    # SPEC 11: s = (3 - 0) / 3 = 1, zp = 0, codes round-half-even [0, 0, 2, 3].
    x = torch.tensor([0.0, 0.5, 1.5, 3.0])
    scale, zero_point = functions.asymmetric_params(x.min(), x.max(), 2)
    assert scale.item() == 1.0 and zero_point.item() == 0.0
    assert functions.asymmetric_codes(x, scale, zero_point, 2).tolist() == [0, 0, 2, 3]
    assert functions.minmax_act(x, x.min(), x.max(), 2).tolist() == [0.0, 0.0, 2.0, 3.0]


def test_activations_with_a_negative_minimum_use_the_zero_point_and_clamp_outside_the_range():
    # min -1, max 2, b = 2: s = 1, zp = 1; codes of [-1, 0, 2] are [0, 1, 3]; -5 and 9 clamp.
    lo, hi = torch.tensor(-1.0), torch.tensor(2.0)
    scale, zero_point = functions.asymmetric_params(lo, hi, 2)
    assert (scale.item(), zero_point.item()) == (1.0, 1.0)
    x = torch.tensor([-1.0, 0.0, 2.0, -5.0, 9.0])
    assert functions.asymmetric_codes(x, scale, zero_point, 2).tolist() == [0, 1, 3, 0, 3]
    assert functions.minmax_act(x, lo, hi, 2).tolist() == [-1.0, 0.0, 2.0, -1.0, 2.0]


def test_32_bits_is_the_identity_and_degenerate_ranges_give_no_nan():
    w = torch.randn(4, 3, 3, 3)
    assert functions.minmax_weight(w, 32) is w
    x = torch.randn(10)
    assert functions.minmax_act(x, x.min(), x.max(), 32) is x
    zero = torch.zeros(2, 3)
    assert torch.equal(functions.minmax_weight(zero, 4), zero)
    flat = torch.full((5,), 0.7)
    assert torch.equal(functions.minmax_act(flat, flat.min(), flat.max(), 4), flat)


def test_straight_through_gradient_inside_the_range_zero_where_clamped():
    # 0.9 is the channel's max: 7.5 rounds to 8 and clamps to 7, so it gets no gradient.
    w = torch.tensor([[0.2, 0.9, 0.5, -0.3]], requires_grad=True)
    functions.minmax_weight(w, 4).sum().backward()
    assert w.grad.tolist() == [[1.0, 0.0, 1.0, 1.0]]


@pytest.mark.parametrize("bits", [1, 0, 9, 16])
def test_unsupported_widths_are_refused(bits):
    with pytest.raises(LqError):
        functions.minmax_weight(torch.ones(2, 2), bits)
    with pytest.raises(LqError):
        functions.minmax_act(torch.ones(2), torch.tensor(0.0), torch.tensor(1.0), bits)


def test_the_ptq_registries_name_the_minmax_functions():
    assert PTQ_WEIGHT_QUANTIZERS["minmax"].fn is functions.minmax_weight
    assert PTQ_ACT_QUANTIZERS["minmax"].fn is functions.minmax_act
    assert PTQ_WEIGHT_QUANTIZERS["minmax"].granularity == "channel"
    assert PTQ_ACT_QUANTIZERS["minmax"].granularity == "layer"


def test_the_schemas_ptq_enums_are_the_ptq_registries():
    from lq.config import load_schema

    ptq = load_schema()["properties"]["ptq"]["properties"]
    assert sorted(ptq["weight_quantizer"]["enum"]) == sorted(PTQ_WEIGHT_QUANTIZERS)
    assert sorted(ptq["act_quantizer"]["enum"]) == sorted(PTQ_ACT_QUANTIZERS)
