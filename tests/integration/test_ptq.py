"""The PTQ stages through Snakemake and DVC, on the shared `trained` run (conftest.py).

`trained` ran `snakemake all`, which includes `ptq` (the FP32 model) and `ptq_lifelong` (the
lifelong cell): its outputs are checked read-only. A clone then runs only the PTQ stages with a
smaller sweep, through each tool.
"""

from __future__ import annotations

import json

import pandas as pd
import pytest
import torch

from lq import metrics as lqmetrics
from lq.manifest import sha256
from lq.quant.ptq import weights_digest
from lq.train import spec
from tests.conftest import CELL, METRICS, PRETRAIN, planned_jobs, run, set_param
from tests.integration.conftest import clone

pytestmark = pytest.mark.integration

PTQ_PRETRAIN = "ptq/seed0/pretrain.json"
PTQ_CELL = f"ptq/{CELL}.json"


def test_the_trained_runs_sweeps_reproduce_float_accuracy_and_leave_the_weights(trained):
    grid = json.loads((trained / PTQ_PRETRAIN).read_text())
    evaluated = json.loads((trained / METRICS).read_text())
    # w32a32 of the FP32 model is its accuracy as `evaluate` measured it, exactly.
    assert grid["accuracy"]["w32a32"] == grid["float_accuracy"] == evaluated["fp32_task0_accuracy"]
    assert set(grid["accuracy"]) == {f"w{w}a{a}" for w in grid["weight_bits"] for a in grid["act_bits"]}
    assert len(grid["accuracy"]) == 4  # the test projects' 2 x 2 sweep (tests/conftest.py TEST_SCALE)
    model, _ = spec.load(trained / PRETRAIN, torch.device("cpu"))
    assert grid["weights_sha256"] == weights_digest(model)
    assert grid["checkpoint_sha256"] == sha256(trained / PRETRAIN)
    assert grid["accuracy"]["w8a8"] >= grid["float_accuracy"] - 0.05  # 8 bits keep the FP32 model
    table = pd.read_csv(trained / "ptq/seed0/pretrain.csv")
    assert len(table) == 4 and dict(zip(table["pair"], table["accuracy"])) == grid["accuracy"]
    assert (trained / "ptq/seed0/pretrain.png").stat().st_size > 0

    cell = json.loads((trained / PTQ_CELL).read_text())
    assert cell["trained_bits"] == "w4a4" and cell["method"] == "lifequant"
    for pair in cell["pairs"].values():
        R = pair["accuracy_matrix"]
        assert pair["final_row"] == R[-1]
        assert pair["forgetting"] == round(lqmetrics.forgetting(R).mean, 6)
    # the checkpoint as trained (its own w4a4 quantizers) is what `evaluate` measured
    assert cell["native"]["accuracy_matrix"] == evaluated["accuracy_matrix"]
    for t, digest in enumerate(cell["weights_sha256"]):
        model, _ = spec.load(trained / f"models/{CELL}/task{t}.pt", torch.device("cpu"))
        assert digest == weights_digest(model)


@pytest.mark.long  # 43 s: make test ran 608 s on the 2-core machine of 2026-12-08 (CI runs make test-long too)
def test_a_ptq_edit_reruns_only_the_ptq_stages_in_both_tools(tmp_path, trained):
    """`trained` ran the PTQ stages through Snakemake; on a clone, an edit of `ptq.*` plans only
    them in Snakemake, and DVC (after adopting the run) reruns only them."""
    root = clone(trained, tmp_path / "repo")
    smaller = {"ptq.weight_bits": [4, 32], "ptq.act_bits": [8, 32], "ptq.calibration_images": 64}
    for key, value in smaller.items():
        set_param(root, key, value)
    assert planned_jobs(root, "all") == {"ptq": 1, "ptq_lifelong": 1, "all": 1}
    run(["git", "checkout", "params.yaml"], root)
    run(["dvc", "commit", "-f", "-q"], root)  # DVC adopts what Snakemake made
    assert "Data and pipelines are up to date." in run(["dvc", "status"], root).stdout
    for key, value in smaller.items():
        set_param(root, key, value)
    status = json.loads(run(["dvc", "status", "--json"], root).stdout)
    assert set(status) == {"ptq@0", "ptq_lifelong@lifequant-w4a4-proxq-0"}, status
    out = run(["dvc", "repro"], root).stdout
    assert "Running stage 'ptq@0'" in out and "Running stage 'ptq_lifelong@" in out
    assert "Running stage 'lifelong" not in out and "Running stage 'evaluate" not in out
    grid = json.loads((root / PTQ_PRETRAIN).read_text())
    assert set(grid["accuracy"]) == {"w4a8", "w4a32", "w32a8", "w32a32"} and grid["calibration"]["images"] == 64
    assert "Data and pipelines are up to date." in run(["dvc", "status"], root).stdout
    plots = json.loads(run(["dvc", "plots", "show", "--json"], root).stdout)["data"]
    assert {"ptq/seed0/pretrain.csv", "ptq/seed0/pretrain.png", f"ptq/{CELL}.csv", f"ptq/{CELL}.png"} <= set(plots)
