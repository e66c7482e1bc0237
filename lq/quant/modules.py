"""Thin modules over `lq.quant.functions`: quantizers built from a config, and quantized layers.

Bit widths are attributes, never class names. `QConv2d` / `QLinear` keep the float weight as the
trained parameter and quantize it on every forward; `from_float` and `to_float` hand the very
same Parameter objects across, so an optimizer or a penalty holding them keeps working.
"""

from typing import ClassVar

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from lq.errors import LqError
from lq.quant.config import ACT_QUANTIZERS, WEIGHT_QUANTIZERS, QuantConfig, Quantizer
from lq.quant.functions import FULL_PRECISION, check_bits


class _Quantizer(nn.Module):
    """Applies one registered quantizer at `bits`; owns the learned step if the quantizer has one.

    A learned step (LSQ) is initialised from the first tensor seen, once: the flag is a buffer,
    so a loaded state_dict carries the step and never re-initialises it from new data. A
    power-of-two level set's top exponent n1 is fixed the same way (a buffer, not learned).
    """

    registry: ClassVar[dict[str, Quantizer]]

    def __init__(self, bits: int, quantizer: str, act_range: float = 2.0) -> None:
        super().__init__()
        if quantizer not in self.registry:
            allowed = ", ".join(sorted(self.registry))
            raise LqError(f"{type(self).__name__} quantizer={quantizer!r} is unknown; allowed: {allowed}")
        self.bits = check_bits(bits)
        least = self.registry[quantizer].min_bits
        if self.bits < least:
            raise LqError(f"{type(self).__name__} quantizer={quantizer!r} takes {least} to 8 bits (or 32), not {bits}")
        self.quantizer = quantizer
        self.act_range = act_range
        self._entry = self.registry[quantizer]
        self.register_parameter("step", None)
        self.register_buffer("top_exponent", None)
        self._step_ready = self._exponent_ready = True
        if self._entry.init_step is not None and bits != FULL_PRECISION:
            self.step = nn.Parameter(torch.ones(()))
            self.register_buffer("step_initialized", torch.zeros((), dtype=torch.bool))
            self._step_ready = False
        if self._entry.init_exponent is not None and bits != FULL_PRECISION:
            self.register_buffer("top_exponent", torch.zeros((), dtype=torch.int64))
            self.register_buffer("exponent_initialized", torch.zeros((), dtype=torch.bool))
            self._exponent_ready = False

    def forward(self, x: Tensor) -> Tensor:
        if self.bits == FULL_PRECISION:
            return x
        kwargs = {}
        if self.step is not None:
            if not self._step_ready:
                self._initialize_step(x)
            kwargs["step"] = self.step
        if self.top_exponent is not None:
            kwargs["n1"] = self.fixed_exponent(x)
        if self._entry.takes_range:
            kwargs["act_range"] = self.act_range
        return self._entry.fn(x, self.bits, **kwargs)

    @torch.no_grad()
    def _initialize_step(self, x: Tensor) -> None:
        self.step.copy_(self._entry.init_step(x, self.bits))
        self.step_initialized.fill_(True)
        self._step_ready = True

    @torch.no_grad()
    def fixed_exponent(self, x: Tensor) -> Tensor:
        """The level set's top exponent n1, fixed from `x` the first time it is asked for."""
        if not self._exponent_ready:
            self.top_exponent.copy_(self._entry.init_exponent(x))
            self.exponent_initialized.fill_(True)
            self._exponent_ready = True
        return self.top_exponent

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        if self.step is not None:
            self._step_ready = bool(self.step_initialized)
        if self.top_exponent is not None:
            self._exponent_ready = bool(self.exponent_initialized)

    def _identity(self) -> tuple:
        return type(self), self.bits, self.quantizer, self.act_range if self._entry.takes_range else None

    def same_as(self, other: nn.Module) -> bool:
        """True if `other` computes the same quantizer (so its learned state can be kept)."""
        return isinstance(other, _Quantizer) and self._identity() == other._identity()

    def extra_repr(self) -> str:
        text = f"bits={self.bits}, quantizer={self.quantizer!r}"
        return text + (f", act_range={self.act_range}" if self._entry.takes_range else "")


class WeightQuantizer(_Quantizer):
    """Fake-quantizes a weight tensor (ProxQ by default).

    `only`, when set, is a boolean mask of the entries to quantize; the others pass through in
    float and only they get gradients. INQ (`lq.train.inq`) sets it to the share it has frozen.
    It is not part of the state_dict: its owner keeps and restores it.
    """

    registry = WEIGHT_QUANTIZERS

    def __init__(self, bits: int = 32, quantizer: str = "proxq", act_range: float = 2.0) -> None:
        super().__init__(bits, quantizer, act_range)
        self.only: Tensor | None = None

    def forward(self, w: Tensor) -> Tensor:
        q = super().forward(w)
        return q if self.only is None else torch.where(self.only, q.detach(), w)

    @classmethod
    def from_config(cls, config: QuantConfig) -> "WeightQuantizer":
        return cls(config.weight_bits, config.weight_quantizer, config.act_range)


