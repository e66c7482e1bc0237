"""The self-supervised stages (`ssl`, `ssl_linear`) and `pretrain.init` through Snakemake and DVC.

On a clone of the shared `data_run` (the data stages made), with one epoch of SimSiam and SSQL, a
two-epoch linear head and a 2 x 2 bit sweep: Snakemake makes both backbones, their linear
evaluations and a scratch FP32 model; an SSQL edit plans only SSQL's cells and `pretrain.init:
ssql` only pretrain, in Snakemake and then (after `dvc commit` adopted the run) in DVC, whose run
of pretrain starts the supervised model from the very backbone the `ssl` stage trained.
"""

from __future__ import annotations

import json

import pandas as pd
import pytest
import torch

from lq.train import checkpoint
from tests.conftest import PRETRAIN, job_stats, planned_jobs, run, set_param
from tests.integration.conftest import clone, in_background

pytestmark = pytest.mark.integration

SHORT = {
    "train.device": "cpu", "grid.ssl": ["simsiam", "ssql"],
    "ssl.methods.simsiam.epochs": 1, "ssl.methods.ssql.epochs": 1, "ssl.linear.epochs": 2,
    "ptq.weight_bits": [4, 32], "ptq.act_bits": [8, 32], "ptq.calibration_images": 64,
    "pretrain.epochs": 1, "pretrain.milestones": [1],
}
METHODS = ("simsiam", "ssql")
LINEAR = [f"ptq/seed0/ssl/{m}.json" for m in METHODS]
STAGES = ["download", "split", "pretrain@0", *(f"{s}@{m}-0" for s in ("ssl", "ssl_linear") for m in METHODS)]


def changed(root) -> set[str]:
    """The stages among STAGES that `dvc status` says are out of date."""
    return set(json.loads(run(["dvc", "status", "--json", *STAGES], root).stdout)) & set(STAGES)


@in_background
def test_ssl_stages_and_a_self_supervised_start_through_snakemake_and_dvc(tmp_path, data_run):
    root = clone(data_run, tmp_path / "repo")
    for key, value in SHORT.items():
        set_param(root, key, value)
    run(["git", "commit", "-qam", "short self-supervised runs"], root)
    out = run(["snakemake", "--cores", "1", *LINEAR, PRETRAIN], root)
    assert job_stats(out.stdout + out.stderr) == {"ssl": 2, "ssl_linear": 2, "pretrain": 1}
    for method in METHODS:
        grid = json.loads((root / f"ptq/seed0/ssl/{method}.json").read_text())
        assert grid["method"] == method and set(grid["accuracy"]) == {"w4a8", "w4a32", "w32a8", "w32a32"}
        assert grid["float_accuracy"] == grid["accuracy"]["w32a32"] and 0 < grid["float_accuracy"] <= 1
        assert grid["calibration"]["from"] == ["train0.csv"] and grid["linear"]["tested_on"] == "test0.csv"
        assert len(pd.read_csv(root / f"ptq/seed0/ssl/{method}.csv")) == 4
        curve = pd.read_csv(root / f"plots/seed0/ssl/{method}_curve.csv")
        assert list(curve.columns) == ["step", "task", "epoch", "loss", "embedding_std", "lr"] and len(curve) == 1
    timing = json.loads((root / "plots/seed0/ssl/ssql_timing.json").read_text())
    steps = -(-len(pd.read_csv(root / "data/split/train0.csv")) // 64)  # one draw per step of 64 images
    assert sum(timing["bit_draws"].values()) == steps

    # Snakemake (before DVC's commit, which gives the files it caches new modification times): an
    # SSQL edit plans only SSQL's cells, a self-supervised start only pretrain
    set_param(root, "ssl.methods.ssql.epochs", 2)
    assert planned_jobs(root, *LINEAR, PRETRAIN) == {"ssl": 1, "ssl_linear": 1}
    run(["git", "checkout", "params.yaml"], root)
    set_param(root, "pretrain.init", "ssql")
    assert planned_jobs(root, *LINEAR, PRETRAIN) == {"pretrain": 1}
    run(["git", "checkout", "params.yaml"], root)

    run(["dvc", "commit", "-f", "-q", *STAGES], root)  # DVC adopts what Snakemake made; then the same in DVC
    assert changed(root) == set()
    set_param(root, "ssl.methods.ssql.epochs", 2)
    assert changed(root) == {"ssl@ssql-0"}  # (its linear evaluation follows once the model changes)
    run(["git", "checkout", "params.yaml"], root)
    set_param(root, "pretrain.init", "ssql")
    assert changed(root) == {"pretrain@0"}
    out = run(["dvc", "repro", "-s", "pretrain@0"], root).stdout
    assert "Running stage 'pretrain@0'" in out
    config = checkpoint.load(root / PRETRAIN)["config"]
    ssl_digest = json.loads((root / "plots/seed0/ssl/ssql_timing.json").read_text())["weights_sha256"]
    assert config["init"] == "ssql" and config["init_sha256"] == ssl_digest  # the ssl stage's very backbone
    assert not list((root / ".lq-resume").glob("pretrain*"))  # both parts' resume state is gone
    assert changed(root) == set()
    model = torch.load(root / PRETRAIN, weights_only=True)["model"]
    ssl_model = torch.load(root / "models/seed0/ssl/ssql.pt", weights_only=True)["model"]
    assert not torch.equal(model["layer1.0.conv1.weight"], ssl_model["layer1.0.conv1.weight"])  # then trained on
