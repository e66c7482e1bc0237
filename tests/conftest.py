"""Shared fixtures: a throw-away copy of the repository where the real tools run."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
# One thread per process, here and in every tool the tests start (unless set otherwise): the
# integration tests run two pipelines and a test at once (tests/integration/conftest.py), and
# OpenMP threads that outnumber the cores spin-wait, slowing training many times over.
for _name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_name, "1")
# What a clone holds; generated outputs, caches and the venv stay behind.
PROJECT_FILES = ["Snakefile", "dvc.yaml", "params.yaml", "workflow", "lq", ".dvcignore", ".gitignore",
                 "data/.gitignore", "models/.gitignore", "results/.gitignore", "pyproject.toml"]
# The default grid cell (params.yaml: grid = lifequant, w4a4, proxq, seed 0) and its outputs.
CELL = "seed0/proxq/lifequant-w4a4"
CELL_AXES = ["--axis", "method=lifequant", "--axis", "bits=w4a4", "--axis", "quantizer=proxq", "--axis", "seed=0"]
PRETRAIN = "models/seed0/pretrain.pt"
QAT8 = "models/seed0/proxq/qat8.pt"
LIFELONG = f"models/{CELL}"
METRICS = f"metrics/{CELL}.json"
LIFELONG_CURVE = f"plots/{CELL}/lifelong_curve.csv"
# Compiled bytecode travels with the copy (valid there: copy2 keeps the sources' modification
# times), so the first lq step of each of the suite's ~45 projects does not compile lq again.
IGNORE = shutil.ignore_patterns(".snakemake_timestamp")
# What every test project changes from the shipped params.yaml, to keep the suite fast: a
# ResNet-8 (2.6x faster steps than ResNet-20; the pipeline's mechanics are the same for every
# registered model, and tests/unit/test_models.py covers each model) and a 2 x 2 PTQ sweep with
# w8a8 and w32a32 in it (the shipped 6 x 4 sweep costs as much as a short lifelong stage).
TEST_SCALE = {"model.arch": "resnet8", "ptq.weight_bits": [8, 32], "ptq.act_bits": [8, 32],
              "ptq.calibration_images": 128}


def tool_env() -> dict[str, str]:
    """The environment with this interpreter's bin folder first, so `python -m lq` is this lq."""
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.pop("PYTHONPATH", None)
    env.pop("LQ_WORKSPACE_OWNER", None)  # a run's owner is for its own children (lq/workspace.py)
    env["DVC_NO_ANALYTICS"] = "1"  # no usage-report process after every dvc command
    env["PYTHONHASHSEED"] = "0"
    return env


def run(cmd: list[str], cwd: Path, check: bool = True, timeout: int = 900) -> subprocess.CompletedProcess:
    """Run a real tool; on failure show its output in the assertion."""
    proc = subprocess.run(cmd, cwd=cwd, env=tool_env(), capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}")
    return proc


def copy_project(dest: Path) -> Path:
    for name in PROJECT_FILES:
        src = REPO / name
        if src.is_dir():
            shutil.copytree(src, dest / name, ignore=IGNORE)
        else:
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / name)
    set_params(dest, TEST_SCALE)
    return dest


def new_project(root: Path) -> Path:
    """A copy of the repo at `root`, as a fresh git + DVC repository."""
    copy_project(root)
    for cmd in (["git", "init", "-q"], ["git", "config", "user.email", "test@example.com"],
                ["git", "config", "user.name", "lq tests"], ["dvc", "init", "-q"], ["git", "add", "-A"],
                ["git", "commit", "-qm", "project"]):
        run(cmd, root)
    return root


@pytest.fixture
def project(tmp_path: Path) -> Path:
    return new_project(tmp_path / "repo")


def job_stats(snakemake_output: str) -> dict[str, int]:
    """Rule -> job count from the 'Job stats' table Snakemake prints ({} when nothing is to do)."""
    if "Job stats:" not in snakemake_output:
        assert "Nothing to be done" in snakemake_output, snakemake_output
        return {}
    stats = snakemake_output.split("Job stats:", 1)[1].split("total", 1)[0]
    return {name: int(n) for name, n in (row.split() for row in stats.splitlines()[3:] if row.strip())}


def planned_jobs(root: Path, *targets: str) -> dict[str, int]:
    """Rule -> job count of a Snakemake dry run."""
    return job_stats(run(["snakemake", "-n", *targets], root).stdout)


def set_param(root: Path, key: str, value) -> None:
    """Edit one key of params.yaml the way a user would (keeping comments elsewhere intact)."""
    import yaml

    path = root / "params.yaml"
    data = yaml.safe_load(path.read_text())
    node = data
    *parents, last = key.split(".")
    for part in parents:
        node = node[part]
    node[last] = value
    path.write_text(yaml.safe_dump(data, sort_keys=False))


def default_plan_stages() -> list:
    """The stage table's stages that the shipped parameters plan (the self-supervised ones are off
    by default: `grid.ssl: []`)."""
    from lq.pipeline import load_table

    return [stage for stage in load_table()[1] if "ssl" not in stage.axes]


def this_thread_only(fake, real):
    """`fake` for calls from the calling thread, `real` for every other one: a test that patches a
    module-wide function (subprocess.run, Path.write_text) must not reach the shared runs, which call
    the same functions from background threads meanwhile (tests/integration/conftest.py)."""
    import threading

    owner = threading.get_ident()

    def call(*args, **kwargs):
        return (fake if threading.get_ident() == owner else real)(*args, **kwargs)

    return call


def set_params(root: Path, values: dict) -> None:
    """Edit several keys of params.yaml at once, keeping its comments and layout."""
    from lq.overlay import write_through

    write_through(root / "params.yaml", [(key, None, value) for key, value in values.items()])


def tree_bytes(folder: Path) -> dict[str, bytes]:
    """Every file under `folder` (Snakemake's timestamp markers aside) with its bytes."""
    return {
        str(p.relative_to(folder)): p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != ".snakemake_timestamp"
    }
