"""The comparison grid in Snakemake and DVC: its expansion, profiles, and a small real grid."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lq import grid
from tests.conftest import job_stats, planned_jobs, run, set_param
from tests.integration.conftest import LONG, clone, in_background

pytestmark = pytest.mark.integration


def _set_grid(root: Path, **values) -> None:
    for name, value in values.items():
        set_param(root, f"grid.{name}", value)


# (grid, expected Snakemake job counts): shared stages once per value of their own axes
GRIDS = [
    ({"method": ["lifequant", "ewc"], "bits": ["w4a4", "w8a8"], "seed": [0, 1]},
     {"download": 1, "split": 1, "replay": 1, "count": 2, "pretrain": 2, "qat8": 2, "lifelong": 8,
      "evaluate": 8, "aggregate": 1, "ptq": 2, "ptq_lifelong": 8, "all": 1}),
    ({"method": ["finetune"], "quantizer": ["proxq", "dorefa", "lsq"], "seed": [3, 4]},
     {"download": 1, "split": 1, "replay": 1, "count": 1, "pretrain": 2, "qat8": 6, "lifelong": 6,
      "evaluate": 6, "aggregate": 1, "ptq": 2, "ptq_lifelong": 6, "all": 1}),
]


@pytest.mark.parametrize("values,expected", GRIDS, ids=["2methods-2bits-2seeds", "3quantizers-2seeds"])
def test_grid_expands_to_the_expected_jobs_in_snakemake_and_dvc(project, values, expected):
    _set_grid(project, **values)
    assert planned_jobs(project, "all") == expected

    # DVC expands the same grid (matrix stages, interpolated from params.yaml) into as many stages.
    status = json.loads(run(["dvc", "status", "--json"], project).stdout)
    counts: dict[str, int] = {}
    for name in status:
        counts[name.split("@")[0]] = counts.get(name.split("@")[0], 0) + 1
    assert counts == {k: v for k, v in expected.items() if k != "all"}
    cells = {n.split("@")[1] for n in status if n.startswith("lifelong@")}
    full = grid.cells({"bits": ["w4a4"], "quantizer": ["proxq"], **values}, grid.LIFELONG_AXES)
    assert cells == {"-".join(c[a] for a in grid.LIFELONG_AXES) for c in full}


def test_adding_a_seed_plans_only_the_new_cells_and_the_aggregate(project):
    """Snakemake plans per file: with one cell's outputs present, a second seed adds its own chain."""
    _set_grid(project, seed=[0, 5])
    plan = run(["snakemake", "-n", "-p", "all"], project).stdout
    assert "--axis seed=5" in plan and "models/seed5/pretrain.pt" in plan
    assert "--axis method=lifequant --axis bits=w4a4 --axis quantizer=proxq --axis seed=5" in plan


def test_a_step_without_its_cell_is_refused(project):
    proc = run(["python", "-m", "lq", "pretrain", "--store", "data/store", "--split", "data/split",
                "--model", "m.pt", "--curve", "c.csv"], project, check=False)
    assert proc.returncode == 2
    assert "--axis seed=VALUE" in proc.stderr and "Traceback" not in proc.stderr


# --- scale-out profiles ---------------------------------------------------------------------------

@pytest.mark.parametrize("profile,extra", [("workflow/profiles/slurm", []),
                                           ("workflow/profiles/local-gpu", ["--resources", "gpu=2"])])
def test_profiles_dry_run_the_whole_grid(project, profile, extra):
    _set_grid(project, method=["lifequant", "finetune"], seed=[0, 1])
    out = run(["snakemake", "--profile", profile, *extra, "-n", "all"], project)
    text = out.stdout + out.stderr
    assert f"Using profile {profile}" in text
    stats = job_stats(text)
    assert stats["pretrain"] == 2 and stats["lifelong"] == 4 and stats["aggregate"] == 1


# --- a small real grid ----------------------------------------------------------------------------

# `make test-long`: about two minutes of CPU. `make test` keeps the grid's expansion in both tools,
# the two-seed aggregate (two_seed_snakemake) and a per-method lambda edit run through both tools.
@pytest.mark.long
@in_background
def test_a_small_grid_runs_and_aggregates_over_seeds(tmp_path, two_seed_snakemake):
    """2 methods x 2 seeds with 1-2 epochs: the comparison table, its figures and the report.

    From a clone of the shared two-seed run (conftest.py: lifequant on seeds 0 and 1, made by
    Snakemake): adding `joint` to the grid runs its cells (and its class counts) and the
    aggregate, nothing else.
    """
    import pandas as pd

    project = clone(two_seed_snakemake.root, tmp_path / "repo")
    _set_grid(project, method=["lifequant", "joint"], seed=[0, 1])
    out = run(["snakemake", "--cores", "1", "all"], project, timeout=LONG)
    assert job_stats(out.stdout + out.stderr) == {"count": 1, "lifelong": 2, "evaluate": 2, "aggregate": 1,
                                                  "ptq_lifelong": 2, "all": 1}

    table = pd.read_csv(project / "results" / "summary.csv")
    assert list(table["method"]) == ["lifequant", "joint"]
    assert list(table["seeds"]) == ["0 1", "0 1"]
    for row in table.itertuples():
        runs = [json.loads((project / f"metrics/seed{s}/proxq/{row.method}-w4a4.json").read_text()) for s in (0, 1)]
        accs = [r["average_accuracy"] for r in runs]
        assert row.average_accuracy_mean == pytest.approx(sum(accs) / 2, abs=1e-6)
        assert row.average_accuracy_std == pytest.approx(abs(accs[0] - accs[1]) / 2 ** 0.5, abs=1e-6)
    # joint keeps every earlier training image; LifeQuant only the replay share of them
    assert table.set_index("method").loc["joint", "replay_memory_bytes_mean"] > \
        table.set_index("method").loc["lifequant", "replay_memory_bytes_mean"] > 0
    markdown = (project / "results" / "summary.md").read_text()
    assert "| lifequant | w4a4 | proxq | 2 |" in markdown and " ± " in markdown
    for figure in ("accuracy_matrices.png", "average_accuracy.png", "forgetting.png"):
        assert (project / "results" / figure).read_bytes().startswith(b"\x89PNG"), figure
    run(["snakemake", "--report", "report.html"], project)
    assert "Accuracy matrix of each run" in (project / "report.html").read_text()
