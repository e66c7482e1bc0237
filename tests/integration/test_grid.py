"""The comparison grid: axis values to parameters, and its expansion in Snakemake and DVC."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lq import grid
from lq.errors import LqError
from lq.pipeline import fill, fixed_prefix, load_table, placeholders
from tests.conftest import planned_jobs, run, set_param


def test_axis_values_become_parameters():
    assert grid.apply({"bits": "w2a8"}) == [("lifelong.weight_bits", 2), ("lifelong.act_bits", 8)]
    assert grid.apply({"seed": "12"}) == [("train.seed", 12)]
    assert dict(grid.apply({"quantizer": "lsq"})) == {"quant.weight_quantizer": "lsq", "quant.act_quantizer": "lsq"}
    assert dict(grid.apply({"quantizer": "proxq"}))["quant.act_quantizer"] == "uniform"
    with pytest.raises(LqError, match="w4a4"):
        grid.apply({"bits": "4bit"})
    with pytest.raises(LqError, match="name=value"):
        grid.parse_assignments(["seed"])


def test_cells_are_the_product_of_the_named_axes_in_canonical_order():
    values = {"method": ["lifequant", "ewc"], "bits": ["w4a4"], "quantizer": ["proxq"], "seed": [0, 1]}
    assert grid.cells(values, ["seed"]) == [{"seed": "0"}, {"seed": "1"}]
    cells = grid.cells(values, ["seed", "method"])  # order of the argument does not matter
    assert cells == [{"method": "lifequant", "seed": "0"}, {"method": "lifequant", "seed": "1"},
                     {"method": "ewc", "seed": "0"}, {"method": "ewc", "seed": "1"}]
    assert grid.cells(values, []) == [{}]
    assert grid.cell_name({"seed": "1", "method": "ewc", "bits": "w4a4"}) == "ewc-w4a4-seed1"


def test_path_patterns():
    pattern = "metrics/seed{seed}/{quantizer}/{method}-{bits}.json"
    assert placeholders(pattern) == ["seed", "quantizer", "method", "bits"]
    assert fill(pattern, {"seed": "${item.seed}"}) == "metrics/seed${item.seed}/{quantizer}/{method}-{bits}.json"
    assert fixed_prefix(pattern) == "metrics"
    assert fixed_prefix("models/seed{seed}/pretrain.pt") == "models"


def test_every_stage_runs_per_exactly_the_axes_its_outputs_name():
    _, stages = load_table()
    axes = {s.name: set(s.axes) for s in stages}
    assert axes["download"] == axes["split"] == axes["replay"] == set()
    assert axes["count"] == {"method"}  # BaLL weights of the pool each method trains on
    assert axes["pretrain"] == {"seed"}
    assert axes["qat8"] == {"seed", "quantizer"}
    assert axes["lifelong"] == axes["evaluate"] == set(grid.AXES)
    assert axes["aggregate"] == set()
    aggregate = next(s for s in stages if s.name == "aggregate")
    assert aggregate.gathered(aggregate.deps["metrics"]) == ["seed", "quantizer", "method", "bits"]


def _set_grid(root: Path, **values) -> None:
    for name, value in values.items():
        set_param(root, f"grid.{name}", value)


# (grid, expected Snakemake job counts): shared stages once per value of their own axes
GRIDS = [
    ({"method": ["lifequant", "ewc"], "bits": ["w4a4", "w8a8"], "seed": [0, 1]},
     {"download": 1, "split": 1, "replay": 1, "count": 2, "pretrain": 2, "qat8": 2, "lifelong": 8,
      "evaluate": 8, "aggregate": 1, "all": 1}),
    ({"method": ["finetune"], "quantizer": ["proxq", "dorefa", "lsq"], "seed": [3, 4]},
     {"download": 1, "split": 1, "replay": 1, "count": 1, "pretrain": 2, "qat8": 6, "lifelong": 6,
      "evaluate": 6, "aggregate": 1, "all": 1}),
]


@pytest.mark.integration
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
    full = grid.cells({"bits": ["w4a4"], "quantizer": ["proxq"], **values}, grid.AXES)
    assert cells == {"-".join(c[a] for a in grid.AXES) for c in full}


@pytest.mark.integration
def test_adding_a_seed_plans_only_the_new_cells_and_the_aggregate(project):
    """Snakemake plans per file: with one cell's outputs present, a second seed adds its own chain."""
    _set_grid(project, seed=[0, 5])
    plan = run(["snakemake", "-n", "-p", "all"], project).stdout
    assert "--axis seed=5" in plan and "models/seed5/pretrain.pt" in plan
    assert "--axis method=lifequant --axis bits=w4a4 --axis quantizer=proxq --axis seed=5" in plan


