"""Self-supervised pretraining as a recipe on the engine: stage `ssl`, and `pretrain.init`.

The backbone (the pipeline's model, e.g. ResNet-20) is trained on the images of train_0 (their
labels are never used) with SimSiam or SSQL (`lq.ssl`): the engine runs the task, its epochs and
the resume state; the plugin `lq.ssl.plugin.SslObjective` supplies the two-view loss; SGD with
momentum and the release's cosine decay to 0 (per epoch) is the phase's optimisation. `scratch`
trains nothing: its backbone is the seeded random initialisation, a baseline for the linear
evaluation and the supervised model's default start.

Training on train_0 only keeps the lifelong setting honest: the backbone that `pretrain.init`
starts the supervised chain from has seen only the images a learner holds at task 0, and the
`ssl` stage trains exactly that backbone (same settings, seed, views and draws: identical weights
on CPU), so its linear evaluation describes the start the chain gets.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lq.quant.ptq import weights_digest
from lq.ssl import model as ssl_model
from lq.ssl.plugin import BitDraws, SslObjective
from lq.ssl.settings import SslConfig, SslSettings
from lq.ssl.views import Views
from lq.train import recipes
from lq.train.engine import Engine, TaskPlan
from lq.train.plugin import Optimization, Phase, Plugin, sgd
from lq.train.recipes import Recipe

CURVE_COLUMNS = ["step", "task", "epoch", "loss", "embedding_std", "lr"]


@dataclass(frozen=True)
class SslRecipe(Recipe):
    settings: SslSettings = field(default_factory=lambda: SslSettings("scratch"))


def recipe(run: str, arch: str, config: SslConfig) -> SslRecipe:
    """The recipe of one self-supervised run; it resumes only into a run of the same settings."""
    made = SslRecipe(run, config.runtime, arch, config.schedule, settings=config.settings)
    return dataclasses.replace(made, identity={"arch": arch, "runtime": asdict(config.runtime),
                                               "schedule": asdict(config.schedule), "ssl": asdict(config.settings)})


class Cosine(Plugin):
    """The phase's optimisation: SGD with momentum, lr · ½(1 + cos(π · epoch / epochs)) per epoch."""

    name = "cosine"

    def before_phase(self, ctx, phase: Phase, index: int) -> Optimization:
        s = phase.schedule
        optimizer = sgd(ctx.model, s)
        return Optimization(optimizer, torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=s.epochs))


@dataclass
class Trained:
    """A finished self-supervised run: its engine (resume state still there), the backbone, the plugin."""

    engine: Engine
    backbone: nn.Module
    objective: SslObjective | None

    @property
    def record(self) -> dict[str, Any]:
        """What the timing file says about the run: the method and how often each bit pair was drawn."""
        s = self.objective
        return {"method": "scratch" if s is None else s.method,
                **({"bit_draws": s.draws.counts()} if s is not None and s.draws is not None else {})}

    def close(self) -> None:
        """Drop the resume state (the caller wrote what it needed)."""
        self.engine.board.close()
        self.engine.resume.clear()


def train_backbone(recipe: SslRecipe, *, store: Path, split: Path, extra_plugins: Sequence[Plugin] = ()) -> Trained:
    """Train (or, for scratch, only initialise) the backbone on train_0's images; resumable."""
    s = recipe.settings
    engine = recipe.engine(store, [store, split])
    engine.view_augment = Views(s.views, hflip=recipe.runtime.hflip)
    engine.curve_columns = CURVE_COLUMNS
    backbone = engine.new_model(engine.model_spec(recipe.arch), None, stage="ssl", ssl=s.method)
    if s.method == "scratch":
        return Trained(engine, backbone, None)
    model = ssl_model.Siamese(backbone, s.dim, s.pred_dim).to(engine.device)
    draws = None
    if s.method == "ssql":
        ssl_model.make_switchable(model, s.stem_bits)
        draws = BitDraws(s.weight_bits, s.act_bits, seed=recipe.runtime.seed)
    objective = SslObjective(s.method, dim=s.dim, collapse_std=s.collapse_std, draws=draws)
    plan = TaskPlan(0, engine.table(split / "train0.csv"), recipe.phases)
    engine.train(model, [plan], [*extra_plugins, Cosine(), objective])
    return Trained(engine, model.backbone, objective)


def ssl(recipe: SslRecipe, *, store: Path, split: Path, out: Path, curve: Path, timing: Path) -> None:
    """Stage `ssl`: the backbone checkpoint (a plain model of the pipeline's architecture whose
    classifier head is the untrained seeded one), its curve and timing."""
    trained = train_backbone(recipe, store=store, split=split)
    trained.engine.finish(trained.backbone, curve, out=out, timing=timing,
                          record={**trained.record, "weights_sha256": weights_digest(trained.backbone)})


def pretrain(recipe: Recipe, init: SslRecipe, *, store: Path, split: Path, out: Path, curve: Path) -> None:
    """Stage `pretrain` with pretrain.init = simsiam or ssql: train that backbone on train_0 (as the
    `ssl` stage does, resumable under its own run name), then the supervised FP32 model from it
    (`lq.train.recipes.pretrain`); the checkpoint's config records the start and its weights' hash."""
    start = train_backbone(init, store=store, split=split)
    recipes.pretrain(recipe, store=store, split=split, out=out, curve=curve, start=start.backbone,
                     record={"init": init.settings.method, "init_sha256": weights_digest(start.backbone)})
    start.close()
