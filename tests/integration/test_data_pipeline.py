"""The data half of the pipeline through the real Snakemake and DVC, on the embedded digits.

`data_run` (conftest.py) is a new project where Snakemake has made the data stages, shared.
"""

from __future__ import annotations

import json

import pandas as pd
import pytest

from tests.conftest import planned_jobs, run, set_param, tree_bytes
from tests.integration.conftest import DATA_OUTPUTS, DATA_STAGES, DATA_TARGETS, clone

pytestmark = pytest.mark.integration


def snakemake_data(root, *extra):
    return run(["snakemake", "--cores", "2", *extra, *DATA_TARGETS], root)




def ran_stages(dvc_output: str) -> list[str]:
    return [s for s in DATA_STAGES if f"Running stage '{s}'" in dvc_output or f"Running stage '{s}@" in dvc_output]


def test_snakemake_runs_the_data_stages(data_run):
    project = data_run  # read only
    split = project / "data" / "split"
    tasks = json.loads((split / "tasks.json").read_text())
    T = len(tasks["tasks"])
    for t in range(T):
        train = pd.read_csv(split / f"train{t}.csv")
        test = pd.read_csv(split / f"test{t}.csv")
        assert list(train.columns) == ["image", "label"]
        assert set(train["label"]) == set(test["label"]) == set(tasks["tasks"][t])
        replay = pd.read_csv(project / "data" / "replay" / f"replay{t}.csv")
        assert set(replay["image"]) <= set(train["image"])
        assert not any(img.startswith("test/") for img in replay["image"])
        weights = json.loads((project / "data" / "counts" / "lifequant" / f"reweight{t}.json").read_text())
        assert len(weights) == len(tasks["classes"])


def test_data_stages_are_byte_deterministic(data_run, tmp_path):
    project = clone(data_run, tmp_path / "repo")
    first = {out: tree_bytes(project / out) for out in DATA_OUTPUTS}
    snakemake_data(project, "--forceall")
    second = {out: tree_bytes(project / out) for out in DATA_OUTPUTS}
    assert first == second


def test_dvc_repro_then_replay_rate_edit_reruns_only_replay_and_count(project, data_run, tmp_path):
    first = run(["dvc", "repro", "count"], project).stdout
    assert ran_stages(first) == DATA_STAGES
    assert "Data and pipelines are up to date." in run(["dvc", "status", "--with-deps", "count"], project).stdout

    set_param(project, "replay.replay_rate", 0.5)
    second = run(["dvc", "repro", "count"], project).stdout
    assert ran_stages(second) == ["replay", "count"]

    # Snakemake agrees: after the same edit (on a clone of `data_run`, whose data stages Snakemake
    # made), it plans exactly those two rules.
    project = clone(data_run, tmp_path / "snakemake")
    set_param(project, "replay.replay_rate", 0.5)
    assert planned_jobs(project, *DATA_TARGETS) == {"replay": 1, "count": 1}


def test_dvc_commit_after_snakemake_matches_dvc_repro(data_run, tmp_path):
    project = clone(data_run, tmp_path / "repo")
    run(["dvc", "commit", "--force", "--with-deps", "count"], project)
    assert "Data and pipelines are up to date." in run(["dvc", "status", "--with-deps", "count"], project).stdout
    lock_after_snakemake = (project / "dvc.lock").read_text()
    # The same project reproduced by DVC alone records the same hashes.
    for out in DATA_OUTPUTS:
        run(["rm", "-rf", out], project)
    run(["dvc", "repro", "--force", "count"], project)
    assert (project / "dvc.lock").read_text() == lock_after_snakemake


def test_invalid_parameter_fails_before_any_work(project):
    set_param(project, "split.diminish_rate", 25)
    for cmd in (["snakemake", "--cores", "1", "all"], ["dvc", "repro", "count"]):
        proc = run(cmd, project, check=False)
        assert proc.returncode != 0
        assert "split.diminish_rate = 25" in proc.stdout + proc.stderr
        assert not (project / "data" / "store").exists()
