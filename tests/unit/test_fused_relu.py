"""A ReLU after the k-bit activation grid is folded into the grid's node, bit for bit.

`quantize_unsigned_relu` (lq/quant/functions.py) computes relu(quantize_unsigned(x)) in one
autograd node: the forward is the grid's (a ReLU is the identity on its values, -0 included) and
the backward selects the gradient on zero_level_top < x <= 1. `activation_after`
(lq/quant/points.py) uses it where a model applies a ReLU or ReLU6 to a quantizer's output. The
references below are the two ops, run one after the other.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lq.models import create_model
from lq.quant.config import QuantConfig
from lq.quant.convert import quantize_model
from lq.quant.functions import quantize_unsigned, quantize_unsigned_relu
from lq.quant.modules import ActQuantizer
from lq.quant.points import ActQuantPoint, activation_after
from lq.quant.ste import zero_level_top

DTYPES = [torch.float32, torch.float64, torch.bfloat16]


def bits_of(t: torch.Tensor) -> torch.Tensor:
    return t.contiguous().view({torch.float32: torch.int32, torch.float64: torch.int64,
                                torch.bfloat16: torch.int16}[t.dtype])


def next_to(value: float, dtype: torch.dtype, direction: float) -> float:
    return torch.nextafter(torch.tensor(value, dtype=dtype), torch.tensor(direction, dtype=dtype)).item()


def edges(bits: int, dtype: torch.dtype) -> torch.Tensor:
    """The clip's ends, the zero level's top and the floats around them, ties, specials."""
    n = 2**bits - 1
    top = zero_level_top(n, dtype)
    values = [0.0, -0.0, 1.0, -1.0, 2.0, 0.5, 0.5 / n, 1.5 / n, top, next_to(top, dtype, 1.0),
              next_to(top, dtype, -1.0), next_to(1.0, dtype, 2.0), next_to(0.0, dtype, -1.0),
              next_to(0.0, dtype, 1.0), 1e30, -1e30, float("inf"), float("-inf")]
    return torch.tensor(values, dtype=torch.float64).to(dtype)


def both(fn, x: torch.Tensor, upstream: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    leaf = x.clone().requires_grad_()
    out = fn(leaf)
    out.backward(upstream)
    return bits_of(out.detach()), bits_of(leaf.grad)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("bits", [1, 2, 3, 4, 8, 32])
def test_fused_relu_is_relu_after_the_grid_bit_for_bit(bits, dtype):
    g = torch.Generator().manual_seed(bits)
    x = torch.cat([edges(min(bits, 8), dtype), (torch.randn(4000, generator=g) * 0.6 + 0.3).to(dtype)])
    upstream = torch.randn(len(x), generator=g).to(dtype)
    upstream[::3] = -upstream[::3].abs()  # negative gradients where the mask is 0 too (signed zeros)
    fused = both(lambda v: quantize_unsigned_relu(v, bits), x, upstream)
    reference = both(lambda v: torch.relu(quantize_unsigned(v, bits)), x, upstream)
    assert torch.equal(fused[0], reference[0])
    assert torch.equal(fused[1], reference[1])


@pytest.mark.parametrize("dtype", DTYPES + [torch.float16])
@pytest.mark.parametrize("levels", [3, 7, 15, 255])
def test_zero_level_top_is_the_last_float_rounded_to_zero(levels, dtype):
    top = torch.tensor(zero_level_top(levels, dtype), dtype=dtype)
    after = torch.nextafter(top, torch.tensor(1.0, dtype=dtype))
    level = lambda v: torch.round(torch.clamp(v, 0.0, 1.0) * levels).item()  # noqa: E731
    assert (level(top), level(after)) == (0.0, 1.0)
    assert abs(top.item() - 0.5 / levels) <= 0.5 / levels * 2 * torch.finfo(dtype).eps


def test_activation_after_fuses_only_a_grid_quantizer_and_a_relu():
    x = torch.randn(2, 3, 4, 4)
    assert type(activation_after(ActQuantizer(4), nn.ReLU(), x.requires_grad_()).grad_fn).__name__ == "_UnitGridSTEBackward"
    assert type(activation_after(ActQuantizer(4), nn.ReLU6(), x).grad_fn).__name__ == "_UnitGridSTEBackward"
    assert type(activation_after(ActQuantizer(4), nn.GELU(), x).grad_fn).__name__ == "GeluBackward0"
    assert type(activation_after(ActQuantPoint(), nn.ReLU(), x).grad_fn).__name__ == "ReluBackward0"
    wide = x.detach() * 10
    assert torch.equal(activation_after(ActQuantizer(32), nn.ReLU6(), wide), nn.ReLU6()(wide))  # 32 bits: not fused


@pytest.mark.parametrize("arch", ["resnet8", "mobilenetv2"])
def test_a_quantized_model_trains_to_the_same_bits_fused_or_not(arch, monkeypatch):
    """Three SGD steps of a w4a4 model with the fusion and with it switched off: same weights."""
    def train(fuse: bool) -> list[torch.Tensor]:
        if not fuse:
            monkeypatch.setattr(ActQuantizer, "then_relu", lambda self, x: None)
        torch.manual_seed(0)
        kwargs = dict(num_classes=10, in_channels=3, image_size=16)
        model = quantize_model(create_model(arch, **kwargs), QuantConfig(weight_bits=4, act_bits=4))
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        g = torch.Generator().manual_seed(1)
        for _ in range(3):
            x, y = torch.randn(8, 3, 16, 16, generator=g), torch.randint(0, 10, (8,), generator=g)
            optimizer.zero_grad()
            torch.nn.functional.cross_entropy(model(x), y).backward()
            optimizer.step()
        monkeypatch.undo()
        return [bits_of(p.detach()) for p in model.parameters()]

    fused, unfused = train(True), train(False)
    assert all(torch.equal(a, b) for a, b in zip(fused, unfused))
