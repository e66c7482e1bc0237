"""Fake-quantization as pure functions: tensor in, tensor on a k-bit grid out.

Every function takes the bit width as data. 32 bits returns the input itself (no copy); 1 bit is
a sign for weights ({-1, +1}, 0 -> +1) and, for activations, the sign of the clamped input
(sign(clamp(x, 0, 1)) in {0, 1}: 1 where x > 0, as the reference); 2..8 bits are k-bit grids;
any other width raises `LqError`. Rounding uses the straight-through estimator (`ste.py`), so
gradients pass through the grid and are zero only where a value is clamped.

Weight grids (ProxQ, ProxQ-CDF, DoReFa) share one symmetric grid in [-1, 1] with exactly 2^k
levels, no zero level:

    {2 i / (2^k - 1) - 1 : i = 0 .. 2^k - 1}      e.g. k = 2: {-1, -1/3, 1/3, 1}

ProxQ (LifeQuant's proximal quantization space) standardises the weight tensor first, so the
grid does not drift when the weights do: x_hat = (w - mean) / std * (r / 4), std unbiased, then
`2 q_k(clamp((x_hat + 1) / 2, 0, 1)) - 1`. The reference code instead rounds `x_hat (2^k - 1)`
without clamping; every standardised weight beyond the grid's end then gets a level of its own
(and the grid's step is half of ours), so a "4-bit" tensor can hold far more than 16 values and
its storage size is understated. lq clamps, which keeps every k-bit tensor on at most 2^k
levels, the property model size and every comparison rely on. Output is invariant to
w -> a w + b (a > 0). A constant tensor (std 0) maps to one level next to 0, without NaN.
"""

import math

import torch
from torch import Tensor

from lq.errors import LqError
from lq.quant.ste import grad_scale, round_ste, sign_ste, signed_grid_ste, unit_grid_ste, unit_sign_ste

FULL_PRECISION = 32
SUPPORTED_BITS = (*range(1, 9), FULL_PRECISION)


def check_bits(bits: int, field: str = "bits") -> int:
    """Return `bits` if it is a supported width (1..8, or 32 = no quantization)."""
    if isinstance(bits, bool) or not isinstance(bits, int) or bits not in SUPPORTED_BITS:
        raise LqError(f"{field}={bits!r} is not a supported bit width; allowed: 1 to 8, or 32 (float)")
    return bits


def quantize_unsigned(x: Tensor, bits: int) -> Tensor:
    """round(clamp(x, 0, 1) (2^k - 1)) / (2^k - 1): the activation quantizer of the SPEC.

    1 bit is the sign of the clamped input (SPEC 4, the reference's `sign(clamp(x, 0, 1))`):
    {0, 1} with the threshold at 0, where rounding would put it at 0.5.
    """
    if check_bits(bits) == FULL_PRECISION:
        return x
    if bits == 1:
        return unit_sign_ste(x)
    return unit_grid_ste(x, 2**bits - 1)


def quantize_unsigned_relu(x: Tensor, bits: int) -> Tensor:
    """relu(quantize_unsigned(x, bits)), bit for bit; 2 to 8 bits in one autograd node."""
    if check_bits(bits) == FULL_PRECISION or bits == 1:
        return torch.relu(quantize_unsigned(x, bits))
    return unit_grid_ste(x, 2**bits - 1, relu=True)


def _signed_grid(u: Tensor, bits: int) -> Tensor:
    """Map u in [0, 1] (clamped) onto the 2^k-level grid in [-1, 1]; 1 bit is the sign of u - 1/2."""
    if bits == 1:
        return sign_ste(u - 0.5)
    return signed_grid_ste(u, 2**bits - 1)  # 2 quantize_unsigned(u, bits) - 1, as one node


def _standardize(w: Tensor) -> Tensor:
    """(w - mean) / std in one fused reduction; a (numerically) constant tensor gives zeros."""
    var, mean = torch.var_mean(w, correction=1 if w.numel() > 1 else 0)
    ok = var.detach() > (4 * torch.finfo(w.dtype).eps * mean.detach().abs()) ** 2  # a mask: no graph
    inv_std = torch.where(ok, torch.where(ok, var, 1.0).rsqrt(), 0.0)  # inner where: no NaN gradient
    return (w - mean) * inv_std


def proxq_weight(w: Tensor, bits: int, act_range: float = 2.0) -> Tensor:
    """ProxQ: standardise, scale by r / 4, clamp onto the symmetric 2^k-level grid."""
    if check_bits(bits) == FULL_PRECISION:
        return w
    z = _standardize(w)
    if bits == 1:
        return _signed_grid((z * (act_range / 4) + 1) / 2, bits)
    return signed_grid_ste(z, 2**bits - 1, act_range / 4)  # _signed_grid((z r/4 + 1) / 2), one node


