"""The PTQ sweep: a pipeline checkpoint evaluated at every (weight, activation) bit pair (SPEC 11).

Each checkpoint is rebuilt from what it carries (`lq.train.spec`), taken to its float view
(`lq.quant.ptq.float_view`: an FP32 model itself; a QAT model without its rounding), calibrated
once on training images, and evaluated on test images at each pair; w32a32 is the float view
itself. Calibration reads only the training images of the checkpoint's task: train_0 for the
FP32 model, and for a lifelong model after task t the images a learner holds then,
train_t ∪ replay_0 ∪ … ∪ replay_{t−1}: a seeded sample of `calibration_images` of them. Test
images are read only by the evaluation. The sweep works on a copy: the checkpoint's weights are
hashed before and after, and a change stops the stage.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from lq import metrics, plots
from lq.atomic import write_text
from lq.errors import LqError
from lq.io import read_table, task_count, write_json
from lq.manifest import sha256
from lq.quant import ptq
from lq.tasks import training_pool
from lq.train import spec
from lq.train.data import Batches, ImageBank, load_bank
from lq.train.device import describe, resolve_device

log = logging.getLogger("lq")

FLOAT = 32


@dataclass(frozen=True)
class Settings:
    """What the sweep varies and how it calibrates; `seed` draws the calibration sample."""

    weight_bits: tuple[int, ...]
    act_bits: tuple[int, ...]
    weight_quantizer: str = "minmax"
    act_quantizer: str = "minmax"
    calibration_images: int = 512
    batch_size: int = 100
    device: str = "cpu"
    seed: int = 0

    def pairs(self) -> list[tuple[int, int]]:
        return [(w, a) for w in self.weight_bits for a in self.act_bits]


def pair_name(weight_bits: int, act_bits: int) -> str:
    return f"w{weight_bits}a{act_bits}"


@dataclass
class Swept:
    """One checkpoint's sweep: accuracy per pair and evaluation set, the calibrated ranges."""

    accuracy: dict[tuple[int, int], list[float]]  # (w, a) -> accuracy on each evaluation set
    native: list[float]                             # the checkpoint as trained, at its own bits
    ranges: dict[str, tuple[float, float]]          # activation point -> calibrated (min, max)
    digest: str                                     # the checkpoint model's weights (unchanged)


def calibration_rows(bank: ImageBank, table: pd.DataFrame, count: int, seed: Sequence[int]) -> torch.Tensor:
    """Store rows of a seeded sample of `count` images of a training table (all if fewer);
    a table naming a non-training image is refused."""
    if not table["image"].astype(str).str.startswith("train/").all():
        bad = table.loc[~table["image"].astype(str).str.startswith("train/"), "image"].iloc[0]
        raise LqError(f"PTQ calibration may read training images only, got {bad!r}")
    rows = bank.rows(table, "calibration pool")
    if count < len(rows):
        pick = np.sort(np.random.default_rng(list(seed)).choice(len(rows), size=count, replace=False))
        rows = rows[torch.from_numpy(pick).to(rows.device)]
    return rows


def sweep_model(model: torch.nn.Module, calibration: Batches, evaluations: Sequence[Batches],
                settings: Settings) -> Swept:
    """Evaluate `model` (not modified) at every pair of `settings` on each evaluation set."""
    from lq.evaluation import accuracy  # the one module that reads test data

    before = ptq.weights_digest(model)
    native = [accuracy(model, batches)[0] for batches in evaluations]
    prepared = ptq.prepare(ptq.float_view(model), settings.weight_quantizer, settings.act_quantizer)
    ranges = ptq.calibrate(prepared, calibration)
    results = {}
    for w, a in settings.pairs():
        ptq.set_bits(prepared, w, a)
        results[(w, a)] = [accuracy(prepared, batches)[0] for batches in evaluations]
    after = ptq.weights_digest(model)
    if after != before:
        raise LqError(f"the PTQ sweep changed the model's weights (sha256 {before[:12]} -> {after[:12]}); this is a bug")
    return Swept(results, native, ranges, before)


def _tests(bank: ImageBank, split: Path, tasks: range, batch_size: int) -> list[Batches]:
    num_classes = len(bank.classes)
    return [Batches(bank, bank.rows(read_table(split / f"test{j}.csv", num_classes), f"test{j}.csv"), batch_size,
                    shuffle=False) for j in tasks]


