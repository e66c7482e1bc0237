"""Model registry: `@register_model` entry points and `create_model(name, ...)`.

A name-to-function table replaces if/elif chains and string-built import paths, and lets the
tests run over every registered model. Entry points build float models only; quantization is a
later module swap (`lq.quant.convert.quantize_model`).
"""

from __future__ import annotations

import inspect
from typing import Any, Callable, TypeVar

from torch import nn

from lq.errors import LqError

ModelFn = Callable[..., nn.Module]
M = TypeVar("M", bound=nn.Module)

_MODELS: dict[str, ModelFn] = {}


def register_model(fn: ModelFn) -> ModelFn:
    """Register an entry point under its function name (a decorator, as in timm)."""
    name = fn.__name__
    if name in _MODELS and _MODELS[name] is not fn:
        raise ValueError(f"model {name!r} is registered twice")
    _MODELS[name] = fn
    return fn


def list_models() -> list[str]:
    """Names of all registered models, sorted."""
    return sorted(_MODELS)


def is_model(name: str) -> bool:
    return name in _MODELS


def create_model(
    name: str,
    *,
    num_classes: int,
    in_channels: int,
    image_size: int | tuple[int, int],
    **kwargs: Any,
) -> nn.Module:
    """Build the float model `name` for a dataset with the given classes, channels and size.

    Extra keyword arguments go to the model family (e.g. `width_mult` for MobileNetV2).
    The returned model carries `model_cfg`, the exact arguments it was made with, so that a
    checkpoint can store them and a loader can rebuild and check the same model.
    """
    if name not in _MODELS:
        known = ", ".join(list_models()) or "(none)"
        raise LqError(f"unknown model {name!r}; registered models: {known}")
    model = _MODELS[name](
        num_classes=num_classes, in_channels=in_channels, image_size=image_size, **kwargs
    )
    size = tuple(image_size) if isinstance(image_size, (tuple, list)) else image_size
    model.model_cfg = dict(
        name=name, num_classes=num_classes, in_channels=in_channels, image_size=size, **kwargs
    )
    return model


def build_model(cls: type[M], model_name: str, **kwargs: Any) -> M:
    """Instantiate `cls`, turning unknown keyword arguments into an `LqError`.

    Without this a typo in a config key would surface as a bare TypeError from `__init__`.
    """
    params = inspect.signature(cls.__init__).parameters
    accepted = [p for p in params if p != "self"]
    unknown = sorted(set(kwargs) - set(accepted))
    if unknown:
        raise LqError(
            f"model {model_name!r} got unknown argument(s) {unknown}; "
            f"accepted: {', '.join(accepted)}"
        )
    return cls(**kwargs)


def to_hw(image_size: int | tuple[int, int] | list[int]) -> tuple[int, int]:
    """Normalise an image size given as `s` or `(h, w)` to `(h, w)`."""
    if isinstance(image_size, int) and not isinstance(image_size, bool):
        return image_size, image_size
    if (
        isinstance(image_size, (tuple, list))
        and len(image_size) == 2
        and all(isinstance(s, int) and not isinstance(s, bool) for s in image_size)
    ):
        return int(image_size[0]), int(image_size[1])
    raise LqError(f"image_size must be an int or (height, width), got {image_size!r}")


def check_dims(
    model_name: str,
    *,
    num_classes: int,
    in_channels: int,
    image_size: int | tuple[int, int],
    min_size: int,
) -> tuple[int, int]:
    """Validate the dataset-dependent arguments every model takes; return `(h, w)`.

    `min_size` is the smallest side the model's downsampling can take while keeping each
    stride-2 stage meaningful (2 ** number of stride-2 stages).
    """
    if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 1:
        raise LqError(f"{model_name}: num_classes must be an int >= 1, got {num_classes!r}")
    if not isinstance(in_channels, int) or isinstance(in_channels, bool) or in_channels < 1:
        raise LqError(f"{model_name}: in_channels must be an int >= 1, got {in_channels!r}")
    h, w = to_hw(image_size)
    if min(h, w) < min_size:
        raise LqError(
            f"{model_name}: image_size {image_size!r} is too small; its stride-2 stages need "
            f"at least {min_size}x{min_size} pixels"
        )
    return h, w
