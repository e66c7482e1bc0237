"""What to quantize and how: a validated, frozen config and the name -> quantizer registries.

A quantizer name maps to a `Quantizer` entry, so adding one is one line in a registry (and the
tests, parametrised over the registries, cover it at once).
"""

import math
from dataclasses import asdict, dataclass, fields
from functools import partial
from typing import Any, Callable, Mapping

from torch import Tensor

from lq.errors import LqError
from lq.quant import functions


@dataclass(frozen=True)
class Quantizer:
    """How a registered name computes: `fn(x, bits, **kwargs)` from `lq.quant.functions`.

    takes_range: `fn` also takes `act_range=` (ProxQ's r).
    init_step: set for learned-step quantizers: `fn` also takes `step=`, a parameter the module
        owns and initialises once as `init_step(first_input, bits)`.
    init_exponent: set for power-of-two levels: `fn` also takes `n1=`, a buffer the module fixes
        once as `init_exponent(first_input)`, so the level set never drifts with the weights.
    min_bits: the fewest bits it can quantize to (32, no quantization, is always allowed).
    then_relu: relu(fn(x, bits)) in fewer passes, for a quantizer that takes nothing but the bits.
    """

    fn: Callable[..., Tensor]
    takes_range: bool = False
    init_step: Callable[[Tensor, int], Tensor] | None = None
    init_exponent: Callable[[Tensor], Tensor] | None = None
    min_bits: int = 1  # below 32 bits; power-of-two levels spend one bit on zero
    then_relu: Callable[[Tensor, int], Tensor] | None = None


WEIGHT_QUANTIZERS: dict[str, Quantizer] = {
    "proxq": Quantizer(functions.proxq_weight, takes_range=True),
    "proxq_cdf": Quantizer(functions.proxq_cdf_weight),
    "dorefa": Quantizer(functions.dorefa_weight),
    "lsq": Quantizer(
        partial(functions.lsq_quantize, signed=True),
        init_step=partial(functions.lsq_init_step, signed=True),
    ),
    # INQ's level set {0, +-2^n} (SPEC 9) trained straight-through; `inq` (lq.train.inq) reaches
    # the same levels by incremental quantize-and-freeze instead.
    "pow2": Quantizer(functions.pow2_weight, init_exponent=functions.pow2_top_exponent,
                      min_bits=functions.POW2_MIN_BITS),
}

ACT_QUANTIZERS: dict[str, Quantizer] = {
    "uniform": Quantizer(functions.quantize_unsigned, then_relu=functions.quantize_unsigned_relu),
    "lsq": Quantizer(
        partial(functions.lsq_quantize, signed=False),
        init_step=partial(functions.lsq_init_step, signed=False),
    ),
}


def _check_name(field: str, value: str, registry: Mapping[str, Quantizer]) -> None:
    if value not in registry:
        raise LqError(f"QuantConfig.{field}={value!r} is unknown; allowed: {', '.join(sorted(registry))}")


@dataclass(frozen=True)
class QuantConfig:
    """Bit widths and quantizer names for a model; 32 bits means full precision.

    act_range is ProxQ's r (the reference's `act_range`): 2 for ResNet-20, 0.5 for MobileNetV2.
    The `uniform` activation quantizer clamps to [0, 1] and does not use it.
    """

    weight_bits: int = 32
    act_bits: int = 32
    weight_quantizer: str = "proxq"
    act_quantizer: str = "uniform"
    act_range: float = 2.0

    def __post_init__(self) -> None:
        functions.check_bits(self.weight_bits, "QuantConfig.weight_bits")
        functions.check_bits(self.act_bits, "QuantConfig.act_bits")
        _check_name("weight_quantizer", self.weight_quantizer, WEIGHT_QUANTIZERS)
        _check_name("act_quantizer", self.act_quantizer, ACT_QUANTIZERS)
        for side, bits, registry, name in (("weight", self.weight_bits, WEIGHT_QUANTIZERS, self.weight_quantizer),
                                           ("act", self.act_bits, ACT_QUANTIZERS, self.act_quantizer)):
            least = registry[name].min_bits
            if bits < least:
                raise LqError(f"QuantConfig.{side}_bits={bits} is too few for the '{name}' quantizer; "
                              f"allowed: {least} to 8, or 32 (float)")
        r = self.act_range
        if isinstance(r, bool) or not isinstance(r, (int, float)) or not math.isfinite(r) or r <= 0:
            raise LqError(f"QuantConfig.act_range={r!r} is invalid; allowed: a finite number > 0 (2, 0.5)")

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> "QuantConfig":
        """Build from a params section or checkpoint, rejecting keys the config does not have."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            allowed = ", ".join(sorted(known))
            raise LqError(f"QuantConfig has no key(s) {', '.join(unknown)}; allowed: {allowed}")
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class PtqQuantizer:
    """A post-training quantizer: `fn(x, bits)` for weights, `fn(x, low, high, bits)` for
    activations, whose range [low, high] calibration observes (lq.quant.ptq).

    granularity: 'channel' (one scale per output channel) or 'layer' (one range per layer).
    """

    fn: Callable[..., Tensor]
    granularity: str


# Post-training quantizers (SPEC 11): min/max observers, no training. `ptq.weight_quantizer` and
# `ptq.act_quantizer` in params.yaml name an entry; the schema's enums are these keys.
PTQ_WEIGHT_QUANTIZERS: dict[str, PtqQuantizer] = {
    "minmax": PtqQuantizer(functions.minmax_weight, granularity="channel"),
}
PTQ_ACT_QUANTIZERS: dict[str, PtqQuantizer] = {
    "minmax": PtqQuantizer(functions.minmax_act, granularity="layer"),
}
