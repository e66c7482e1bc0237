"""The activation STEs compute exactly what the plain formulas compute, with fewer passes.

`_UnitGridSTE` / `_UnitSignSTE` (lq/quant/ste.py) build their backward mask as clamp(x) == x and,
on CPU, hold it in x's dtype. The reference below is the formula they replaced (ge, le, and; a
bool mask): forward outputs and gradients must agree bit for bit (signed zeros, NaN and inf
included), on hand-made inputs at the clip edges and on exact rounding ties.
"""

from __future__ import annotations

import pytest
import torch
from torch.profiler import ProfilerActivity, profile

from lq.quant.functions import quantize_unsigned


def old_forward(x: torch.Tensor, bits: int) -> torch.Tensor:
    """The forward formulas before (ea0e1be)."""
    if bits == 1:
        return (x > 0).to(x.dtype)
    n = 2**bits - 1
    return torch.clamp(x, 0.0, 1.0).mul_(n).round_().div_(n)


def old_grad(x: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    """The backward before: the upstream gradient times the bool mask 0 <= x <= 1."""
    return grad * ((x >= 0) & (x <= 1))


def bits_of(t: torch.Tensor) -> torch.Tensor:
    """The raw bit patterns (so -0.0 and +0.0, and NaN payloads, count as different)."""
    return t.contiguous().view({torch.float32: torch.int32, torch.float64: torch.int64,
                                torch.bfloat16: torch.int16}[t.dtype])


def edge_inputs(dtype: torch.dtype) -> torch.Tensor:
    f32 = torch.float32
    one, zero = torch.tensor(1.0, dtype=f32), torch.tensor(0.0, dtype=f32)
    values = [
        0.0, -0.0, 1.0, -1.0, 2.0, 0.5,  # 0.5: an exact tie for 2, 4 and 8 bits (n odd: n/2 = k + 0.5)
        1.5 / 3, 0.5 / 3, 2.5 / 7, 7.5 / 15,  # ties or next to ties on the 2, 3, 4-bit grids
        float(torch.nextafter(one, 2 * one)), float(torch.nextafter(one, zero)),
        float(torch.nextafter(zero, one)), float(torch.nextafter(zero, -one)),
        1e-30, -1e-30, 1e30, -1e30, float("inf"), float("-inf"), float("nan"),
    ]
    return torch.tensor(values, dtype=f32).to(dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("bits", [1, 2, 3, 4, 8])
def test_forward_and_gradient_are_bit_identical_on_edges(bits, dtype):
    x = edge_inputs(dtype)
    g = torch.Generator().manual_seed(bits)
    upstream = torch.randn(len(x), generator=g).to(dtype)
    upstream[:4] = torch.tensor([-1.0, -0.0, float("inf"), float("nan")], dtype=dtype)  # signed zero, inf * 0
    leaf = x.clone().requires_grad_()
    out = quantize_unsigned(leaf, bits)
    out.backward(upstream)
    assert torch.equal(bits_of(out.detach()), bits_of(old_forward(x.clone(), bits)))
    assert torch.equal(bits_of(leaf.grad), bits_of(old_grad(x, upstream)))


@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "strided"])
@pytest.mark.parametrize("bits", [1, 4])
def test_forward_and_gradient_are_bit_identical_on_activations(bits, layout):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, 3, 8, 8, generator=g) * 0.8 + 0.3
    x.view(-1)[::7] = (torch.arange(0, len(x.view(-1)[::7])) % 16).float() / 15  # on the grid
    x.view(-1)[3::11] = (torch.arange(0, len(x.view(-1)[3::11])) % 15).float() / 15 + 0.5 / 15  # near ties
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    elif layout == "strided":
        x = x.transpose(2, 3)
    upstream = torch.randn(x.shape, generator=g)
    leaf = x.clone().requires_grad_()
    out = quantize_unsigned(leaf, bits)
    out.backward(upstream)
    assert torch.equal(bits_of(out.detach()), bits_of(old_forward(x.clone(), bits)))
    assert torch.equal(bits_of(leaf.grad), bits_of(old_grad(x, upstream)))


def test_activation_quantizer_makes_no_conversion_copies_on_cpu():
    """The CPU node's forward and backward run without converting a bool mask to float (a copy of
    the activation's size each step) and with one comparison, not three. (Eager mode still
    converts the Python scalar n to a 0-dim tensor; those copies are not counted.)"""
    x = torch.rand(2, 4, 16, 16, requires_grad=True)
    upstream = torch.randn(2, 4, 16, 16)
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        quantize_unsigned(x, 4).backward(upstream)
    events = prof.events()
    copies = [e.input_shapes for e in events if e.name == "aten::_to_copy" and e.input_shapes[0]]
    comparisons = [e.name for e in events if e.name in ("aten::eq", "aten::ge", "aten::le", "aten::bitwise_and")]
    assert copies == [] and comparisons == ["aten::eq"], (copies, comparisons)