@pytest.mark.integration
def test_a_step_without_its_cell_is_refused(project):
    proc = run(["python", "-m", "lq", "pretrain", "--store", "data/store", "--split", "data/split",
                "--model", "m.pt", "--curve", "c.csv"], project, check=False)
    assert proc.returncode == 2
    assert "--axis seed=VALUE" in proc.stderr and "Traceback" not in proc.stderr


# --- scale-out profiles ---------------------------------------------------------------------------

@pytest.mark.integration
@pytest.mark.parametrize("profile,extra", [("workflow/profiles/slurm", []),
                                           ("workflow/profiles/local-gpu", ["--resources", "gpu=2"])])
def test_profiles_dry_run_the_whole_grid(project, profile, extra):
    _set_grid(project, method=["lifequant", "finetune"], seed=[0, 1])
    out = run(["snakemake", "--profile", profile, *extra, "-n", "all"], project)
    text = out.stdout + out.stderr
    assert f"Using profile {profile}" in text
    from tests.conftest import job_stats
    stats = job_stats(text)
    assert stats["pretrain"] == 2 and stats["lifelong"] == 4 and stats["aggregate"] == 1


def test_parallel_jobs_claim_different_gpus(tmp_path):
    """Two processes asking for a free GPU out of two get different ones; a third falls back to 0."""
    import subprocess
    import sys

    code = ("import sys, time; from pathlib import Path; from lq.train.device import claim_free_gpu; "
            f"print(claim_free_gpu(2, Path({str(tmp_path)!r})), flush=True); time.sleep(float(sys.argv[1]))")
    first = subprocess.Popen([sys.executable, "-c", code, "5"], stdout=subprocess.PIPE, text=True)
    got_first = first.stdout.readline().strip()
    second = subprocess.Popen([sys.executable, "-c", code, "5"], stdout=subprocess.PIPE, text=True)
    got_second = second.stdout.readline().strip()
    third = subprocess.run([sys.executable, "-c", code, "0"], capture_output=True, text=True)
    assert {got_first, got_second} == {"0", "1"}
    assert third.stdout.strip() == "0"
    first.kill()
    first.wait()
    # the killed process's lock is released by the kernel: its GPU is free again
    again = subprocess.run([sys.executable, "-c", code, "0"], capture_output=True, text=True)
    assert again.stdout.strip() == got_first
    second.kill()
    second.wait()


# --- a small real grid ----------------------------------------------------------------------------

@pytest.mark.integration
def test_a_small_grid_runs_and_aggregates_over_seeds(project):
    """2 methods x 2 seeds with 1-2 epochs: the comparison table, its figures and the report."""
    import pandas as pd

    for key, value in {"train.device": "cpu", "pretrain.epochs": 1, "pretrain.milestones": [1],
                       "qat8.epochs": 1, "qat8.milestones": [1], "lifelong.epochs": 1,
                       "lifelong.milestones": [1]}.items():
        set_param(project, key, value)
    _set_grid(project, method=["lifequant", "joint"], seed=[0, 1])
    run(["snakemake", "--cores", "2", "all"], project, timeout=3600)

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
