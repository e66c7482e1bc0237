"""A method's settings are its own: editing one method's block reruns only that method's cells."""

from __future__ import annotations

import json

import pytest

from tests.conftest import planned_jobs, run, set_param

pytestmark = pytest.mark.integration
TINY = {"pretrain.epochs": 1, "pretrain.milestones": [1], "qat8.epochs": 1, "qat8.milestones": [1],
        "lifelong.epochs": 1, "lifelong.milestones": [1], "grid.method": ["lifequant", "ewc"]}


def test_editing_one_methods_lambda_reruns_only_its_cells_in_both_tools(project):
    for key, value in TINY.items():
        set_param(project, key, value)
    run(["snakemake", "--cores", "2", "all"], project, timeout=1800)
    assert planned_jobs(project, "all") == {}
    run(["git", "commit", "-qam", "tiny two-method grid"], project)
    run(["dvc", "commit", "-f", "-q"], project)
    run(["snakemake", "--touch", "--cores", "1", "all"], project)  # as documented: dvc commit rewrote mtimes
    assert "Data and pipelines are up to date." in run(["dvc", "status"], project).stdout

    set_param(project, "lifelong.methods.ewc.ll_lambda", 1.0)
    assert planned_jobs(project, "all") == {"lifelong": 1, "evaluate": 1, "aggregate": 1, "all": 1}
    plan = run(["snakemake", "-n", "-p", "all"], project).stdout
    cells = [l for l in plan.splitlines() if "python -m lq lifelong" in l or "python -m lq evaluate" in l]
    assert len(cells) == 2 and all("--axis method=ewc" in l for l in cells), cells
    status = json.loads(run(["dvc", "status", "--json"], project).stdout)
    assert set(status) == {"lifelong@ewc-w4a4-proxq-0"}, status  # evaluate follows once it reruns
    assert "lifelong.methods.ewc" in json.dumps(status)
