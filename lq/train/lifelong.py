"""The lifelong stage as a recipe: k-bit QAT over the task stream with one method (SPEC 6.3, 7)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from lq.io import read_json, task_count
from lq.methods import create_method
from lq.train.engine import TaskPlan
from lq.train.recipes import QatRecipe, coreset_record
from lq.train.spec import bits_label


@dataclass(frozen=True)
class LifelongRecipe(QatRecipe):
    method: str = "finetune"
    method_settings: Mapping[str, Any] = field(default_factory=dict)
    replay_in_pool: bool = True
    act_range: float = 2.0


def stored_images(pool: pd.DataFrame, train: pd.DataFrame, read_by_method: list[pd.DataFrame]) -> int:
    """Images of earlier tasks a task needs kept in memory: its pool's and those the method reads
    (replay for importance), less the ones the current task's stream provides anyway."""
    kept = set(pool["image"]).union(*(set(r["image"]) for r in read_by_method))
    return len(kept - set(train["image"]))


def class_weights(path: Path, num_classes: int) -> torch.Tensor:
    weights = read_json(path)
    return torch.tensor([float(weights[str(c)]) for c in range(num_classes)])


def run(recipe: LifelongRecipe, *, store: Path, split: Path, replay: Path, counts: Path, init: Path,
        out: Path, curve: Path, timing: Path | None = None) -> None:
    """k-bit lifelong QAT over tasks 0..T-1 in order (SPEC 6.3 and 7).

    Task 0 starts from the `init` model, task t from the model after task t-1. The pool of task t
    is the method's (`Method.pool`): train_t plus the replay sets of earlier tasks for the paper's
    methods. The stage never reads a test split: evaluation is its own stage.
    """
    engine = recipe.engine(store, [store, split, replay, counts, init])
    method = create_method(recipe.method, recipe.method_settings)
    model = engine.model_from(init, engine.model_spec(recipe.arch), recipe.quant, stage="lifelong", method=recipe.method)
    num_tasks, num_classes = task_count(split), len(engine.bank.classes)
    trains = [engine.table(split / f"train{t}.csv") for t in range(num_tasks)]
    replays = [engine.table(replay / f"replay{t}.csv") for t in range(num_tasks)]
    plans, memory = [], []
    for t in range(num_tasks):
        pool = method.pool(trains[t], replays[:t], trains[:t], recipe.replay_in_pool)
        memory.append(stored_images(pool, trains[t], replays[:t] if method.uses_replay else []))
        plans.append(TaskPlan(t, pool, recipe.phases, replay=replays[:t], record={"memory_images": list(memory)},
                              class_weights=class_weights(counts / f"reweight{t}.json", num_classes)))
    settings = {"seed": recipe.runtime.seed, "act_range": recipe.act_range, "act_bits": recipe.quant.act_bits,
                "bits": bits_label(recipe.quant)}
    # INQ (if any) first: its last portion quantizes the model before the method's after_task
    # (SI and RWalk close their path integrals there), so every method sees the quantized model.
    # The coreset selector first (it only chooses rows); DS compares with the model each task
    # starts from (reference None): no full-precision model knows a new task's classes.
    plugins = [*recipe.coreset_plugins(engine), *recipe.quantization_plugins(), method]
    engine.train(model, plans, plugins, settings)
    engine.finish(model, curve, task_dir=out, tasks=num_tasks, made_by=("lifelong", recipe.cell), timing=timing,
                  record=coreset_record(recipe, plugins))
