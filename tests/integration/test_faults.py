"""Fault injection: killed runs, two runs at once, odd paths, repeatability.

Kills: the whole pipeline is started through Snakemake or `dvc repro` and its process group is
sent SIGKILL at a seeded random moment of an uninterrupted run's duration (the moments are
stratified over the run, so the kills land in every stage). Right after the kill every output
that exists must be complete (it loads); the rerun must finish, leave no temporaries, and on CPU
end with the uninterrupted run's metrics, byte for byte. The default suite kills twice (one per
tool); `pytest -m slow tests/test_faults.py` runs the full 24.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from tests.conftest import METRICS, new_project, run, set_param, tool_env

pytestmark = pytest.mark.integration

# Short training on CPU (bit-identical results are promised on CPU), two seeds so shared and
# per-cell stages both appear, one OpenMP thread per job for both tools.
FAST = {
    "train.device": "cpu", "grid.seed": [0, 1],
    "pretrain.epochs": 2, "pretrain.milestones": [1],
    "qat8.epochs": 1, "qat8.milestones": [1],
    "lifelong.epochs": 2, "lifelong.milestones": [1],
}
ENV = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
SNAKEMAKE = ["snakemake", "--cores", "1", "all"]
OUTPUT_ROOTS = ("data", "models", "metrics", "plots", "results")
LONG = 3600
KILLS_DEFAULT = 1   # per tool
KILLS_FULL = 12     # per tool: 24 in all


def env() -> dict[str, str]:
    return {**tool_env(), **ENV}


def fast_project(root: Path) -> Path:
    new_project(root)
    for key, value in FAST.items():
        set_param(root, key, value)
    run(["git", "commit", "-qam", "fast training"], root)
    return root


def results(root: Path) -> dict[str, bytes]:
    """What a run ends with: every cell's metrics and the aggregate tables, as bytes."""
    files = sorted((root / "metrics").rglob("*.json")) + [root / "results" / "summary.csv"]
    return {str(p.relative_to(root)): p.read_bytes() for p in files}


@pytest.fixture(scope="module")
def fresh(tmp_path_factory) -> Path:
    """A project that has not run yet (copied for every kill)."""
    return fast_project(tmp_path_factory.mktemp("fresh") / "repo")


@pytest.fixture(scope="module")
def reference(fresh, tmp_path_factory) -> tuple[Path, float]:
    """An uninterrupted Snakemake run from scratch, and how long it took."""
    root = shutil.copytree(fresh, tmp_path_factory.mktemp("reference") / "repo", symlinks=True)
    started = time.monotonic()
    proc = subprocess.run(SNAKEMAKE, cwd=root, env=env(), capture_output=True, text=True, timeout=LONG)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return root, time.monotonic() - started


def start_and_kill(cmd: list[str], root: Path, delay: float) -> tuple[bool, str]:
    """Run `cmd`; SIGKILL its whole process group after `delay` s. (killed?, its output)."""
    log = root.parent / "kill.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, cwd=root, env=env(), stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
        try:
            proc.wait(timeout=delay)
            killed = False
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            killed = True
    return killed, log.read_text()


def running_stage(root: Path, output: str) -> str:
    """The stage the kill interrupted: DVC's last 'Running stage', or Snakemake's newest log."""
    if "Running stage '" in output:
        return output.rsplit("Running stage '", 1)[1].split("'", 1)[0]
    logs = sorted((root / "logs").glob("*.log"), key=lambda p: p.stat().st_mtime) if (root / "logs").exists() else []
    return logs[-1].stem if logs else "(before the first stage)"


def assert_every_output_is_complete(root: Path) -> None:
    """Each output file under its final name is whole: it parses or loads."""
    for top in OUTPUT_ROOTS:
        for path in (root / top).rglob("*"):
            if not path.is_file() or path.name.startswith("."):
                continue
            if path.suffix == ".pt":
                torch.load(path, map_location="cpu", weights_only=True)
            elif path.suffix == ".json":
                json.loads(path.read_text())
            elif path.suffix == ".csv":
                pd.read_csv(path)
            elif path.suffix == ".npy":
                np.load(path)
            elif path.suffix == ".png":
                assert path.read_bytes().endswith(b"IEND\xaeB`\x82"), f"{path}: truncated PNG"