class ActQuantizer(_Quantizer):
    """Fake-quantizes activations (unsigned, [0, 1] by default); replaces an `ActQuantPoint`."""

    registry = ACT_QUANTIZERS

    def __init__(self, bits: int = 32, quantizer: str = "uniform", act_range: float = 2.0) -> None:
        super().__init__(bits, quantizer, act_range)

    @classmethod
    def from_config(cls, config: QuantConfig) -> "ActQuantizer":
        return cls(config.act_bits, config.act_quantizer, config.act_range)

    def then_relu(self, x: Tensor) -> Tensor | None:
        """relu(self(x)) computed in one go where the quantizer has a fused form, else None (also at
        32 bits, where the caller's activation, a ReLU6 say, is not the identity on the output)."""
        if self._entry.then_relu is None or self.bits == FULL_PRECISION:
            return None
        return self._entry.then_relu(x, self.bits)

    @classmethod
    def from_module(cls, module: nn.Module, config: QuantConfig) -> "ActQuantizer":
        """Quantizer for the place `module` (a marker or an older quantizer) holds; keeps a matching one."""
        new = cls.from_config(config)
        return module if new.same_as(module) else new


def _weight_quantizer_for(module: nn.Module, config: QuantConfig) -> WeightQuantizer:
    """A quantizer for `module.weight`, on its device; an identical existing one is kept (with its step)."""
    new = WeightQuantizer.from_config(config)
    old = getattr(module, "weight_quantizer", None)
    if old is not None and new.same_as(old):
        return old
    return new.to(device=module.weight.device, dtype=module.weight.dtype)


def _share_parameters(src: nn.Module, dst: nn.Module) -> nn.Module:
    """Point dst at src's weight and bias (the same Parameter objects) and its train/eval mode."""
    dst.weight = src.weight
    if src.bias is not None:
        dst.bias = src.bias
    return dst.train(src.training)


class _QuantizedWeight:
    """What QConv2d and QLinear share: the quantized weight and the bit widths they report."""

    weight: nn.Parameter
    weight_quantizer: WeightQuantizer
    config: QuantConfig

    def quantized_weight(self) -> Tensor:
        """The fake-quantized weight used by forward (at most 2^weight_bits distinct values)."""
        return self.weight_quantizer(self.weight)

    @property
    def weight_bits(self) -> int:
        return self.weight_quantizer.bits

    @property
    def act_bits(self) -> int:
        """The config's activation width; activations are quantized by `ActQuantizer` modules."""
        return self.config.act_bits


class QConv2d(_QuantizedWeight, nn.Conv2d):
    """nn.Conv2d that convolves with its fake-quantized weight."""

    def __init__(self, *args, config: QuantConfig = QuantConfig(), **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.config = config
        self.weight_quantizer = WeightQuantizer.from_config(config)

    def forward(self, x: Tensor) -> Tensor:
        return self._conv_forward(x, self.quantized_weight(), self.bias)

    @classmethod
    def from_float(cls, module: nn.Conv2d, config: QuantConfig) -> "QConv2d":
        """Quantized twin of `module` sharing its Parameters (also re-configures a QConv2d)."""
        new = cls(**_conv_args(module), device="meta", config=config)
        new = _share_parameters(module, new)
        new.weight_quantizer = _weight_quantizer_for(module, config)
        return new

    def to_float(self) -> nn.Conv2d:
        return _share_parameters(self, nn.Conv2d(**_conv_args(self), device="meta"))


class QLinear(_QuantizedWeight, nn.Linear):
    """nn.Linear that multiplies by its fake-quantized weight."""

    def __init__(self, *args, config: QuantConfig = QuantConfig(), **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.config = config
        self.weight_quantizer = WeightQuantizer.from_config(config)

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.quantized_weight(), self.bias)

    @classmethod
    def from_float(cls, module: nn.Linear, config: QuantConfig) -> "QLinear":
        """Quantized twin of `module` sharing its Parameters (also re-configures a QLinear)."""
        bias = module.bias is not None
        new = cls(module.in_features, module.out_features, bias, device="meta", config=config)
        new = _share_parameters(module, new)
        new.weight_quantizer = _weight_quantizer_for(module, config)
        return new

    def to_float(self) -> nn.Linear:
        linear = nn.Linear(self.in_features, self.out_features, self.bias is not None, device="meta")
        return _share_parameters(self, linear)


def _conv_args(module: nn.Conv2d) -> dict:
    return dict(
        in_channels=module.in_channels,
        out_channels=module.out_channels,
        kernel_size=module.kernel_size,
        stride=module.stride,
        padding=module.padding,
        dilation=module.dilation,
        groups=module.groups,
        bias=module.bias is not None,
        padding_mode=module.padding_mode,
    )
