"""How a stage trains (`Runtime`) and how one phase optimises (`Schedule`): plain typed settings."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Runtime:
    """How a stage trains, whatever it trains (params.yaml: `train.*`)."""

    device: str = "auto"
    deterministic: bool = False
    seed: int = 0
    batch_size: int = 32
    eval_batch_size: int = 100
    augment: bool = True
    hflip: bool = False
    compile: bool | str = False  # true | false | auto (lq.train.compiled.compiles)


@dataclass(frozen=True)
class Schedule:
    """One phase's optimisation settings: SGD with momentum, MultiStep learning-rate decay."""

    epochs: int
    lr: float
    milestones: tuple[int, ...]
    gamma: float
    momentum: float
    weight_decay: float