def _calibration(bank: ImageBank, table: pd.DataFrame, settings: Settings, task: int) -> Batches:
    rows = calibration_rows(bank, table, settings.calibration_images, (settings.seed, task))
    return Batches(bank, rows, settings.batch_size, shuffle=False)


def _header(path: Path, payload: dict, settings: Settings, stage: str, calibrated_on: list[str]) -> dict[str, Any]:
    config = payload["config"]
    quant = config.get("quant")
    return {
        "checkpoint": str(path), "checkpoint_sha256": sha256(path), "stage": config.get("stage", stage),
        "trained_bits": spec.describe_bits(config),
        "float": "the checkpoint itself (FP32)" if not quant else
        "the checkpoint's weights and activation clips without rounding (lq.quant.ptq.float_view)",
        "weight_quantizer": settings.weight_quantizer, "act_quantizer": settings.act_quantizer,
        "calibration": {"images": settings.calibration_images, "seed": settings.seed, "from": calibrated_on},
        "weight_bits": list(settings.weight_bits), "act_bits": list(settings.act_bits),
    }


def sweep_pretrain(model_path: Path, *, store: Path, split: Path, settings: Settings) -> dict[str, Any]:
    """The FP32 model's accuracy on task 0's test split at every pair (calibrated on train_0)."""
    where = resolve_device(settings.device)
    log.info("device %s", describe(where))
    bank = load_bank(store, where)
    model, payload = spec.load(model_path, where, {"num_classes": len(bank.classes)})
    train0 = read_table(split / "train0.csv", len(bank.classes))
    swept = sweep_model(model, _calibration(bank, train0, settings, 0), _tests(bank, split, range(1), settings.batch_size),
                        settings)
    summary = _header(model_path, payload, settings, "pretrain", ["train0.csv"])
    summary.update({
        "weights_sha256": swept.digest,
        "native_accuracy": swept.native[0],
        "float_accuracy": swept.accuracy.get((FLOAT, FLOAT), [None])[0],
        "accuracy": {pair_name(w, a): acc[0] for (w, a), acc in swept.accuracy.items()},
        "activation_ranges": {n: [round(lo, 6), round(hi, 6)] for n, (lo, hi) in swept.ranges.items()},
    })
    for (w, a), acc in swept.accuracy.items():
        log.info("%s: %.2f", pair_name(w, a), 100 * acc[0])
    return summary


def sweep_lifelong(models: Path, *, store: Path, split: Path, replay: Path, settings: Settings) -> dict[str, Any]:
    """Every task checkpoint of a lifelong cell at every pair: the accuracy matrix R per pair, so
    its final row, average accuracy and forgetting (lq.metrics) at each pair."""
    where = resolve_device(settings.device)
    log.info("device %s", describe(where))
    bank = load_bank(store, where)
    num_tasks, num_classes = task_count(split), len(bank.classes)
    tests = _tests(bank, split, range(num_tasks), settings.batch_size)
    trains = [read_table(split / f"train{t}.csv", num_classes) for t in range(num_tasks)]
    replays = [read_table(replay / f"replay{t}.csv", num_classes) for t in range(num_tasks)]
    R = {pair: np.zeros((num_tasks, num_tasks)) for pair in settings.pairs()}
    native = np.zeros((num_tasks, num_tasks))
    digests, ranges = [], {}
    for t in range(num_tasks):
        path = models / f"task{t}.pt"
        model, payload = spec.load(path, where, {"num_classes": num_classes})
        pool = training_pool(trains[t], replays[:t])
        swept = sweep_model(model, _calibration(bank, pool, settings, t), tests, settings)
        native[t] = swept.native
        for pair, row in swept.accuracy.items():
            R[pair][t] = row
        digests.append(swept.digest)
        ranges = swept.ranges
        log.info("task %d swept (%d pairs)", t, len(swept.accuracy))
    summary = _header(models / f"task{num_tasks - 1}.pt", payload, settings, "lifelong",
                      [f"train{t}.csv + replay0..{t - 1}.csv" if t else "train0.csv" for t in range(num_tasks)])
    summary.update({
        "method": payload["config"].get("method"),
        "num_tasks": num_tasks,
        "weights_sha256": digests,
        "native": _row_metrics(native),
        "pairs": {pair_name(w, a): _row_metrics(R[(w, a)]) for (w, a) in settings.pairs()},
        "activation_ranges": {n: [round(lo, 6), round(hi, 6)] for n, (lo, hi) in ranges.items()},
    })
    if (FLOAT, FLOAT) in R:
        summary["float"] = {"description": summary["float"], **_row_metrics(R[(FLOAT, FLOAT)])}
    for name, row in summary["pairs"].items():
        log.info("%s: average accuracy %.2f, forgetting %.2f", name, 100 * row["average_accuracy"],
                 100 * row["forgetting"])
    return summary