def proxq_cdf_weight(w: Tensor, bits: int) -> Tensor:
    """ProxQ through the Gaussian CDF: u = Phi((w - mean) / std) is uniform for Gaussian weights."""
    if check_bits(bits) == FULL_PRECISION:
        return w
    return _signed_grid(torch.special.ndtr(_standardize(w)), bits)


def dorefa_weight(w: Tensor, bits: int) -> Tensor:
    """DoReFa: tanh(w) / (2 max|tanh(w)|) + 1/2 quantized, mapped back to [-1, 1]."""
    if check_bits(bits) == FULL_PRECISION:
        return w
    t = torch.tanh(w)
    return _signed_grid(t / (2 * t.abs().amax().clamp_min(torch.finfo(w.dtype).tiny)) + 0.5, bits)


# --- powers of two (INQ's level set, SPEC 9) ------------------------------------------------------
#
# P = {0} U {+-2^n : n2 <= n <= n1} with n1 = floor(log2(4 s / 3)), s = max|W|, and
# n2 = n1 + 1 - 2^(b-2): b bits hold one bit for zero, so a b-bit layer has at most 2^(b-1) + 1
# values (b = 5: 17; b = 2: {0, +-2^n1}). Rounding is to the nearest level in magnitude with the
# paper's tie rule, upward ((a + b) / 2 <= |w| -> b; the Caffe release breaks ties downward):
# |w| < 2^(n2-1) -> 0, |w| beyond 2^n1 saturates. Exponents come from `frexp`, so every boundary
# (1.5 * 2^n between 2^n and 2^(n+1)) is compared exactly, without a rounded logarithm.

POW2_MIN_BITS = 2


def _floor_log2(a: Tensor) -> Tensor:
    """floor(log2(a)) for a > 0, exact (frexp: a = m 2^e with m in [0.5, 1))."""
    return torch.frexp(a).exponent - 1


def _nearest_exponent(a: Tensor) -> Tensor:
    """The exponent of the power of two nearest to a > 0, ties upward: e + (a >= 1.5 * 2^e)."""
    e = _floor_log2(a)
    return e + (a >= 1.5 * torch.ldexp(torch.ones_like(a), e)).to(e.dtype)


def pow2_top_exponent(w: Tensor) -> Tensor:
    """n1 = floor(log2(4 max|W| / 3)): the exponent of max|W| rounded to a power of two (0 for W = 0)."""
    s = w.detach().abs().amax()
    return torch.where(s > 0, _nearest_exponent(torch.where(s > 0, s, 1.0)), 0)


def pow2_exponent_range(n1: Tensor | int, bits: int) -> tuple[Tensor | int, Tensor | int]:
    """(n2, n1): the smallest and largest exponent of the b-bit level set."""
    if check_bits(bits) == FULL_PRECISION or bits < POW2_MIN_BITS:
        raise LqError(f"power-of-two weights take {POW2_MIN_BITS} to 8 bits (one of them for zero), not {bits}")
    return n1 + 1 - 2 ** (bits - 2), n1


def pow2_round(w: Tensor, n1: Tensor | int, bits: int) -> Tensor:
    """w on the b-bit level set with top exponent n1 (no gradient: the values, for INQ's freezing)."""
    n2, n1 = pow2_exponent_range(n1, bits)
    a = w.detach().abs()
    safe = torch.where(a > 0, a, 1.0)
    n = torch.clamp(_nearest_exponent(safe), min=n2, max=n1)
    keep = a >= torch.ldexp(torch.ones_like(a), torch.as_tensor(n2 - 1))
    return torch.where(keep, torch.sign(w.detach()) * torch.ldexp(torch.ones_like(a), n), 0.0)


def pow2_weight(w: Tensor, bits: int, n1: Tensor | int | None = None) -> Tensor:
    """Power-of-two QAT: w on its b-bit level set, straight-through (identity gradient).

    n1 is the layer's fixed top exponent (`WeightQuantizer` fixes it when quantization starts on
    the tensor); None takes it from the current max|W|.
    """
    if check_bits(bits) == FULL_PRECISION:
        return w
    q = pow2_round(w, pow2_top_exponent(w) if n1 is None else n1, bits)
    return w + (q - w).detach()


def lsq_bounds(bits: int, signed: bool) -> tuple[int, int]:
    """(Q_N, Q_P): the integer grid is [-Q_N, Q_P]. Signed 1 bit is the sign, {-1, +1}."""
    if not signed:
        return 0, 2**bits - 1
    if bits == 1:
        return 1, 1
    return 2 ** (bits - 1), 2 ** (bits - 1) - 1


def lsq_quantize(x: Tensor, bits: int, step: Tensor, *, signed: bool) -> Tensor:
    """LSQ: round(clamp(x / s, -Q_N, Q_P)) s, the step's gradient scaled by 1 / sqrt(numel(x) Q_P)."""
    if check_bits(bits) == FULL_PRECISION:
        return x
    q_n, q_p = lsq_bounds(bits, signed)
    s = grad_scale(step, 1.0 / math.sqrt(x.numel() * q_p))
    v = torch.clamp(x / s, -q_n, q_p)
    return (sign_ste(v) if signed and bits == 1 else round_ste(v)) * s


