"""The lifelong stage as a recipe: k-bit QAT over the task stream with one method (SPEC 6.3, 7)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from lq.io import read_json, task_count, write_json, write_table
from lq.manifest import output_dir
from lq.tasks import ball_weights, class_counts
from lq.methods import create_method
from lq.train.engine import TaskPlan
from lq.train.recipes import QatRecipe, coreset_record
from lq.train.replay_selection import ScoredReplay
from lq.train.spec import bits_label


@dataclass(frozen=True)
class LifelongRecipe(QatRecipe):
    method: str = "finetune"
    method_settings: Mapping[str, Any] = field(default_factory=dict)
    replay_in_pool: bool = True
    act_range: float = 2.0
    replay_selection: str = "random"  # random: the replay stage's sets; else chosen by score here
    replay_rate: float = 0.2


def stored_images(pool: pd.DataFrame, train: pd.DataFrame, read_by_method: list[pd.DataFrame]) -> int:
    """Images of earlier tasks a task needs kept in memory: its pool's and those the method reads
    (replay for importance), less the ones the current task's stream provides anyway."""
    kept = set(pool["image"]).union(*(set(r["image"]) for r in read_by_method))
    return len(kept - set(train["image"]))


def class_weights(path: Path, num_classes: int) -> torch.Tensor:
    weights = read_json(path)
    return torch.tensor([float(weights[str(c)]) for c in range(num_classes)])


def run(recipe: LifelongRecipe, *, store: Path, split: Path, replay: Path, counts: Path, init: Path,
        out: Path, curve: Path, timing: Path | None = None, replay_used: Path | None = None) -> None:
    """k-bit lifelong QAT over tasks 0..T-1 in order (SPEC 6.3 and 7).

    Task 0 starts from the `init` model, task t from the model after task t-1. The pool of task t
    is the method's (`Method.pool`): train_t plus the replay sets of earlier tasks for the paper's
    methods. The stage never reads a test split: evaluation is its own stage.

    Replay sets come from the `replay` stage (random, the default) or, with a scored
    `replay_selection`, are chosen here after each task by the model just trained
    (`lq.train.replay_selection`); then the BaLL weights are counted here from the pools those sets
    make, not read from the `count` stage. `replay_used` receives the sets and weights the run used.
    """
    engine = recipe.engine(store, [store, split, replay, counts, init])
    method = create_method(recipe.method, recipe.method_settings)
    model = engine.model_from(init, engine.model_spec(recipe.arch), recipe.quant, stage="lifelong", method=recipe.method)
    num_tasks, num_classes = task_count(split), len(engine.bank.classes)
    trains = [engine.table(split / f"train{t}.csv") for t in range(num_tasks)]
    scored = None
    if recipe.replay_selection != "random":
        scored = ScoredReplay(recipe.replay_selection, recipe.replay_rate, trains, rows=engine.bank.rows,
                              labels=lambda rows: engine.bank.training_labels[rows], batches=engine.eval_batches_of)
        replays: list[pd.DataFrame] = []  # filled as tasks finish
    else:
        replays = [engine.table(replay / f"replay{t}.csv") for t in range(num_tasks)]
    memory: list[int] = []
    weights: list[torch.Tensor] = []

    def plans():
        # A generator: with scored replay, task t's plan is made only after task t-1 chose its set
        # (the engine asks for the next plan after the previous task's after_task, or after
        # loading a finished task's checkpoint with the plugin's choices).
        for t in range(num_tasks):
            if scored is not None:
                replays[:] = [scored.chosen(k) for k in range(t)]
            pool = method.pool(trains[t], replays[:t], trains[:t], recipe.replay_in_pool)
            memory.append(stored_images(pool, trains[t], replays[:t] if method.uses_replay else []))
            if scored is None:
                weights.append(class_weights(counts / f"reweight{t}.json", num_classes))
            else:
                counted = ball_weights(class_counts(pool["label"]), num_classes)
                weights.append(torch.tensor([float(round(counted[c], 10)) for c in range(num_classes)]))
            yield TaskPlan(t, pool, recipe.phases, replay=replays[:t], record={"memory_images": list(memory)},
                           class_weights=weights[t])

    settings = {"seed": recipe.runtime.seed, "act_range": recipe.act_range, "act_bits": recipe.quant.act_bits,
                "bits": bits_label(recipe.quant)}
    # The coreset selector first (it only chooses rows); DS compares with the model each task
    # starts from (reference None): no full-precision model knows a new task's classes.
    # INQ (if any) before the method: its last portion quantizes the model before the method's
    # after_task (SI and RWalk close their path integrals there), so every method sees the
    # quantized model; the scored replay last, so it scores that model too.
    plugins = [*recipe.coreset_plugins(engine), *recipe.quantization_plugins(), method,
               *([scored] if scored is not None else [])]
    planned = sum(phase.schedule.epochs for phase in recipe.phases)
    engine.train(model, plans(), plugins, settings, task_epochs={t: planned for t in range(num_tasks)})
    if replay_used is not None and engine.world.is_main:
        sets = [scored.chosen(t) for t in range(num_tasks)] if scored is not None else replays
        with output_dir(replay_used, "lifelong", recipe.cell) as tmp:
            for t in range(num_tasks):
                write_table(tmp / f"replay{t}.csv", sets[t])
                write_json(tmp / f"reweight{t}.json", {str(c): float(w) for c, w in enumerate(weights[t].tolist())})
    record = {**coreset_record(recipe, plugins), "replay_selection": recipe.replay_selection}
    engine.finish(model, curve, task_dir=out, tasks=num_tasks, made_by=("lifelong", recipe.cell), timing=timing,
                  record=record)