def _row_metrics(R: np.ndarray) -> dict[str, Any]:
    return {"average_accuracy": round(metrics.average_accuracy(R), 6),
            "forgetting": round(metrics.forgetting(R).mean, 6),
            "final_row": [round(float(a), 6) for a in R[-1]],
            "accuracy_matrix": R.round(6).tolist()}


# --- outputs ----------------------------------------------------------------------------------------

def _grid(summary: dict[str, Any], value) -> np.ndarray:
    return np.array([[value(pair_name(w, a)) for a in summary["act_bits"]] for w in summary["weight_bits"]])


def write_outputs(summary: dict[str, Any], *, grid: Path, table: Path, heatmap: Path) -> None:
    """The JSON (a DVC metric), a long CSV (one row per pair, for `dvc plots`) and the heatmap PNG."""
    write_json(grid, summary)
    lifelong = "pairs" in summary
    rows = []
    for w in summary["weight_bits"]:
        for a in summary["act_bits"]:
            name = pair_name(w, a)
            row: dict[str, Any] = {"pair": name, "weight_bits": w, "act_bits": a}
            if lifelong:
                cell = summary["pairs"][name]
                row.update({"average_accuracy": cell["average_accuracy"], "forgetting": cell["forgetting"]})
                row.update({f"final_task{j}": acc for j, acc in enumerate(cell["final_row"])})
            else:
                row["accuracy"] = summary["accuracy"][name]
            rows.append(row)
    buffer = io.StringIO()
    pd.DataFrame(rows).to_csv(buffer, index=False, lineterminator="\n")
    write_text(table, buffer.getvalue())
    if lifelong:
        panels = [("average accuracy (%)", _grid(summary, lambda n: summary["pairs"][n]["average_accuracy"])),
                  ("forgetting (%)", _grid(summary, lambda n: summary["pairs"][n]["forgetting"]))]
        title = f"PTQ of {summary.get('method')} {summary['trained_bits']}"
    else:
        panels = [("accuracy on task 0 (%)", _grid(summary, lambda n: summary["accuracy"][n]))]
        title = summary.get("title") or f"PTQ of the {summary['trained_bits']} {summary['stage']} model"
    heatmap_figure(heatmap, panels, summary["weight_bits"], summary["act_bits"], title)


def heatmap_figure(path: Path, panels: Sequence[tuple[str, np.ndarray]], weight_bits: Sequence[int],
                   act_bits: Sequence[int], title: str) -> None:
    """One heatmap per panel: rows weight bits, columns activation bits, values in % in each cell."""
    plt = plots._pyplot()
    fig, axes = plt.subplots(1, len(panels), figsize=(len(panels) * (1.6 + 0.75 * len(act_bits)),
                                                      1.4 + 0.5 * len(weight_bits)), dpi=100, squeeze=False)
    for ax, (label, values) in zip(axes.flat, panels):
        top = max(1.0, float(np.nanmax(values))) if "forgetting" not in label else max(float(np.nanmax(values)), 1e-9)
        image = ax.imshow(values, vmin=0, vmax=top, cmap="viridis" if "forgetting" not in label else "magma_r",
                          aspect="auto")
        for (i, j), v in np.ndenumerate(values):
            ax.text(j, i, f"{100 * v:.1f}", ha="center", va="center", fontsize=7,
                    color="white" if v < 0.6 * top else "black")
        ax.set_xticks(range(len(act_bits)), [f"a{a}" for a in act_bits])
        ax.set_yticks(range(len(weight_bits)), [f"w{w}" for w in weight_bits])
        ax.set_xlabel("activation bits")
        ax.set_ylabel("weight bits")
        ax.set_title(label, fontsize=9)
        fig.colorbar(image, ax=ax, fraction=0.046)
    fig.suptitle(title, fontsize=9)
    plots.save(fig, path)
