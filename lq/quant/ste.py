"""Straight-through estimators: rounding whose backward pass is the identity.

Rounding has a zero gradient almost everywhere, so quantization-aware training pretends it is
the identity on the way back (Bengio et al. 2013). Everything here is one elementwise op.
"""

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


def _inside_unit(clamped: Tensor, x: Tensor) -> Tensor:
    """The mask 0 <= x <= 1, as `clamped == x` with clamped = clamp(x, 0, 1): one pass, not three
    (ge, le, and), and false for NaN as the two comparisons are.

    On CPU the mask is held as 1.0 / 0.0 in x's dtype, not as bool: there a float-by-bool
    product first converts the whole mask to float (a copy the size of the activation), and bool
    comparisons are several times slower than float ones. `grad * mask` is the same number
    either way (grad * 1 or grad * 0, signed zeros included). On CUDA the product casts in the
    kernel, so the 1-byte mask is kept there.
    """
    if x.device.type == "cpu":
        return torch.eq(clamped, x, out=torch.empty_like(x))
    return torch.eq(clamped, x)


class _UnitGridSTE(torch.autograd.Function):
    """round(clamp(x, 0, 1)·n)/n forward; backward passes the gradient where 0 <= x <= 1.

    One autograd node instead of four (clamp, mul, round, div) and a saved mask instead of the
    activations: this is the hot op of QAT (every activation of the network goes through it).
    Fusing it cut the w4a4 ResNet-20 CPU training step by a third; computing the mask from the
    clamped tensor, held in float on CPU (`_inside_unit`), cut the rest of its cost by half.
    """

    @staticmethod
    def forward(ctx, x: Tensor, n: int) -> Tensor:
        clamped = torch.clamp(x, 0.0, 1.0)
        ctx.save_for_backward(_inside_unit(clamped, x))
        return clamped.mul_(n).round_().div_(n)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:
        (inside,) = ctx.saved_tensors
        return grad * inside, None


class _UnitSignSTE(torch.autograd.Function):
    """sign(clamp(x, 0, 1)): 1 where x > 0, else 0; backward passes the gradient where 0 <= x <= 1.

    The 1-bit activation of the SPEC and the reference (`sign` of the clamped input): the
    threshold is 0, not the 0.5 that rounding on a one-step grid would give.
    """

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:
        ctx.save_for_backward(_inside_unit(torch.clamp(x, 0.0, 1.0), x))
        return (x > 0).to(x.dtype)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        (inside,) = ctx.saved_tensors
        return grad * inside


def unit_sign_ste(x: Tensor) -> Tensor:
    """{0, 1}: 1 where x > 0 (the sign of clamp(x, 0, 1)), with the clamped straight-through gradient."""
    return _UnitSignSTE.apply(x)


def unit_grid_ste(x: Tensor, levels: int) -> Tensor:
    """round(clamp(x, 0, 1)·levels)/levels with the clamped straight-through gradient."""
    return _UnitGridSTE.apply(x, levels)


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