def lsq_init_step(x: Tensor, bits: int, signed: bool) -> Tensor:
    """LSQ's initial step 2 mean|x| / sqrt(Q_P), kept positive for an all-zero input."""
    _, q_p = lsq_bounds(check_bits(bits), signed)
    return (2 * x.detach().abs().mean() / math.sqrt(q_p)).clamp_min(torch.finfo(x.dtype).eps)



# --- post-training min/max quantizers (SPEC 11) ---------------------------------------------------
#
# Weights: symmetric per output channel (dim 0), s_c = max|w_c| / ((2^b - 1) / 2),
# q = clamp(round(w / s_c), -2^(b-1), 2^(b-1) - 1). Activations: asymmetric per layer from a
# calibrated range [min, max], s = (max - min) / (2^b - 1), zp = -round(min / s),
# q = clamp(round(x / s) + zp, 0, 2^b - 1). torch.round rounds half to even. Both dequantize
# (s q, s (q - zp)) with a straight-through gradient, so a quantized training pass can use them.

MINMAX_MIN_BITS = 2  # a symmetric 1-bit grid {-1, 0} s would not be a sign


def _check_minmax_bits(bits: int) -> int:
    if check_bits(bits) != FULL_PRECISION and bits < MINMAX_MIN_BITS:
        raise LqError(f"min/max quantizers take {MINMAX_MIN_BITS} to 8 bits, or 32 (float), not {bits}")
    return bits


def _safe(scale: Tensor) -> Tensor:
    """A zero scale (all-zero channel, constant range) as 1, so nothing divides by zero."""
    return torch.where(scale > 0, scale, torch.ones_like(scale))


def symmetric_scale(w: Tensor, bits: int) -> Tensor:
    """s_c = max|w_c| / ((2^b - 1) / 2), one per output channel (dim 0)."""
    amax = w.detach().abs().reshape(w.shape[0], -1).amax(dim=1)
    return amax / ((2**_check_minmax_bits(bits) - 1) / 2)


def _per_channel(scale: Tensor, w: Tensor) -> Tensor:
    return _safe(scale).reshape(-1, *([1] * (w.dim() - 1)))


def symmetric_codes(w: Tensor, scale: Tensor, bits: int) -> Tensor:
    """The integer codes clamp(round(w / s_c), -2^(b-1), 2^(b-1) - 1) (as a float tensor)."""
    half = 2 ** (_check_minmax_bits(bits) - 1)
    return torch.clamp(torch.round(_scaled(w, scale, bits)), -half, half - 1)


def _scaled(w: Tensor, scale: Tensor, bits: int) -> Tensor:
    """w / s_c computed as (w / max|w_c|) ((2^b - 1) / 2), so a channel's extreme lands exactly on
    +-(2^b - 1)/2, a tie: -max|w_c| -> -2^(b-1) (half to even), +max|w_c| -> 2^(b-1), clamped to
    2^(b-1) - 1. Dividing by s_c itself would break that tie by float error, channel by channel."""
    levels = (2**bits - 1) / 2
    return w / _per_channel(scale * levels, w) * levels


def minmax_weight(w: Tensor, bits: int) -> Tensor:
    """w on its per-output-channel symmetric b-bit grid (dequantized), straight-through."""
    if _check_minmax_bits(bits) == FULL_PRECISION:
        return w
    scale = symmetric_scale(w, bits)
    half = 2 ** (bits - 1)
    return torch.clamp(round_ste(_scaled(w, scale, bits)), -half, half - 1) * _per_channel(scale, w)


def asymmetric_params(low: Tensor, high: Tensor, bits: int) -> tuple[Tensor, Tensor]:
    """(s, zp) = ((max - min) / (2^b - 1), -round(min / s)) of a calibrated range."""
    scale = (high - low) / (2**_check_minmax_bits(bits) - 1)
    return scale, -torch.round(low / _safe(scale))


def asymmetric_codes(x: Tensor, scale: Tensor, zero_point: Tensor, bits: int) -> Tensor:
    """The integer codes clamp(round(x / s) + zp, 0, 2^b - 1) (as a float tensor)."""
    return torch.clamp(torch.round(x / _safe(scale)) + zero_point, 0, 2**_check_minmax_bits(bits) - 1)


def minmax_act(x: Tensor, low: Tensor, high: Tensor, bits: int) -> Tensor:
    """x on the asymmetric b-bit grid of the range [low, high] (dequantized), straight-through.

    A constant range (low = high) maps everything to that value.
    """
    if _check_minmax_bits(bits) == FULL_PRECISION:
        return x
    scale, zero_point = asymmetric_params(low, high, bits)
    s = _safe(scale)
    q = torch.clamp(round_ste(x / s) + zero_point, 0, 2**bits - 1)
    return torch.where(scale > 0, (q - zero_point) * s, low.to(x.dtype).expand_as(x))
