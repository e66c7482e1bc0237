"""The weight quantizers' fused grid node computes bit for bit what the op-by-op chain computed.

`signed_grid_ste` (lq/quant/ste.py) replaces `2 * quantize_unsigned((x_hat + 1) / 2) - 1` and,
for ProxQ, the scale r/4 before it, with one autograd node. The chain is written out below with
the activation quantizer node; forward values and weight gradients must agree bit for bit
(signed zeros included), across bit widths, dtypes, ranges and weights with values clamped at
both ends of the grid.
"""

from __future__ import annotations

import pytest
import torch

from lq.quant.functions import _standardize, dorefa_weight, proxq_cdf_weight, proxq_weight, quantize_unsigned


def chain_signed_grid(u: torch.Tensor, bits: int) -> torch.Tensor:
    return 2 * quantize_unsigned(u, bits) - 1


def chain(name: str, w: torch.Tensor, bits: int, act_range: float) -> torch.Tensor:
    if name == "proxq":
        var, mean = torch.var_mean(w, correction=1)
        ok = var > (4 * torch.finfo(w.dtype).eps * mean.abs()) ** 2
        inv_std = torch.where(ok, torch.where(ok, var, 1.0).rsqrt(), 0.0)
        x_hat = (w - mean) * inv_std * (act_range / 4)
        return chain_signed_grid((x_hat + 1) / 2, bits)
    if name == "proxq_cdf":
        return chain_signed_grid(torch.special.ndtr(_standardize(w)), bits)
    t = torch.tanh(w)
    return chain_signed_grid(t / (2 * t.abs().amax().clamp_min(torch.finfo(w.dtype).tiny)) + 0.5, bits)


FUSED = {"proxq": proxq_weight, "proxq_cdf": proxq_cdf_weight, "dorefa": dorefa_weight}


def bits_of(t: torch.Tensor) -> torch.Tensor:
    return t.contiguous().view({torch.float32: torch.int32, torch.float64: torch.int64,
                                torch.bfloat16: torch.int16}[t.dtype])


def weights(dtype: torch.dtype, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(16, 8, 3, 3, generator=g) * 0.1
    w.view(-1)[::13] *= 40  # far beyond the grid's ends (clamped: zero gradient there)
    w.view(-1)[5] = 0.0
    return w.to(dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("bits", [2, 3, 4, 8])
@pytest.mark.parametrize("name", sorted(FUSED))
def test_fused_grid_matches_the_chain_bit_for_bit(name, bits, dtype):
    for seed, act_range in ((0, 2.0), (1, 2.2), (2, 3.0)):
        w = weights(dtype, seed)
        upstream = torch.randn(w.shape, generator=torch.Generator().manual_seed(seed + 10)).to(dtype)
        upstream.view(-1)[::7] = -upstream.view(-1)[::7].abs()  # negative gradients on clamped entries too
        outs, grads = [], []
        for fn in (lambda v: chain(name, v, bits, act_range),
                   lambda v: FUSED[name](v, bits, act_range) if name == "proxq" else FUSED[name](v, bits)):
            leaf = w.clone().requires_grad_()
            out = fn(leaf)
            out.backward(upstream)
            outs.append(bits_of(out.detach()))
            grads.append(bits_of(leaf.grad))
        assert torch.equal(outs[0], outs[1]), (name, bits, dtype, act_range)
        assert torch.equal(grads[0], grads[1]), (name, bits, dtype, act_range)


def test_fused_grid_is_one_autograd_node():
    """ProxQ's grid, its scale and its affine maps are one node (the chain had six)."""
    w = weights(torch.float32, 0).requires_grad_()
    node = proxq_weight(w, 4).grad_fn
    assert type(node).__name__ == "_SignedGridSTEBackward"
    assert type(node.next_functions[0][0]).__name__ == "MulBackward0"  # (w - mean) * inv_std: the standardization
