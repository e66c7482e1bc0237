"""What a checkpoint must carry to rebuild its model: the model spec and the quantization config.

Every checkpoint stores `{"model": ModelSpec, "quant": QuantConfig or None, ...}` as plain dicts.
Loading rebuilds the float model from the spec and converts it with the stored quantization
config, so no stage re-derives "which quantizer goes with which bit width" by hand: the stage
that trained the model decided once, and the checkpoint remembers.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lq.models import create_model
from lq.quant.config import QuantConfig
from lq.quant.convert import quantize_model
from lq.train import checkpoint


@dataclass(frozen=True)
class ModelSpec:
    """The float architecture for one dataset."""

    arch: str
    num_classes: int
    in_channels: int
    image_size: tuple[int, int]

    def build(self) -> nn.Module:
        return create_model(self.arch, num_classes=self.num_classes, in_channels=self.in_channels,
                            image_size=tuple(self.image_size))

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> ModelSpec:
        return cls(values["arch"], int(values["num_classes"]), int(values["in_channels"]), tuple(values["image_size"]))


def bits_label(quant: QuantConfig | None) -> str:
    """'w4a4' ('w32a32' for a float model)."""
    return "w32a32" if quant is None else f"w{quant.weight_bits}a{quant.act_bits}"


def weight_quantizer(quant: QuantConfig | None) -> str:
    """The weight quantizer's name, 'none' for full-precision weights."""
    return "none" if quant is None or quant.weight_bits == 32 else quant.weight_quantizer


def quant_view(quant: QuantConfig | None) -> dict[str, Any]:
    """Bit widths and weight quantizer as loaders check them (32 and 'none' for a float model)."""
    return {"weight_bits": quant.weight_bits if quant else 32, "act_bits": quant.act_bits if quant else 32,
            "weight_quantizer": weight_quantizer(quant)}


def describe(config: Mapping[str, Any]) -> dict[str, Any]:
    """The flat view of a checkpoint's config that loaders check expectations against."""
    model, quant = config["model"], config.get("quant")
    return {**model, "image_size": tuple(model["image_size"]),
            **quant_view(QuantConfig.from_dict(quant) if quant else None),
            "stage": config.get("stage"), "method": config.get("method")}


def convert(model: nn.Module, quant: QuantConfig | None) -> nn.Module:
    """Fake-quantize `model` in place to `quant` (None keeps it float)."""
    return model if quant is None else quantize_model(model, quant)


def build(spec: ModelSpec, quant: QuantConfig | None, device: torch.device) -> nn.Module:
    return convert(spec.build(), quant).to(device)


def checkpoint_config(spec: ModelSpec, quant: QuantConfig | None, **extra: Any) -> dict[str, Any]:
    return {"model": asdict(spec), "quant": quant.to_dict() if quant else None, **extra}


def load(path: Path, device: torch.device, expect: Mapping[str, Any] | None = None) -> tuple[nn.Module, dict]:
    """Rebuild the model a checkpoint was made with, load its weights, check `expect` first."""
    payload = checkpoint.load(path, expect, describe=describe)
    config = payload["config"]
    quant = QuantConfig.from_dict(config["quant"]) if config.get("quant") else None
    model = build(ModelSpec.from_dict(config["model"]), quant, device)
    model.load_state_dict(payload["model"])
    return model, payload


def describe_bits(config: Mapping[str, Any]) -> str:
    """'w8a8' for a stored checkpoint config."""
    view = describe(config)
    return f"w{view['weight_bits']}a{view['act_bits']}"
