"""Coreset values of the quantizer axis (`proxq+acs10`, issue 13 item 2) in both tools, dry runs only:
Snakemake and DVC plan full-data and coreset cells side by side, the default cells keep their paths
and stage names, and a bad value stops Snakemake naming its bad part."""

from __future__ import annotations

import json

import pytest
import yaml

from tests.conftest import planned_jobs, run, set_param

pytestmark = pytest.mark.integration

SHARED = {"download": 1, "split": 1, "replay": 1, "count": 1, "pretrain": 1, "ptq": 1, "aggregate": 1}


def test_a_coreset_value_plans_its_own_cells_beside_full_data_in_snakemake_and_dvc(project):
    set_param(project, "grid.method", ["finetune"])
    set_param(project, "grid.quantizer", ["proxq", "proxq+acs10"])
    set_param(project, "quantizers.proxq+acs10", {})
    per_cell = {"qat8": 2, "lifelong": 2, "evaluate": 2, "ptq_lifelong": 2}
    assert planned_jobs(project, "all") == {**SHARED, **per_cell, "all": 1}
    plan = run(["snakemake", "-n", "-p", "all"], project).stdout
    qat8 = [line for line in plan.splitlines() if "python -m lq qat8 " in line]
    assert len(qat8) == 2
    # the default cell as before; the coreset cell under its own folder, its suffix passed as the axis value
    assert any("--model models/seed0/proxq/qat8.pt" in c and "--axis quantizer=proxq " in c for c in qat8), qat8
    assert any("--model models/seed0/proxq+acs10/qat8.pt" in c and "--axis quantizer=proxq+acs10 " in c
               and "--set 'quantizers.proxq+acs10={}'" in c for c in qat8), qat8
    assert "metrics/seed0/proxq+acs10/finetune-w4a4.json" in plan

    # DVC: the same stages, named with the composite value; `dvc repro --dry` finds every parameter
    status = json.loads(run(["dvc", "status", "--json"], project).stdout)
    assert {n for n in status if "@" in n and n.split("@")[0] in per_cell} == {
        "qat8@proxq-0", "qat8@proxq+acs10-0", "lifelong@finetune-w4a4-proxq-0", "lifelong@finetune-w4a4-proxq+acs10-0",
        "evaluate@finetune-w4a4-proxq-0", "evaluate@finetune-w4a4-proxq+acs10-0",
        "ptq_lifelong@finetune-w4a4-proxq-0", "ptq_lifelong@finetune-w4a4-proxq+acs10-0"}
    # `dvc repro --dry` checks a stage's parameters once its inputs exist: make the cheap ones (the
    # store, split, replay sets and counts) and stand-in models for the trained ones (never read)
    run(["dvc", "repro", "-q", "count@finetune"], project)
    for model in ("models/seed0/pretrain.pt", "models/seed0/proxq+acs10/qat8.pt"):
        (project / model).parent.mkdir(parents=True, exist_ok=True)
        (project / model).write_bytes(b"stand-in")
    for stage in ("qat8@proxq+acs10-0", "lifelong@finetune-w4a4-proxq+acs10-0"):
        dry = run(["dvc", "repro", "--dry", "-s", stage], project)
        text = dry.stdout + dry.stderr
        assert f"Running stage '{stage}'" in text and "ERROR" not in text, text[-3000:]
        assert "--axis quantizer=proxq+acs10" in text and "seed0/proxq+acs10/" in text, text[-3000:]
    # the block is what DVC needs: without it DVC refuses the cell (lq's own check says so first)
    data = yaml.safe_load((project / "params.yaml").read_text())
    del data["quantizers"]["proxq+acs10"]
    (project / "params.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
    refused = run(["dvc", "repro", "--dry", "-s", "qat8@proxq+acs10-0"], project, check=False)
    assert "Parameters 'quantizers.proxq+acs10' are missing" in refused.stdout + refused.stderr


def test_the_shipped_coreset_grid_plans_three_quantizer_values_and_bad_values_are_named(project):
    assert planned_jobs(project, "all", "--configfile", "workflow/grids/digits-coreset.yaml") == {
        **SHARED, "count": 2, "qat8": 3, "lifelong": 6, "evaluate": 6, "ptq_lifelong": 6, "all": 1}

    set_param(project, "grid.quantizer", ["proxq", "proxq+acs05"])
    bad = run(["snakemake", "-n", "all"], project, check=False)
    assert bad.returncode != 0
    assert "the coreset part 'acs05' after '+' is not valid" in bad.stdout + bad.stderr
    set_param(project, "grid.quantizer", ["proxq", "proxq+acs10"])  # valid, but without its settings block
    missing = run(["snakemake", "-n", "all"], project, check=False)
    assert missing.returncode != 0 and "add `proxq+acs10: {}` under `quantizers:`" in missing.stdout + missing.stderr
