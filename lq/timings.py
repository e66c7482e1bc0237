"""The time side of the comparison (issue 13): seconds, images and shares per run, over seeds.

Every `qat8` and `lifelong` run writes a timing file (`timings/...json`, lq.train.engine): the
seconds of its training loops and of coreset selection, the images it trained on (`images_seen`)
and those a full-data run would have trained on (`pool_images`: the pool's size summed over the
epochs), the coreset settings and a log of the selection rounds. Seconds differ between runs, so
this table is written beside `results/summary.csv`, never into it: the summary and `metrics/` stay
byte-for-byte reproducible.

Against full-data training, per run:
- `image_share` = images_seen / pool_images, measured (deterministic);
- `model_share` = (images_seen + passes/3 · scored) / pool_images, the time the cost model of SPEC 10
  expects: a training step ≈ 3 forward passes, each round scores the `scored` pool images with
  `passes` forward passes (SCORING_PASSES); f + 2/(3R) for `acs` and `ds` when R divides the epochs.
- `time_share` = seconds / seconds of the full-data row of the same stage, method, bits and
  quantizer, measured: the grid puts both side by side when its quantizer axis holds a coreset
  value beside a full-data one (`[proxq, proxq+acs10]`, lq.grid); without one it is empty (the
  full-data run is then another experiment or workspace: its `results/timings.csv`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from lq import grid
from lq.errors import LqError
from lq.io import read_json

# Forward passes over the pool per selection round: EVS needs the trained model's softmax, DS and
# ACS also the reference's; `random` scores nothing (lq/train/coreset.py).
SCORING_PASSES = {"full": 0, "random": 0, "evs": 1, "ds": 2, "acs": 2}
# Seconds-like columns: mean and std over seeds.
SECONDS = ("train_seconds", "selection_seconds", "seconds")
COLUMNS = ["stage", "method", "bits", "quantizer", "seeds", "coreset", "fraction", "every", "label_noise",
           "accuracy_mean", "accuracy_std", *(f"{c}_{s}" for c in SECONDS for s in ("mean", "std")),
           "images_seen", "pool_images", "image_share", "model_share", "flipped_share", "time_share"]


def read_timings(records: Sequence[Mapping[str, Any]], lifelong: str, qat8: str) -> tuple[list[dict], list[dict]]:
    """The timing files of every run in `records` (their metrics: the grid cells, in order):
    (qat8's, one per seed and quantizer; lifelong's, one per cell, with the cell's average
    accuracy). A missing file is an error naming it."""
    def read(pattern: str, cell: Mapping[str, Any]) -> dict:
        path = Path(pattern.format(**cell))
        if not path.exists():
            raise LqError(f"{path}: the timing file of run {grid.cell_name(cell)} is missing; run its "
                          f"{'qat8' if pattern == qat8 else 'lifelong'} stage first")
        return read_json(path)

    runs, firsts = [], {}
    for record in records:
        cell = {axis: record[axis] for axis in grid.LIFELONG_AXES}
        runs.append({**read(lifelong, cell), **cell, "accuracy": record["average_accuracy"]})
        firsts.setdefault((record["seed"], record["quantizer"]), cell)
    shared = [{**read(qat8, cell), "seed": cell["seed"], "quantizer": cell["quantizer"]} for cell in firsts.values()]
    return shared, runs


def _std(values: Sequence[float]) -> float:
    return float(np.std(values, ddof=1)) if len(values) > 1 else float("nan")


def _row(stage: str, key: Mapping[str, str], group: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    first = group[0]
    selector = first.get("coreset", "full")
    row: dict[str, Any] = {"stage": stage, **key, "seeds": " ".join(str(r["seed"]) for r in group),
                           "coreset": selector, "fraction": first.get("fraction", 1.0),
                           "every": first.get("every", ""), "label_noise": first.get("label_noise", 0.0)}
    accuracy = [float(r["accuracy"]) for r in group if "accuracy" in r]
    row["accuracy_mean"] = float(np.mean(accuracy)) if accuracy else float("nan")
    row["accuracy_std"] = _std(accuracy) if accuracy else float("nan")
    for column in SECONDS:
        values = [r["train_seconds"] + r["selection_seconds"] if column == "seconds" else r[column] for r in group]
        row[f"{column}_mean"], row[f"{column}_std"] = float(np.mean(values)), _std(values)
    seen = sum(r["images_seen"] for r in group)
    # a timing file from before `pool_images` was recorded: known only for full data
    pools = [r.get("pool_images", r["images_seen"] if selector == "full" else None) for r in group]
    pool = 0 if None in pools else sum(pools)
    scored = sum(x["pool"] for r in group for x in r.get("rounds") or [])
    selected = sum(x["selected"] for r in group for x in r.get("rounds") or [])
    row["images_seen"], row["pool_images"] = seen / len(group), pool / len(group)
    row["image_share"] = seen / pool if pool else float("nan")
    row["model_share"] = (seen + SCORING_PASSES.get(selector, 2) / 3 * scored) / pool if pool else float("nan")
    row["flipped_share"] = (sum(x["flipped"] for r in group for x in r.get("rounds") or []) / selected
                            if selected else float("nan"))
    return row


def timing_table(qat8: Sequence[Mapping[str, Any]], lifelong: Sequence[Mapping[str, Any]]) -> pd.DataFrame:
    """One row per qat8 quantizer and per lifelong run (method, bits, quantizer), over seeds."""
    rows = []
    groups: dict[tuple, list] = {}
    for r in qat8:
        groups.setdefault(("qat8", "", "", r["quantizer"]), []).append(r)
    for r in lifelong:
        groups.setdefault(("lifelong", r["method"], r["bits"], r["quantizer"]), []).append(r)
    for (stage, method, bits, quantizer), group in groups.items():
        rows.append(_row(stage, {"method": method, "bits": bits, "quantizer": quantizer}, group))
    # measured time against the full-data row of the same run but for its coreset (proxq beside proxq+acs10)
    def setting(r: Mapping[str, Any]) -> tuple:
        return r["stage"], r["method"], r["bits"], grid.base_quantizer(r["quantizer"])

    full_rows: dict[tuple, Mapping[str, Any]] = {}
    for r in rows:
        if r["coreset"] == "full":
            full_rows.setdefault(setting(r), r)  # the first one per setting
    for row in rows:
        full = full_rows.get(setting(row))
        row["time_share"] = row["seconds_mean"] / full["seconds_mean"] if full and full["seconds_mean"] else float("nan")
    return pd.DataFrame(rows, columns=COLUMNS)


def _pm(mean: float, std: float, digits: int, scale: float = 1) -> str:
    if np.isnan(mean):
        return "—"
    return f"{scale * mean:.{digits}f}" + ("" if np.isnan(std) else f" ± {abs(scale * std):.{digits}f}")


def markdown_table(table: pd.DataFrame) -> str:
    """The timing table in Markdown: seconds as mean ± std over seeds, shares of full-data training."""
    headings = ["stage", "method", "bits", "quantizer", "seeds", "coreset", "avg accuracy (%)", "train (s)",
                "selection (s)", "images seen", "images / full", "model time / full", "flipped (%)", "time / full"]
    lines = ["| " + " | ".join(headings) + " |", "|" + "|".join(["---"] * 6 + ["---:"] * 8) + "|"]
    for _, r in table.iterrows():
        coreset = "full" if r["coreset"] == "full" else f"{r['coreset']} f={r['fraction']:g} R={r['every']}"
        cells = [r["stage"], r["method"] or "—", r["bits"] or "—", r["quantizer"], str(len(str(r["seeds"]).split())),
                 coreset, _pm(r["accuracy_mean"], r["accuracy_std"], 2, 100),
                 _pm(r["train_seconds_mean"], r["train_seconds_std"], 1),
                 _pm(r["selection_seconds_mean"], r["selection_seconds_std"], 1), f"{r['images_seen']:.0f}",
                 _pm(r["image_share"], float("nan"), 3), _pm(r["model_share"], float("nan"), 3),
                 _pm(r["flipped_share"], float("nan"), 1, 100), _pm(r["time_share"], float("nan"), 3)]
        lines.append("| " + " | ".join(cells) + " |")
    note = ("\nSeconds differ between runs (this table is not part of results/summary.csv). images / full: "
            "images trained on over those a full-data run trains on; model time / full: the time SPEC 10's "
            "cost model expects (a training step ≈ 3 forward passes, scoring 0-2 per pooled image and round); "
            "time / full: measured seconds (training and selection) over those of the full-data row of the same "
            "stage, method, bits and quantizer in this table (a grid with proxq beside proxq+acs10; — without one).\n")
    return "\n".join(lines) + "\n" + note
