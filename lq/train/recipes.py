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

from torch import nn

from lq.quant.config import QuantConfig
from lq.train import spec
from lq.train.coreset import Coreset, CoresetSettings
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
    label_noise: float = 0.0  # data.label_noise: share of training labels flipped, seeded by data_seed
    data_seed: int = 0

    def engine(self, store: Path, inputs: list[Path]) -> Engine:
        engine = Engine(self.run, self.runtime, store, identity=self.identity, inputs=inputs)
        engine.add_label_noise(self.label_noise, self.data_seed)
        return engine

    @property
    def phases(self) -> tuple[Phase, ...]:
        return (Phase("train", self.schedule),)


@dataclass(frozen=True)
class QatRecipe(Recipe):
    quant: QuantConfig = field(default_factory=QuantConfig)
    inq: InqSettings | None = None  # set: INQ's incremental procedure instead of straight-through QAT

    coreset: CoresetSettings | None = None  # active: ACS or a control trains each epoch on a subset

    def quantization_plugins(self) -> list[Plugin]:
        """The plugins the quantization procedure adds (INQ's portions), before the method's."""
        return [Inq(self.inq, self.runtime.seed)] if self.inq is not None else []

    def coreset_plugins(self, engine: Engine, reference=None) -> list[Plugin]:
        """The coreset selector (SPEC 10), first of all plugins; none for `full` (the default)."""
        if self.coreset is None or not self.coreset.active:
            return []
        return [Coreset(self.coreset, seed=self.runtime.seed, reference=reference, batches=engine.eval_batches_of,
                        labels=lambda rows: engine.bank.training_labels[rows], flipped=engine.flipped)]


def pretrain(recipe: Recipe, *, store: Path, split: Path, out: Path, curve: Path, start: nn.Module | None = None,
             record: Mapping[str, Any] | None = None) -> None:
    """The full-precision model on task 0 (SPEC 6.1). `start`: a trained backbone of the same
    architecture whose weights, all but the classifier head, replace the seeded initialisation
    (pretrain.init, `lq.train.ssl.pretrain`); `record` goes into the checkpoint's config."""
    engine = recipe.engine(store, [store, split])
    model = engine.new_model(engine.model_spec(recipe.arch), None, stage="pretrain", **(record or {}))
    if start is not None:
        load_backbone(model, start)
    engine.train(model, [TaskPlan(0, engine.table(split / "train0.csv"), recipe.phases)])
    engine.finish(model, curve, out=out)


def qat(recipe: QatRecipe, *, store: Path, split: Path, init: Path, out: Path, curve: Path,
        timing: Path | None = None) -> None:
    """QAT on task 0 from a full-precision model (SPEC 6.2: w8a8), or INQ from it (SPEC 9)."""
    engine = recipe.engine(store, [store, split, init])
    model = engine.model_from(init, engine.model_spec(recipe.arch), recipe.quant,
                              {"weight_bits": 32, "act_bits": 32}, stage="qat8")
    # DS compares with the FP32 model this stage starts from (SPEC 10; the release's pretrained model).
    reference = spec.load(init, engine.device)[0].eval() if recipe.coreset and recipe.coreset.active else None
    plugins = [*recipe.coreset_plugins(engine, reference), *recipe.quantization_plugins()]
    engine.train(model, [TaskPlan(0, engine.table(split / "train0.csv"), recipe.phases)], plugins)
    engine.finish(model, curve, out=out, timing=timing, record=coreset_record(recipe, plugins))


def load_backbone(model: nn.Module, backbone: nn.Module) -> None:
    """Copy every weight of `backbone` into `model` but the classifier head (`head.*`)."""
    state = {k: v for k, v in backbone.state_dict().items() if not k.startswith("head.")}
    if set(state) != {k for k in model.state_dict() if not k.startswith("head.")}:
        raise RuntimeError("the backbone's weights do not match the model's")  # one architecture: a bug
    model.load_state_dict({**model.state_dict(), **state})


def coreset_record(recipe: QatRecipe, plugins: list[Plugin]) -> dict[str, Any]:
    """What the timing file says about the selector and its rounds (selected, flipped per round)."""
    s = recipe.coreset or CoresetSettings()
    record: dict[str, Any] = {"coreset": s.selector, "fraction": 1.0 if not s.active else s.fraction,
                              "label_noise": recipe.label_noise}
    for plugin in plugins:
        if isinstance(plugin, Coreset):
            record.update(every=s.every, schedule=s.schedule, rounds=plugin.rounds)
    return record
