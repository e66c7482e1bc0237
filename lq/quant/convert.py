"""Turn a float model into a fake-quantized one by swapping modules in place.

Models are defined once, in float. Which layers get quantized is a policy, `filter_fn(name,
module) -> bool`, not a model variant. Converting an already converted model re-configures it
(w8a8 -> w4a4 in the lifelong chain) and keeps every weight Parameter; a quantizer whose
config did not change is kept with its learned state. Build optimizers after converting: new
quantizers may bring new parameters (LSQ steps).
"""

from typing import Callable

from torch import nn

from lq.errors import LqError
from lq.quant.config import QuantConfig
from lq.quant.functions import FULL_PRECISION
from lq.quant.modules import ActQuantizer, QConv2d, QLinear
from lq.quant.points import ActQuantPoint

Filter = Callable[[str, nn.Module], bool]

# (module types, converter): the first match converts a module; QConv2d/QLinear are Conv2d/Linear.
_SWAPS: tuple[tuple[type | tuple[type, ...], Callable[[nn.Module, QuantConfig], nn.Module]], ...] = (
    (nn.Conv2d, QConv2d.from_float),
    (nn.Linear, QLinear.from_float),
    ((ActQuantPoint, ActQuantizer), ActQuantizer.from_module),
)


def default_filter(name: str, module: nn.Module) -> bool:
    """The reference policy: every conv (the first included) and activation point; linears stay float."""
    return isinstance(module, (nn.Conv2d, ActQuantPoint, ActQuantizer))


def _converter(module: nn.Module) -> Callable[[nn.Module, QuantConfig], nn.Module] | None:
    return next((convert for types, convert in _SWAPS if isinstance(module, types)), None)


def quantize_model(model: nn.Module, config: QuantConfig, filter_fn: Filter = default_filter) -> nn.Module:
    """Swap, in place, every submodule `filter_fn` selects for its quantized form; return `model`.

    Modules the filter rejects are left as they are (float, or quantized by an earlier call).
    """
    reference = next(model.parameters(), None)
    for name, module in list(model.named_modules()):
        convert = _converter(module)
        if convert is None or not filter_fn(name, module):
            continue
        if not name:
            kind = type(module).__name__
            raise LqError(f"quantize_model swaps submodules; wrap the bare {kind} in an nn.Sequential")
        new = convert(module, config)
        if new is module:
            continue
        if isinstance(new, ActQuantizer) and reference is not None:
            new.to(device=reference.device)  # a marker has no parameter saying where the model lives
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent), child, new)
    return model


def model_bit_widths(model: nn.Module) -> dict[str, int]:
    """Parameter name -> bits needed to store it: quantized layer weights at their width, the rest 32."""
    bits = {name: FULL_PRECISION for name, _ in model.named_parameters()}
    for prefix, module in model.named_modules():
        key = f"{prefix}.weight" if prefix else "weight"
        if isinstance(module, (QConv2d, QLinear)) and key in bits:
            bits[key] = module.weight_bits
    return bits
