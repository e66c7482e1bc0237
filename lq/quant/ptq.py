"""Post-training quantization of a trained model: its float view, min/max calibration, bit widths.

PTQ never touches the model it is given. `float_view` makes a float copy; `prepare` swaps, in that
copy, every convolution for a `PtqConv2d` and puts a `PtqActivation` behind every activation
point (the places lq's QAT quantizes, `ActQuantPoint`), the policy QAT uses (linear heads stay
float). `calibrate` runs the float copy over calibration images and records each activation
point's min and max; `set_bits(model, w, a)` then makes it compute at w-bit weights and a-bit
activations, as often as asked, without calibrating again (the ranges are those of the float
model, as a min/max observer sees them before conversion).

The float view of a checkpoint:
- an FP32 model is itself;
- a QAT-trained model keeps every quantizer's transform without its rounding: weights are what
  the weight quantizer would round (ProxQ: the standardised weight x_hat = (w - mean)/std * r/4
  clamped to [-1, 1]; ProxQ-CDF: 2 Phi(x_hat') - 1; DoReFa: tanh(w) / max|tanh(w)|; LSQ:
  clamp(w / s, -Q_N, Q_P) s; power-of-two: w clamped to +-2^n1), activations are clamped to the
  range their quantizer clips to (uniform: [0, 1]; LSQ: [0, Q_P s]). Its latent float weights
  themselves are not the float model: ProxQ and DoReFa layers compute with weights on [-1, 1],
  whatever the latent weights' scale, and the batch-norm statistics were learnt on that scale.
"""

from __future__ import annotations

import copy
import hashlib

import torch
from torch import Tensor, nn

from lq.errors import LqError
from lq.quant import functions
from lq.quant.config import PTQ_ACT_QUANTIZERS, PTQ_WEIGHT_QUANTIZERS
from lq.quant.modules import ActQuantizer, QConv2d, QLinear, WeightQuantizer
from lq.quant.points import ActQuantPoint


# --- the float view ---------------------------------------------------------------------------------

def continuous_weight(quantizer: WeightQuantizer, w: Tensor) -> Tensor:
    """What `quantizer` rounds onto its grid: its transform of `w` without the rounding."""
    name, bits = quantizer.quantizer, quantizer.bits
    if bits == functions.FULL_PRECISION:
        return w
    if name == "proxq":
        return torch.clamp(functions._standardize(w) * (quantizer.act_range / 4), -1, 1)
    if name == "proxq_cdf":
        return 2 * torch.special.ndtr(functions._standardize(w)) - 1
    if name == "dorefa":
        t = torch.tanh(w)
        return t / t.abs().amax().clamp_min(torch.finfo(w.dtype).tiny)
    if name == "lsq":
        q_n, q_p = functions.lsq_bounds(bits, signed=True)
        return torch.clamp(w / quantizer.step, -q_n, q_p) * quantizer.step
    if name == "pow2":
        top = torch.ldexp(torch.ones_like(w), quantizer.fixed_exponent(w))
        return torch.maximum(torch.minimum(w, top), -top)
    raise LqError(f"PTQ has no float view of the '{name}' weight quantizer; add it to lq.quant.ptq.continuous_weight")


class Clamp(nn.Module):
    """The float view of an activation quantizer: the clip to its range, without the rounding."""

    def __init__(self, low: float, high: float | Tensor) -> None:
        super().__init__()
        self.low = low
        self.register_buffer("high", torch.as_tensor(high, dtype=torch.float32).detach().clone())

    def forward(self, x: Tensor) -> Tensor:
        return torch.clamp(x, min=self.low).minimum(self.high.to(x.dtype))


def _activation_view(quantizer: ActQuantizer) -> nn.Module:
    if quantizer.bits == functions.FULL_PRECISION:
        return ActQuantPoint()
    if quantizer.quantizer == "uniform":
        return Clamp(0.0, 1.0)
    if quantizer.quantizer == "lsq":
        return Clamp(0.0, quantizer.step.detach() * functions.lsq_bounds(quantizer.bits, signed=False)[1])
    raise LqError(f"PTQ has no float view of the '{quantizer.quantizer}' activation quantizer")


@torch.no_grad()
def float_view(model: nn.Module) -> nn.Module:
    """A float copy of `model`: QAT layers become plain layers holding their continuous weights,
    activation quantizers their clip (`ActQuantPoint` markers where they were 32-bit). The copy
    shares no tensor with `model`."""
    view = copy.deepcopy(model)
    device = next(view.parameters()).device
    for name, module in list(view.named_modules()):
        if isinstance(module, (QConv2d, QLinear)):
            plain = module.to_float()
            plain.weight = nn.Parameter(continuous_weight(module.weight_quantizer, module.weight).detach().clone())
            new = plain
        elif isinstance(module, ActQuantizer):
            new = _activation_view(module).to(device)
        else:
            continue
        parent, _, child = name.rpartition(".")
        setattr(view.get_submodule(parent), child, new)
    return view


# --- PTQ modules ------------------------------------------------------------------------------------

class PtqConv2d(nn.Conv2d):
    """A convolution whose weight is put on a post-training grid at `bits` (32: the float weight).

    The quantized weight is computed once per bit width; the float weight is never written.
    """

    def __init__(self, conv: nn.Conv2d, quantizer: str) -> None:
        super().__init__(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                         conv.dilation, conv.groups, conv.bias is not None, conv.padding_mode, device="meta")
        self.weight, self.bias = conv.weight, conv.bias
        self.fn = PTQ_WEIGHT_QUANTIZERS[quantizer].fn
        self.bits = functions.FULL_PRECISION
        self._quantized: Tensor | None = None

    @torch.no_grad()
    def set_bits(self, bits: int) -> None:
        self.bits = bits
        self._quantized = None if bits == functions.FULL_PRECISION else self.fn(self.weight.detach(), bits)

    def forward(self, x: Tensor) -> Tensor:
        return self._conv_forward(x, self.weight if self._quantized is None else self._quantized, self.bias)