def assert_no_temporaries(root: Path) -> None:
    left = [p for top in OUTPUT_ROOTS for p in (root / top).rglob(".*.tmp")]
    assert not left, f"temporaries left behind: {left}"


def kill_then_rerun(tool: str, fresh: Path, reference: tuple[Path, float], tmp_path: Path, seed: int,
                    index: int, count: int) -> str:
    """One kill at a seeded moment of stratum `index` of `count`; returns what was hit."""
    ref_root, duration = reference
    root = shutil.copytree(fresh, tmp_path / f"{tool}-{index}" / "repo", symlinks=True)
    rng = random.Random(f"{seed}-{tool}-{index}")
    delay = duration * (index + rng.uniform(0.05, 0.95)) / count
    cmd = SNAKEMAKE if tool == "snakemake" else ["dvc", "repro"]
    killed, output = start_and_kill(cmd, root, delay)
    hit = running_stage(root, output) if killed else "(finished before the kill)"
    assert_every_output_is_complete(root)

    if tool == "snakemake":
        run(["snakemake", "--unlock"], root)  # Snakemake's lock outlives a SIGKILL by design
        rerun = subprocess.run([*SNAKEMAKE, "--rerun-incomplete"], cwd=root, env=env(), capture_output=True,
                               text=True, timeout=LONG)
    else:
        rerun = subprocess.run(["dvc", "repro"], cwd=root, env=env(), capture_output=True, text=True, timeout=LONG)
    assert rerun.returncode == 0, f"rerun after a kill in {hit} failed:\n{rerun.stdout[-3000:]}\n{rerun.stderr[-3000:]}"
    assert results(root) == results(ref_root), f"after a kill at {delay:.1f}s in {hit}: results differ"
    assert_no_temporaries(root)
    if tool == "dvc":
        assert "Data and pipelines are up to date." in run(["dvc", "status"], root).stdout
    print(f"{tool} kill {index + 1}/{count} at {delay:.1f}s of {duration:.1f}s: in {hit}; rerun matches")
    return hit


@pytest.mark.parametrize("tool", ["snakemake", "dvc"])
def test_a_kill_at_a_random_moment_then_rerun_gives_the_uninterrupted_result(tool, fresh, reference, tmp_path):
    kill_then_rerun(tool, fresh, reference, tmp_path, seed=2026, index=KILLS_DEFAULT - 1, count=KILLS_DEFAULT)


@pytest.mark.slow
@pytest.mark.parametrize("tool", ["snakemake", "dvc"])
def test_kills_across_every_stage_then_rerun_give_the_uninterrupted_result(tool, fresh, reference, tmp_path):
    hits = [kill_then_rerun(tool, fresh, reference, tmp_path, seed=7, index=i, count=KILLS_FULL)
            for i in range(KILLS_FULL)]
    stages = {h.split("@")[0].split("-")[0] for h in hits}
    assert {"pretrain", "lifelong"} <= stages, hits  # the kills reached the long stages


# --- two runs at once ----------------------------------------------------------------------------

def wait_for(condition, timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.2)


def test_a_second_snakemake_on_a_busy_workspace_fails_fast_and_the_first_finishes(fresh, reference, tmp_path):
    root = shutil.copytree(fresh, tmp_path / "repo", symlinks=True)
    with open(tmp_path / "first.log", "w") as out:
        first = subprocess.Popen(SNAKEMAKE, cwd=root, env=env(), stdout=out, stderr=subprocess.STDOUT)
        wait_for(lambda: (root / ".snakemake" / "locks").exists() and any((root / ".snakemake" / "locks").iterdir()))
        started = time.monotonic()
        second = subprocess.run(SNAKEMAKE, cwd=root, env=env(), capture_output=True, text=True, timeout=120)
        took = time.monotonic() - started
        assert first.wait(timeout=LONG) == 0, (tmp_path / "first.log").read_text()[-3000:]
    assert second.returncode != 0
    # Snakemake refuses either at its lock or, when the running stage already wrote some of its
    # files, at their "incomplete" marks (it checks those first); both refuse before any job.
    said = second.stdout + second.stderr
    assert "Directory cannot be locked" in said or "seem to be incomplete" in said, said[-2000:]
    assert "Job stats" not in said and "rule " not in said.split("Building DAG of jobs...")[-1]
    assert took < 60, f"the second run took {took:.0f}s to give up"
    assert results(root) == results(reference[0])


