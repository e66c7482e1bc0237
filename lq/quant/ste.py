"""Straight-through estimators: rounding whose backward pass is the identity.

Rounding has a zero gradient almost everywhere, so quantization-aware training pretends it is
the identity on the way back (Bengio et al. 2013). Everything here is one elementwise op.
"""

import functools

import torch
from torch import Tensor


class _RoundSTE(torch.autograd.Function):
    """round(x) forward, identity backward."""

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:
        return torch.round(x)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        return grad


class _SignSTE(torch.autograd.Function):
    """sign(x) with 0 -> +1 (so two values, never three) forward, identity backward."""

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:
        return torch.where(x >= 0, 1.0, -1.0).to(x.dtype)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        return grad


def _unit_interval(dtype: torch.dtype) -> tuple[float, float]:
    """The open bounds (lo, hi) with lo < x < hi exactly when 0 <= x <= 1, for floats of `dtype`:
    lo is the negative float nearest zero and hi the float after 1 (as Python floats, which hold
    them exactly), so the strict comparisons of `hardtanh_backward` select the closed interval."""
    info = torch.finfo(dtype)
    return -info.tiny * info.eps, 1.0 + info.eps


def _grid_levels(x: Tensor, n: int) -> Tensor:
    """round(clamp(x, 0, 1)·n): the level indices, in a new tensor rounded in place (the grid
    nodes divide it by n in place; `zero_level_top` searches with these very ops)."""
    return torch.clamp(x, 0.0, 1.0).mul_(n).round_()


@functools.cache
def zero_level_top(levels: int, dtype: torch.dtype) -> float:
    """The largest x of `dtype` that round(clamp(x, 0, 1)·levels) sends to 0 (found, not derived:
    it is wherever the float product x·levels crosses 1/2, ties to even included)."""
    up = torch.tensor(float("inf"), dtype=dtype)
    x = torch.tensor(0.5 / levels, dtype=dtype)
    while _grid_levels(torch.nextafter(x, up), levels) == 0:
        x = torch.nextafter(x, up)
    while _grid_levels(x, levels) != 0:
        x = torch.nextafter(x, -up)
    return x.item()


def _pass_inside_unit(grad: Tensor, x: Tensor, lo: float | None = None) -> Tensor:
    """`grad` where 0 <= x <= 1 (lo < x <= 1 given lo), else +0: one fused pass over x and grad
    (`hardtanh_backward`).

    The straight-through gradient of the [0, 1] clip, computed in the backward from the saved
    input: the forward then makes no mask at all (a comparison pass and a tensor the size of
    the activation), which made up a third of the activation quantizer's forward time on CPU.
    Outside [0, 1] the gradient is +0 (the product with a 0/1 mask gave -0 for a negative
    gradient: the same number). For a NaN x, PyTorch's vectorised and scalar paths disagree, so
    the gradient there is unspecified; a NaN activation makes a NaN loss, which the engine
    stops at before any backward pass.
    """
    below, hi = _unit_interval(x.dtype)
    return torch.ops.aten.hardtanh_backward(grad, x, below if lo is None else lo, hi)


class _UnitGridSTE(torch.autograd.Function):
    """round(clamp(x, 0, 1)·n)/n forward; backward passes the gradient where 0 <= x <= 1, or
    where lo < x <= 1 given lo (a ReLU after the grid: see `unit_grid_ste`).

    One autograd node instead of four (clamp, mul, round, div), and x saved instead of a mask:
    this is the hot op of QAT (every activation of the network goes through it). Fusing it cut
    the w4a4 ResNet-20 CPU training step by a third; the forward now makes one new tensor (the
    clamp, then rounded in place) and the backward is one pass (`_pass_inside_unit`).
    """

    @staticmethod
    def forward(ctx, x: Tensor, n: int, lo: float | None) -> Tensor:
        ctx.save_for_backward(x)
        ctx.lo = lo
        return _grid_levels(x, n).div_(n)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None, None]:
        (x,) = ctx.saved_tensors
        return _pass_inside_unit(grad, x, ctx.lo), None, None


class _SignedGridSTE(torch.autograd.Function):
    """2·round(clamp(u, 0, 1)·n)/n − 1, with u = v or, given `scale`, u = (v·scale + 1)/2.

    The weight quantizers' grid (ProxQ, ProxQ-CDF, DoReFa) as one autograd node instead of up to
    six (mul, add, div, the grid, mul, sub): on small layers each node's bookkeeping costs more
    than its arithmetic. Forward and backward run the very ops the chain ran, in its order
    (backward: ·2, the [0, 1] selection, /2, ·scale), so results are bit for bit the chain's.
    """

    @staticmethod
    def forward(ctx, v: Tensor, n: int, scale: float | None) -> Tensor:
        u = v if scale is None else (v * scale + 1) / 2
        ctx.scale = scale
        ctx.save_for_backward(u)
        return _grid_levels(u, n).div_(n).mul_(2).sub_(1)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None, None]:
        (u,) = ctx.saved_tensors
        g = _pass_inside_unit(grad * 2, u)
        return (g if ctx.scale is None else g / 2 * ctx.scale), None, None


class _UnitSignSTE(torch.autograd.Function):
    """sign(clamp(x, 0, 1)): 1 where x > 0, else 0; backward passes the gradient where 0 <= x <= 1.

    The 1-bit activation of the SPEC and the reference (`sign` of the clamped input): the
    threshold is 0, not the 0.5 that rounding on a one-step grid would give.
    """

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:
        ctx.save_for_backward(x)
        return (x > 0).to(x.dtype)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        (x,) = ctx.saved_tensors
        return _pass_inside_unit(grad, x)


def unit_sign_ste(x: Tensor) -> Tensor:
    """{0, 1}: 1 where x > 0 (the sign of clamp(x, 0, 1)), with the clamped straight-through gradient."""
    return _UnitSignSTE.apply(x)


def unit_grid_ste(x: Tensor, levels: int, relu: bool = False) -> Tensor:
    """round(clamp(x, 0, 1)·levels)/levels with the clamped straight-through gradient.

    relu=True: relu of that, in the same node. A ReLU is the identity on the grid's values (-0
    included: relu keeps it, as clamp does), and its gradient mask (output > 0) is x above the
    top of the zero level, so the two nodes' gradient is the clamp's with that lower bound:
    bit for bit, one pass each way less.
    """
    return _UnitGridSTE.apply(x, levels, zero_level_top(levels, x.dtype) if relu else None)


def signed_grid_ste(v: Tensor, levels: int, scale: float | None = None) -> Tensor:
    """2·round(clamp(u, 0, 1)·levels)/levels − 1 on u = v, or on u = (v·scale + 1)/2 given
    `scale`; the gradient passes where 0 <= u <= 1 (times 2, and times scale / 2 given scale)."""
    return _SignedGridSTE.apply(v, levels, scale)


def round_ste(x: Tensor) -> Tensor:
    """Round to the nearest integer (ties to even); the gradient passes straight through."""
    return _RoundSTE.apply(x)


def sign_ste(x: Tensor) -> Tensor:
    """Sign in {-1, +1} (0 maps to +1); the gradient passes straight through."""
    return _SignSTE.apply(x)


def grad_scale(x: Tensor, scale: float) -> Tensor:
    """Return `x` unchanged but multiply its gradient by `scale` (LSQ's step-size trick)."""
    scaled = x * scale
    return (x - scaled).detach() + scaled
