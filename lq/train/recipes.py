"""The task-0 training stages of the paper as recipes: typed configs and the functions that run them.

A step (`lq.steps.*`) turns its parameters into one of these dataclasses once; from there on the
library reads no parameter keys. Each function builds the engine, the model and the task plans,
trains, and writes the stage's files.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lq.quant.config import QuantConfig
from lq.train.engine import Engine, TaskPlan
from lq.train.inq import Inq, InqSettings
from lq.train.plugin import Phase, Plugin
from lq.train.settings import Runtime, Schedule


@dataclass(frozen=True)
class Recipe:
    """What every training stage needs: its run name (stage and grid cell), how it trains, the
    architecture, the schedule of each task, and the parameters that identify it for resuming."""

    run: str
    runtime: Runtime
    arch: str
    schedule: Schedule
    identity: Mapping[str, Any] = field(default_factory=dict)
    cell: Mapping[str, str] = field(default_factory=dict)  # the grid cell (names the stage's outputs)

    @property
    def phases(self) -> tuple[Phase, ...]:
        return (Phase("train", self.schedule),)


@dataclass(frozen=True)
class QatRecipe(Recipe):
    quant: QuantConfig = field(default_factory=QuantConfig)
    inq: InqSettings | None = None  # set: INQ's incremental procedure instead of straight-through QAT

    def quantization_plugins(self) -> list[Plugin]:
        """The plugins the quantization procedure adds (INQ's portions), before the method's."""
        return [Inq(self.inq, self.runtime.seed)] if self.inq is not None else []


def pretrain(recipe: Recipe, *, store: Path, split: Path, out: Path, curve: Path) -> None:
    """The full-precision model on task 0 (SPEC 6.1)."""
    engine = Engine(recipe.run, recipe.runtime, store, identity=recipe.identity, inputs=[store, split])
    model = engine.new_model(engine.model_spec(recipe.arch), None, stage="pretrain")
    engine.train(model, [TaskPlan(0, engine.table(split / "train0.csv"), recipe.phases)])
    engine.finish(model, curve, out=out)


def qat(recipe: QatRecipe, *, store: Path, split: Path, init: Path, out: Path, curve: Path) -> None:
    """QAT on task 0 from a full-precision model (SPEC 6.2: w8a8), or INQ from it (SPEC 9)."""
    engine = Engine(recipe.run, recipe.runtime, store, identity=recipe.identity, inputs=[store, split, init])
    model = engine.model_from(init, engine.model_spec(recipe.arch), recipe.quant,
                              {"weight_bits": 32, "act_bits": 32}, stage="qat8")
    engine.train(model, [TaskPlan(0, engine.table(split / "train0.csv"), recipe.phases)], recipe.quantization_plugins())
    engine.finish(model, curve, out=out)
