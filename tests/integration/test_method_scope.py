"""A method's settings are its own: editing one method's block reruns only that method's cells."""

from __future__ import annotations

import json

import pytest

from tests.conftest import planned_jobs, run, set_param
from tests.integration.conftest import LONG, clone, in_background

pytestmark = pytest.mark.integration


@in_background
def test_editing_one_methods_lambda_reruns_only_its_cells_in_both_tools(tmp_path, two_seed_snakemake):
    # A two-method grid on seed 0, from a clone of the shared two-seed run (conftest.py: short
    # training, lifequant made by Snakemake): the run adds ewc's cell.
    project = clone(two_seed_snakemake.root, tmp_path / "repo")
    set_param(project, "grid.method", ["lifequant", "ewc"])
    set_param(project, "grid.seed", [0])
    run(["snakemake", "--cores", "1", "all"], project, timeout=LONG)
    assert planned_jobs(project, "all") == {}
    run(["git", "commit", "-qam", "tiny two-method grid"], project)
    run(["dvc", "commit", "-f", "-q"], project)
    run(["snakemake", "--touch", "--cores", "1", "all"], project)  # as documented: dvc commit rewrote mtimes
    assert "Data and pipelines are up to date." in run(["dvc", "status"], project).stdout

    set_param(project, "lifelong.methods.ewc.ll_lambda", 1.0)
    assert planned_jobs(project, "all") == {"lifelong": 1, "evaluate": 1, "aggregate": 1, "ptq_lifelong": 1, "all": 1}
    plan = run(["snakemake", "-n", "-p", "all"], project).stdout
    cells = [line for line in plan.splitlines() if "python -m lq lifelong" in line or "python -m lq evaluate" in line]
    assert len(cells) == 2 and all("--axis method=ewc" in cell for cell in cells), cells
    status = json.loads(run(["dvc", "status", "--json"], project).stdout)
    assert set(status) == {"lifelong@ewc-w4a4-proxq-0"}, status  # evaluate follows once it reruns
    assert "lifelong.methods.ewc" in json.dumps(status)
