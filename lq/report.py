"""Aggregation of a grid's runs: mean and standard deviation over seeds, per method/bits/quantizer.

The standard deviation is the sample one (n − 1 in the denominator), the usual error bar over
seeds; with a single seed it is undefined and left empty (NaN), not reported as 0.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

RUN_KEYS = ("method", "bits", "quantizer")
# Column, heading, and how the Markdown table shows a value: scale (accuracies in %, sizes in
# Mbit/KiB) and decimals.
METRICS = (
    ("average_accuracy", "avg accuracy (%)", lambda v: 100 * v, 2),
    ("forgetting", "forgetting (%)", lambda v: 100 * v, 2),
    ("bwt", "BWT (%)", lambda v: 100 * v, 2),
    ("model_size_bits", "model size (Mbit)", lambda v: v / 1e6, 2),
    ("replay_memory_bytes", "replay memory (KiB)", lambda v: v / 1024, 1),
)


def _std(values: Sequence[float]) -> float:
    return float(np.std(values, ddof=1)) if len(values) > 1 else float("nan")


def run_label(key: tuple) -> str:
    """How tables and figures name a run: 'lifequant w4a4 proxq'."""
    return " ".join(map(str, key))


def group_runs(records: Sequence[Mapping[str, Any]]) -> dict[tuple, list[Mapping[str, Any]]]:
    """Records by (method, bits, quantizer), in the order the runs first appear."""
    groups: dict[tuple, list[Mapping[str, Any]]] = {}
    for record in records:
        groups.setdefault(tuple(record[k] for k in RUN_KEYS), []).append(record)
    return groups


def summary_table(records: Sequence[Mapping[str, Any]]) -> pd.DataFrame:
    """One row per run: its seeds, then `<metric>_mean` and `<metric>_std` for each metric."""
    rows = []
    for key, group in group_runs(records).items():
        row: dict[str, Any] = dict(zip(RUN_KEYS, key))
        row["seeds"] = " ".join(str(r["seed"]) for r in group)
        for name, *_ in METRICS:
            values = [float(r[name]) for r in group]
            row[f"{name}_mean"] = float(np.mean(values))
            row[f"{name}_std"] = _std(values)
        rows.append(row)
    return pd.DataFrame(rows)


def markdown_table(table: pd.DataFrame) -> str:
    """The summary as a Markdown table, each metric as mean ± std."""
    headings = ["method", "bits", "quantizer", "seeds", *(h for _, h, *_ in METRICS)]
    lines = ["| " + " | ".join(headings) + " |", "|" + "|".join(["---"] * 4 + ["---:"] * len(METRICS)) + "|"]
    for _, row in table.iterrows():
        cells = [str(row[k]) for k in RUN_KEYS] + [str(len(str(row["seeds"]).split()))]
        for name, _, scale, digits in METRICS:
            mean, std = scale(row[f"{name}_mean"]), row[f"{name}_std"]
            cells.append(f"{mean:.{digits}f}" + ("" if np.isnan(std) else f" ± {abs(scale(std)):.{digits}f}"))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def stacked(group: Sequence[Mapping[str, Any]], key: str) -> tuple[np.ndarray, np.ndarray]:
    """Mean and std over a run's seeds of an array-valued metric (a curve or a matrix)."""
    values = np.array([r[key] for r in group], dtype=float)
    std = np.std(values, axis=0, ddof=1) if len(values) > 1 else np.zeros(values.shape[1:])
    return values.mean(axis=0), std


def curve_table(records: Sequence[Mapping[str, Any]]) -> pd.DataFrame:
    """Average accuracy after each task, mean and std over seeds, one line per run (long format)."""
    rows = []
    for key, group in group_runs(records).items():
        mean, std = stacked(group, "average_accuracy_curve")
        label = run_label(key)
        rows += [{"run": label, "task": t, "mean": round(float(m), 6), "std": round(float(s), 6)}
                 for t, (m, s) in enumerate(zip(mean, std))]
    return pd.DataFrame(rows, columns=["run", "task", "mean", "std"])
