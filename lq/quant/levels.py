"""What a trained power-of-two model's layers hold: checked level sets and the share of zeros.

INQ's promise is hardware-friendly weights: every quantized layer on {0, +-2^n : n2 <= n <= n1},
at most 2^(b-1) + 1 distinct values. The evaluate stage checks that promise on the model it
scores (a violation is a bug, so it stops) and reports each layer's share of zeros, the weights
a shift-and-add kernel skips.
"""

from __future__ import annotations

import torch
from torch import nn

from lq.errors import LqError
from lq.quant.functions import pow2_exponent_range
from lq.quant.modules import QConv2d, QLinear


def pow2_layers(model: nn.Module) -> dict[str, nn.Module]:
    """Every quantized conv or linear with power-of-two weights (the layers INQ quantizes)."""
    return {name: m for name, m in model.named_modules()
            if isinstance(m, (QConv2d, QLinear)) and m.weight_quantizer.quantizer == "pow2" and m.weight_bits < 32}


@torch.no_grad()
def check_power_of_two(model: nn.Module) -> None:
    """Raise unless every power-of-two layer's weights lie in its level set, within the count bound."""
    for name, layer in pow2_layers(model).items():
        quantizer = layer.weight_quantizer
        n2, n1 = pow2_exponent_range(int(quantizer.fixed_exponent(layer.weight)), quantizer.bits)
        values = torch.unique(layer.quantized_weight()).tolist()
        allowed = {0.0, *(s * 2.0**n for n in range(int(n2), int(n1) + 1) for s in (1, -1))}
        stray = sorted(set(values) - allowed)
        if stray or len(values) > 2 ** (quantizer.bits - 1) + 1:
            raise LqError(f"layer {name}: {len(values)} distinct weights, {len(stray)} outside its {quantizer.bits}-bit "
                          f"power-of-two level set (e.g. {stray[:3]}); this model is not a valid pow2 model")


@torch.no_grad()
def zero_shares(model: nn.Module) -> dict[str, float]:
    """Layer name -> share of its quantized weights that are exactly zero."""
    return {name: round(float((layer.quantized_weight() == 0).double().mean()), 6)
            for name, layer in pow2_layers(model).items()}