def test_a_second_dvc_repro_on_a_busy_workspace_fails_fast_and_the_first_finishes(fresh, reference, tmp_path):
    root = shutil.copytree(fresh, tmp_path / "repo", symlinks=True)
    with open(tmp_path / "first.log", "w") as out:
        first = subprocess.Popen(["dvc", "repro"], cwd=root, env=env(), stdout=out, stderr=subprocess.STDOUT)
        wait_for(lambda: "Running stage" in (tmp_path / "first.log").read_text())
        started = time.monotonic()
        second = subprocess.run(["dvc", "repro"], cwd=root, env=env(), capture_output=True, text=True, timeout=120)
        took = time.monotonic() - started
        assert first.wait(timeout=LONG) == 0, (tmp_path / "first.log").read_text()[-3000:]
    assert second.returncode != 0
    message = second.stdout + second.stderr
    assert "Unable to acquire lock" in message or "is busy" in message, message[-2000:]
    assert took < 60, f"the second run took {took:.0f}s to give up"
    assert results(root) == results(reference[0])
    assert "Data and pipelines are up to date." in run(["dvc", "status"], root).stdout


# --- repeatability -------------------------------------------------------------------------------

def test_two_fresh_cpu_runs_give_identical_data_and_metrics(fresh, reference, tmp_path):
    """A second run from scratch (through DVC this time) reproduces the first byte for byte."""
    root = shutil.copytree(fresh, tmp_path / "repo", symlinks=True)
    proc = subprocess.run(["dvc", "repro"], cwd=root, env=env(), capture_output=True, text=True, timeout=LONG)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert results(root) == results(reference[0])
    for folder in ("data/store", "data/split", "data/replay", "data/counts"):
        a = {p.relative_to(root / folder): p.read_bytes() for p in sorted((root / folder).rglob("*")) if p.is_file()}
        b = {p.relative_to(reference[0] / folder): p.read_bytes()
             for p in sorted((reference[0] / folder).rglob("*")) if p.is_file() and p.name != ".snakemake_timestamp"}
        assert a == b, folder
    metrics = json.loads((root / METRICS).read_text())
    assert metrics["seed"] == 0 and metrics["method"] == "lifequant"


# --- paths with spaces and quotes ----------------------------------------------------------------

def export_digits(root: Path) -> None:
    """The embedded digits as a PNG folder tree (a real image source in the folder layout)."""
    from PIL import Image

    from lq.data.sources import load_source

    store = load_source("digits", root=str(root), test_fraction=0.2, seed=123, download=False)
    for i, (image, label, image_id) in enumerate(zip(store.images, store.labels, store.ids)):
        split = "train" if image_id.startswith("train/") else "test"
        folder = root / split / f"digit {store.classes[label]}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image[..., 0]).save(folder / f"{i:04d}.png")


def test_paths_with_spaces_and_quotes_work_end_to_end(tmp_path):
    """Project folder, image folder and class names with spaces and both quote characters."""
    root = fast_project(tmp_path / "it's a \"project\" folder")
    images = root / "raw images" / "o'brien \"set\""
    export_digits(images)
    set_param(root, "data.source", "folder")
    set_param(root, "data.root", str(images.relative_to(root)))
    set_param(root, "grid.seed", [0])
    out = subprocess.run(SNAKEMAKE, cwd=root, env=env(), capture_output=True, text=True, timeout=LONG)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    metrics = json.loads((root / METRICS).read_text())
    assert metrics["num_tasks"] == 3 and 0 <= metrics["average_accuracy"] <= 1
    classes = (root / "data" / "store" / "classes.txt").read_text().split("\n")
    assert "digit 0" in classes
    # DVC runs the same commands (its own quoting) from the same table: the data stages redo
    # nothing once Snakemake's outputs are committed, and a forced download reruns cleanly.
    run(["dvc", "commit", "-f"], root)
    forced = subprocess.run(["dvc", "repro", "-f", "-s", "download"], cwd=root, env=env(), capture_output=True,
                            text=True, timeout=LONG)
    assert forced.returncode == 0, forced.stdout[-3000:] + forced.stderr[-3000:]
    assert "Running stage 'download'" in forced.stdout
