"""Aggregation over seeds, on hand-made metrics records."""

from __future__ import annotations

import math

import numpy as np
import pytest

from lq import report


def record(method: str, seed: int, acc: float, forgetting: float, curve: list[float], matrix: list[list[float]],
           bits: str = "w4a4") -> dict:
    return {"method": method, "bits": bits, "quantizer": "proxq", "seed": seed, "average_accuracy": acc,
            "forgetting": forgetting, "bwt": -forgetting, "model_size_bits": 1_000_000,
            "replay_memory_bytes": 2048 * (seed + 1), "average_accuracy_curve": curve, "accuracy_matrix": matrix}


RECORDS = [
    record("lifequant", 0, 0.90, 0.02, [1.0, 0.9], [[1.0, 0.2], [0.8, 1.0]]),
    record("lifequant", 1, 0.80, 0.04, [0.8, 0.7], [[0.8, 0.0], [0.6, 1.0]]),
    record("lifequant", 2, 0.70, 0.06, [0.6, 0.5], [[0.6, 0.1], [0.4, 1.0]]),
    record("ewc", 0, 0.50, 0.30, [0.9, 0.5], [[0.9, 0.0], [0.1, 0.9]]),
]


def test_mean_and_sample_std_over_seeds():
    table = report.summary_table(RECORDS)
    assert list(table["method"]) == ["lifequant", "ewc"]  # first-seen order, not sorted
    row = table.iloc[0]
    assert row["seeds"] == "0 1 2"
    assert row["average_accuracy_mean"] == pytest.approx(0.80)
    # sample std of 0.9, 0.8, 0.7: sqrt(((0.1)² + 0 + (0.1)²) / 2) = 0.1
    assert row["average_accuracy_std"] == pytest.approx(0.10)
    assert row["forgetting_std"] == pytest.approx(0.02)
    assert row["bwt_mean"] == pytest.approx(-0.04)
    # bytes 2048, 4096, 6144: mean 4096, std 2048
    assert row["replay_memory_bytes_mean"] == pytest.approx(4096)
    assert row["replay_memory_bytes_std"] == pytest.approx(2048)
    assert row["model_size_bits_std"] == 0
    # one seed: the std is undefined, not zero
    assert math.isnan(table.iloc[1]["average_accuracy_std"])


def test_markdown_shows_percent_mean_plus_minus_std():
    text = report.markdown_table(report.summary_table(RECORDS))
    lines = text.splitlines()
    assert lines[0].startswith("| method | bits | quantizer | seeds | avg accuracy (%)")
    assert lines[2].startswith("| lifequant | w4a4 | proxq | 3 | 80.00 ± 10.00 | 4.00 ± 2.00 | -4.00 ± 2.00 | 1.00 ± 0.00 | 4.0 ± 2.0 |")
    assert "| ewc | w4a4 | proxq | 1 | 50.00 | 30.00 | -30.00 | 1.00 | 2.0 |" in text


def test_curves_and_matrices_are_averaged_elementwise():
    lifequant = report.group_runs(RECORDS)[("lifequant", "w4a4", "proxq")]
    mean, std = report.stacked(lifequant, "accuracy_matrix")
    np.testing.assert_allclose(mean, [[0.8, 0.1], [0.6, 1.0]])
    np.testing.assert_allclose(std, [[0.2, 0.1], [0.2, 0.0]], atol=1e-12)
    curves = report.curve_table(RECORDS)
    assert list(curves.columns) == ["run", "task", "mean", "std"]
    first = curves[curves["run"] == "lifequant w4a4 proxq"]
    assert list(first["mean"]) == pytest.approx([0.8, 0.7])
    assert list(first["std"]) == pytest.approx([0.2, 0.2])
    assert list(curves[curves["run"] == "ewc w4a4 proxq"]["std"]) == [0.0, 0.0]


def test_runs_differ_by_bits_too():
    records = [*RECORDS, record("lifequant", 0, 0.95, 0.01, [1.0, 0.95], [[1.0, 0.0], [0.9, 1.0]], bits="w8a8")]
    table = report.summary_table(records)
    assert [(r.method, r.bits) for r in table.itertuples()] == [("lifequant", "w4a4"), ("ewc", "w4a4"), ("lifequant", "w8a8")]
