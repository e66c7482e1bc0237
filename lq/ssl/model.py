"""The Siamese network of SimSiam and SSQL, and SSQL's switchable quantized pass.

Shapes follow the release (SSQL-ECCV2022, `utils/ssl_algorithms/Qsimsiam.py`): the encoder f is
the backbone (its pooled features; the classifier head is not used) followed by a 3-layer
projector, Linear-BN-ReLU, Linear-BN-ReLU, Linear-BN with the last batch norm without affine
parameters (the release's last linear keeps a frozen bias; here it has none, which the BN after
it makes the same); the predictor h is Linear-BN-ReLU-Linear and is never quantized. The release
uses width 2048 for ResNet-18 (512 features); `dim` and `pred_dim` set them here.

SSQL's quantized pass reuses the float weights (one set of weights): `make_switchable` swaps, in
place, the backbone's convolutions and the projector's linear layers for versions that put their
weight on the symmetric per-output-channel min/max grid (`lq.quant.functions.minmax_weight`,
straight-through) when given a bit width, and every activation point for one that records its
min and max during the float pass and quantizes on that range (`minmax_act`, straight-through)
during the quantized pass: the release's min/max observers, reset every step. As in the release's
BIT_CONFIG, the stem convolution and its activation never go below `stem_bits` (8) and the
projector's weights stay at 8 bits with float activations. The swapped modules hold the same
parameters under the same names, so the backbone's state dict is a plain model's.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import Tensor, nn

from lq.quant import functions
from lq.quant.points import ActQuantPoint

FLOAT = functions.FULL_PRECISION
PROJECTOR_WEIGHT_BITS = 8  # the release's BIT_CONFIG: fc.0 / fc.3 / fc.6 at w8, activations float


def projector(features: int, dim: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Linear(features, dim, bias=False), nn.BatchNorm1d(dim), nn.ReLU(inplace=True),
        nn.Linear(dim, dim, bias=False), nn.BatchNorm1d(dim), nn.ReLU(inplace=True),
        nn.Linear(dim, dim, bias=False), nn.BatchNorm1d(dim, affine=False),
    )


def predictor(dim: int, hidden: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(dim, hidden, bias=False), nn.BatchNorm1d(hidden), nn.ReLU(inplace=True),
                         nn.Linear(hidden, dim))


class Siamese(nn.Module):
    """backbone -> projector (z, the embedding) -> predictor (p). `forward(x)` returns (z, p)."""

    def __init__(self, backbone: nn.Module, dim: int, pred_dim: int):
        super().__init__()
        self.backbone = backbone
        self.projector = projector(backbone.num_features, dim)
        self.predictor = predictor(dim, pred_dim)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        z = self.projector(self.backbone.forward_features(x))
        return z, self.predictor(z)


# --- SSQL's switchable quantization ------------------------------------------------------------------

class SwitchConv2d(nn.Conv2d):
    """A convolution whose weight is min/max-quantized (straight-through) at `bits`; 32: float."""

    def __init__(self, conv: nn.Conv2d, floor: int = 2):
        super().__init__(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                         conv.dilation, conv.groups, conv.bias is not None, conv.padding_mode, device="meta")
        self.weight, self.bias = conv.weight, conv.bias
        self.bits, self.floor = FLOAT, floor

    def forward(self, x: Tensor) -> Tensor:
        return self._conv_forward(x, functions.minmax_weight(self.weight, self.bits), self.bias)


class SwitchLinear(nn.Linear):
    """A linear layer with a min/max-quantized weight at `bits` (the projector's, at 8)."""

    def __init__(self, linear: nn.Linear, floor: int = 2):
        super().__init__(linear.in_features, linear.out_features, linear.bias is not None, device="meta")
        self.weight, self.bias = linear.weight, linear.bias
        self.bits, self.floor = FLOAT, floor

    def forward(self, x: Tensor) -> Tensor:
        return nn.functional.linear(x, functions.minmax_weight(self.weight, self.bits), self.bias)


class SwitchAct(nn.Module):
    """Behind an activation point: records min/max while `observing`, quantizes on them at `bits`."""

    def __init__(self, point: nn.Module, floor: int = 2):
        super().__init__()
        self.point = point
        self.bits, self.floor, self.observing = FLOAT, floor, False
        self.low: Tensor | None = None  # plain attributes, not buffers: the state dict stays the model's
        self.high: Tensor | None = None

    def reset(self) -> None:
        self.low = self.high = None

    def forward(self, x: Tensor) -> Tensor:
        x = self.point(x)
        if self.observing:
            low, high = x.detach().amin().float(), x.detach().amax().float()
            self.low = low if self.low is None else torch.minimum(self.low, low)
            self.high = high if self.high is None else torch.maximum(self.high, high)
            return x
        if self.bits == FLOAT:
            return x
        return functions.minmax_act(x, self.low.to(x.dtype), self.high.to(x.dtype), self.bits)


SWITCHES = (SwitchConv2d, SwitchLinear, SwitchAct)


def make_switchable(model: Siamese, stem_bits: int = 8) -> Siamese:
    """Swap, in place, the backbone's convolutions and activation points and the projector's linear
    layers for their switchable forms (the predictor stays float). The first convolution and the
    first activation point (the stem) never take fewer than `stem_bits`."""
    first_conv = first_point = True
    for name, module in list(model.backbone.named_modules()):
        if type(module) is nn.Conv2d:
            new = SwitchConv2d(module, stem_bits if first_conv else 2)
            first_conv = False
        elif type(module) is ActQuantPoint:
            new = SwitchAct(module, stem_bits if first_point else 2)
            first_point = False
        else:
            continue
        _replace(model.backbone, name, new)
    for name, module in list(model.projector.named_modules()):
        if type(module) is nn.Linear:
            linear = SwitchLinear(module, PROJECTOR_WEIGHT_BITS)
            linear.fixed = True  # the projector's weights are always at 8 bits in the quantized pass
            _replace(model.projector, name, linear)
    return model


def _replace(root: nn.Module, name: str, new: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, child, new)


def switches(model: nn.Module) -> Iterator[nn.Module]:
    return (m for m in model.modules() if isinstance(m, SWITCHES))


def observe(model: nn.Module) -> None:
    """Float pass from now on, recording fresh activation ranges (the release resets them every step)."""
    for m in switches(model):
        m.bits = FLOAT
        if isinstance(m, SwitchAct):
            m.reset()
            m.observing = True


def quantize(model: nn.Module, weight_bits: int, act_bits: int) -> None:
    """Quantized pass at (weight_bits, act_bits) from now on, on the ranges the float pass recorded."""
    for m in switches(model):
        if isinstance(m, SwitchAct):
            if m.low is None:
                raise RuntimeError("run the float pass (observe) before quantizing activations")
            m.observing = False
            m.bits = _at_least(act_bits, m.floor)
        elif getattr(m, "fixed", False):
            m.bits = m.floor
        else:
            m.bits = _at_least(weight_bits, m.floor)


def to_float(model: nn.Module) -> None:
    for m in switches(model):
        m.bits = FLOAT
        if isinstance(m, SwitchAct):
            m.observing = False


def _at_least(bits: int, floor: int) -> int:
    """`bits`, raised to `floor` (32, float, is the most)."""
    return max(bits, floor)
