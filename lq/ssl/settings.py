"""The typed settings of self-supervised pretraining and its linear evaluation (no torch here:
`lq.steps.typed` builds them for every step that needs them)."""

from __future__ import annotations

from dataclasses import dataclass, field

from lq.train.settings import Runtime, Schedule


@dataclass(frozen=True)
class ViewSettings:
    """How the two views of an image differ (`lq.ssl.views`)."""

    crop: tuple[float, float] = (0.5, 1.0)
    rotate: float = 10.0
    jitter: float = 0.4
    grayscale: float = 0.0
    noise: float = 0.05


@dataclass(frozen=True)
class SslSettings:
    """One method's block of `ssl.methods` (scratch: the method name alone)."""

    method: str
    epochs: int = 1
    lr: float = 0.05
    batch_size: int = 128
    weight_decay: float = 0.0005
    dim: int = 256
    pred_dim: int = 64
    collapse_std: float = 0.1
    views: ViewSettings = field(default_factory=ViewSettings)
    weight_bits: tuple[int, int] = (2, 8)
    act_bits: tuple[int, int] = (4, 8)
    stem_bits: int = 8


@dataclass(frozen=True)
class SslConfig:
    """Everything a self-supervised run reads: the method's settings, how it trains (runtime:
    the method's batch size, train.device, ...) and its phase (SGD with train.momentum)."""

    settings: SslSettings
    runtime: Runtime
    schedule: Schedule


@dataclass(frozen=True)
class LinearSettings:
    """`ssl.linear`: the head of the linear evaluation (`lq.ssl.linear`)."""

    epochs: int = 100
    lr: float = 0.1
    batch_size: int = 256
    weight_decay: float = 0.0
    momentum: float = 0.9
    stem_bits: int = 8
