"""All eight stages on the embedded digits through the real DVC (and Snakemake), short training.

The project reproduced from nothing by `dvc repro` is the shared run `two_seed_dvc` (two seeds,
short training, one thread per stage: conftest.py); the Snakemake side starts from `trained`.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import CELL, LIFELONG, LIFELONG_CURVE, METRICS, PRETRAIN, QAT8, planned_jobs, run, set_param
from tests.integration.conftest import LONG, clone, in_background

STAGES = ["download", "split", "replay", "count", "pretrain", "qat8", "lifelong", "evaluate", "aggregate"]
# the lifelong stages of `two_seed_dvc`, one per seed
LIFELONG_STAGES = {"lifelong@lifequant-w4a4-proxq-0", "lifelong@lifequant-w4a4-proxq-1"}


def ran_stages(dvc_output: str) -> list[str]:
    """Stages `dvc repro` ran, in the order it ran them (a grid stage by its name before '@')."""
    found = [(max(dvc_output.find(f"Running stage '{s}'"), dvc_output.find(f"Running stage '{s}@")), s) for s in STAGES]
    return [s for pos, s in sorted(found) if pos >= 0]


@pytest.fixture(scope="module")
def reproduced(two_seed_dvc) -> tuple[Path, str]:
    """A project with short training, reproduced from nothing by `dvc repro`; and its output."""
    return two_seed_dvc.root, two_seed_dvc.output


@pytest.mark.integration
def test_dvc_repro_runs_every_stage_then_status_metrics_and_plots_work(reproduced, tmp_path):
    root, output = clone(reproduced[0], tmp_path / "repo"), reproduced[1]
    assert ran_stages(output) == STAGES
    assert "Data and pipelines are up to date." in run(["dvc", "status"], root).stdout
    metrics = json.loads((root / METRICS).read_text())

    shown = run(["dvc", "metrics", "show", "--json"], root).stdout
    assert METRICS in shown
    found = []

    def collect(node):  # the JSON layout differs across DVC versions: find the file's data anywhere
        if isinstance(node, dict):
            for key, value in node.items():
                if key == METRICS and isinstance(value, dict):
                    found.append(value.get("data", value))
                collect(value)

    collect(json.loads(shown))
    assert any(d.get("average_accuracy") == metrics["average_accuracy"] for d in found), shown[:2000]
    assert "average_accuracy" in run(["dvc", "metrics", "show"], root).stdout

    plots = json.loads(run(["dvc", "plots", "show", "--json"], root).stdout)["data"]
    expected = {LIFELONG_CURVE, f"plots/{CELL}/average_accuracy.csv", f"plots/{CELL}/accuracy_matrix.png",
                "results/accuracy_matrices.png", "results/average_accuracy.png", "results/forgetting.png"}
    assert expected <= set(plots)
    # the lifelong curve: one row per (task, epoch), loss and accuracy drawn against the step
    values = plots[LIFELONG_CURVE][0]["content"]["data"]["values"]
    assert values and all("accuracy" in v for v in values)
    rows = sorted({(v["task"], v["epoch"]) for v in values})
    assert rows == [(str(t), str(e)) for t in range(3) for e in (1, 2)]
    for out in ("data/store", "data/split", "data/replay", "data/counts", PRETRAIN, QAT8,
                "plots/seed0/pretrain_curve.csv", "plots/seed0/proxq/qat8_curve.csv", LIFELONG_CURVE,
                "results/summary.csv", "results/summary.md", "results/timings.csv", "results/timings.md"):
        assert (root / out).exists(), out
    models = sorted(p.name for p in (root / LIFELONG).iterdir())
    assert models == ["MANIFEST.json", "task0.pt", "task1.pt", "task2.pt"]


@pytest.mark.integration
@in_background
def test_ll_lambda_edit_reruns_only_lifelong_and_evaluate(tmp_path, two_seed_dvc, trained):
    root = clone(two_seed_dvc.root, tmp_path / "repo")
    metrics_before = json.loads((root / METRICS).read_text())
    set_param(root, "lifelong.methods.lifequant.ll_lambda", 10.0)

    status = json.loads(run(["dvc", "status", "--json"], root).stdout)
    assert set(status) == LIFELONG_STAGES, status
    assert "lifelong.methods.lifequant" in json.dumps(status)

    output = run(["dvc", "repro"], root, timeout=LONG).stdout
    assert ran_stages(output) == ["lifelong", "evaluate", "aggregate"]
    assert "Data and pipelines are up to date." in run(["dvc", "status"], root).stdout
    assert json.loads((root / METRICS).read_text()) != metrics_before

    # Snakemake agrees: once it has run everything (and recorded its params: a clone of the shared
    # run `trained`, made by Snakemake alone), the same kind of edit plans exactly lifelong and
    # evaluate.
    root = clone(trained, tmp_path / "snakemake")
    assert planned_jobs(root, "all") == {}
    set_param(root, "lifelong.methods.lifequant.ll_lambda", 1.0)
    assert planned_jobs(root, "all") == {"lifelong": 1, "evaluate": 1, "aggregate": 1, "ptq_lifelong": 1, "all": 1}

    # The report of the finished run embeds the comparison table and figures with their captions.
    run(["snakemake", "--report", "report.html"], root)
    html = (root / "report.html").read_text()
    for name in ("summary.csv", "accuracy_matrices.png", "average_accuracy.png", "forgetting.png"):
        assert name in html, name
    assert "Average forgetting after the last task" in html