class PtqActivation(nn.Module):
    """Behind an activation point: observes min and max while calibrating, then quantizes at `bits`."""

    def __init__(self, point: nn.Module, quantizer: str) -> None:
        super().__init__()
        self.point = point
        self.fn = PTQ_ACT_QUANTIZERS[quantizer].fn
        self.register_buffer("low", torch.tensor(float("inf")))
        self.register_buffer("high", torch.tensor(float("-inf")))
        self.observing = False
        self.bits = functions.FULL_PRECISION
        self._grid: tuple[Tensor, Tensor, int] | None = None

    @property
    def calibrated(self) -> bool:
        return bool(torch.isfinite(self.low)) and bool(torch.isfinite(self.high))

    def forward(self, x: Tensor) -> Tensor:
        x = self.point(x)
        if self.observing:
            self.low = torch.minimum(self.low, x.detach().amin().float())
            self.high = torch.maximum(self.high, x.detach().amax().float())
            return x
        if self.bits == functions.FULL_PRECISION:
            return x
        if self._grid is not None and not torch.is_grad_enabled():
            return self._quantize_inplace(x)
        return self.fn(x, self.low.to(x.dtype), self.high.to(x.dtype), self.bits)

    def set_bits(self, bits: int) -> None:
        """Quantize at `bits` from now on; for the min/max quantizer, fix (s, zp) once."""
        self.bits = bits
        self._grid = None
        if bits != functions.FULL_PRECISION and self.fn is functions.minmax_act:
            scale, zero_point = functions.asymmetric_params(self.low, self.high, bits)
            if scale > 0:
                self._grid = (scale, zero_point, 2**bits - 1)

    def _quantize_inplace(self, x: Tensor) -> Tensor:
        """`minmax_act` at inference, the same operations in the same order on one new tensor
        (bit-identical, without the straight-through node and its copies)."""
        scale, zero_point, top = self._grid
        s, zp = scale.to(x.dtype), zero_point.to(x.dtype)
        return torch.div(x, s).round_().add_(zp).clamp_(0, top).sub_(zp).mul_(s)


def _is_point(module: nn.Module) -> bool:
    return isinstance(module, (ActQuantPoint, Clamp))


def prepare(view: nn.Module, weight_quantizer: str = "minmax", act_quantizer: str = "minmax") -> nn.Module:
    """Swap, in place, `view`'s convolutions and activation points for their PTQ forms; at 32 bits
    (the start) it computes exactly what `view` computed."""
    for registry, name in ((PTQ_WEIGHT_QUANTIZERS, weight_quantizer), (PTQ_ACT_QUANTIZERS, act_quantizer)):
        if name not in registry:
            raise LqError(f"unknown post-training quantizer '{name}'; allowed: {', '.join(sorted(registry))}")
    device = next(view.parameters()).device
    for name, module in list(view.named_modules()):
        if type(module) is nn.Conv2d:
            new = PtqConv2d(module, weight_quantizer)
        elif _is_point(module):
            new = PtqActivation(module, act_quantizer).to(device)
        else:
            continue
        if not name:
            raise LqError("PTQ swaps submodules; wrap a bare layer in an nn.Sequential")
        parent, _, child = name.rpartition(".")
        setattr(view.get_submodule(parent), child, new)
    return view


@torch.no_grad()
def calibrate(model: nn.Module, batches) -> dict[str, tuple[float, float]]:
    """Observe every activation point's min and max over `batches` (float weights and activations,
    eval mode); returns {point name: (min, max)}."""
    points = {n: m for n, m in model.named_modules() if isinstance(m, PtqActivation)}
    set_bits(model, functions.FULL_PRECISION, functions.FULL_PRECISION)
    model.eval()
    for point in points.values():
        point.low.fill_(float("inf"))
        point.high.fill_(float("-inf"))
        point.observing = True
    try:
        seen = 0
        for x, _ in batches:
            model(x)
            seen += len(x)
    finally:
        for point in points.values():
            point.observing = False
    if seen == 0:
        raise LqError("PTQ calibration got no images")
    missing = [n for n, p in points.items() if not p.calibrated]
    if missing:
        raise LqError(f"PTQ calibration never reached activation point(s) {', '.join(missing)}")
    return {n: (p.low.item(), p.high.item()) for n, p in points.items()}


def set_bits(model: nn.Module, weight_bits: int, act_bits: int) -> nn.Module:
    """Make a prepared model compute at (weight_bits, act_bits); 32 is float."""
    functions._check_minmax_bits(weight_bits)
    functions._check_minmax_bits(act_bits)
    for module in model.modules():
        if isinstance(module, PtqConv2d):
            module.set_bits(weight_bits)
        elif isinstance(module, PtqActivation):
            if act_bits != functions.FULL_PRECISION and not module.calibrated:
                raise LqError("calibrate the model before quantizing its activations")
            module.set_bits(act_bits)
    return model


def weights_digest(model: nn.Module) -> str:
    """SHA-256 over the state_dict (names, dtypes, shapes, bytes): equal iff no weight changed."""
    h = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        t = tensor.detach().cpu().contiguous().reshape(-1)
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


__all__ = ["Clamp", "PtqActivation", "PtqConv2d", "calibrate", "continuous_weight", "float_view", "prepare",
           "set_bits", "weights_digest"]
