"""The activation STEs compute exactly what the plain formulas compute, with fewer passes.

`_UnitGridSTE` / `_UnitSignSTE` (lq/quant/ste.py) save their input and select the gradient in
one fused backward pass (`hardtanh_backward` on the closed interval [0, 1]), with no mask made
in the forward. The references below are the formulas they replaced: forward outputs must agree
bit for bit (signed zeros, NaN and inf included), on hand-made inputs at the clip edges and on
exact rounding ties; gradients bit for bit with `where(0 <= x <= 1, grad, 0)`, and as numbers
with the older product `grad * (0 <= x <= 1)` (which gave -0 where this gives +0, and NaN for an
infinite upstream gradient outside [0, 1]).
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


def selected_grad(x: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    """The upstream gradient where 0 <= x <= 1, else +0."""
    return torch.where((x >= 0) & (x <= 1), grad, torch.zeros((), dtype=grad.dtype))


def assert_gradient_is_the_selection(x: torch.Tensor, upstream: torch.Tensor, grad: torch.Tensor) -> None:
    """Bit for bit the selection (NaN inputs excepted: a NaN activation means a NaN loss, which
    the engine stops at); as numbers the old product wherever that was finite."""
    defined = ~x.isnan()
    assert torch.equal(bits_of(grad[defined]), bits_of(selected_grad(x, upstream)[defined]))
    old = old_grad(x, upstream)
    finite = defined & old.isfinite()
    assert torch.equal(grad[finite], old[finite])  # == treats -0 and +0 as the same number


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
    assert_gradient_is_the_selection(x, upstream, leaf.grad)


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
    assert_gradient_is_the_selection(x, upstream, leaf.grad)


def test_edges_select_the_closed_interval_in_every_dtype():
    """0, -0 and 1 pass the gradient; the floats next to them outside [0, 1] do not."""
    for dtype in (torch.float32, torch.float64, torch.bfloat16, torch.float16):
        info = torch.finfo(dtype)
        x = torch.tensor([-info.tiny * info.eps, -0.0, 0.0, 1.0, 1.0 + info.eps, -1.0], dtype=dtype)
        leaf = x.clone().requires_grad_()
        quantize_unsigned(leaf, 4).backward(torch.full_like(x, 3.0))
        assert leaf.grad.tolist() == [0.0, 3.0, 3.0, 3.0, 0.0, 0.0], dtype


def test_activation_quantizer_makes_no_mask_and_no_conversion_copies_on_cpu():
    """The CPU node's forward makes no mask (no comparison pass) and neither pass converts a
    bool mask to float (a copy of the activation's size each step); the backward is one fused
    `hardtanh_backward`. (Eager mode still converts the Python scalar n to a 0-dim tensor; those
    copies are not counted.)"""
    x = torch.rand(2, 4, 16, 16, requires_grad=True)
    upstream = torch.randn(2, 4, 16, 16)
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        quantize_unsigned(x, 4).backward(upstream)
    events = prof.events()
    copies = [e.input_shapes for e in events if e.name == "aten::_to_copy" and e.input_shapes[0]]
    comparisons = [e.name for e in events if e.name in ("aten::eq", "aten::ge", "aten::le", "aten::bitwise_and",
                                                        "aten::where", "aten::mul")]
    fused = [e.name for e in events if e.name == "aten::hardtanh_backward"]
    assert copies == [] and comparisons == [] and fused == ["aten::hardtanh_backward"], (copies, comparisons, fused)
