"""Fault injection: killed runs, two runs at once, odd paths, repeatability.

Kills: the whole pipeline is started through Snakemake or `dvc repro` and its process group is
sent SIGKILL at a seeded random moment of an uninterrupted run's duration (the moments are
stratified over the run, so the kills land in every stage). Right after the kill every output
that exists must be complete (it loads); the rerun must finish, leave no temporaries, and on CPU
end with the uninterrupted run's metrics, byte for byte. The default suite kills once (through
Snakemake); `make test-faults` (`pytest -m "" tests/integration/test_faults.py`) runs the full 24.

The project, its reference run (Snakemake) and a second run from scratch (DVC) are shared runs
(tests/integration/conftest.py: two_seed_fresh, two_seed_snakemake, two_seed_dvc); while each of
the two ran, a second run of the same tool was started on its workspace (the busy-workspace
tests). The kills and the odd-paths run are test bodies run with the shared runs.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from tests.conftest import METRICS, run, set_param
from tests.integration.conftest import LONG, SNAKEMAKE_ONE_CORE as SNAKEMAKE, background, in_background
from tests.integration.conftest import one_thread_env as env, two_seed_project as fast_project

pytestmark = pytest.mark.integration

OUTPUT_ROOTS = ("data", "models", "metrics", "plots", "results")
KILLS_DEFAULT = 1   # per tool
KILLS_FULL = 12     # per tool: 24 in all


def results(root: Path) -> dict[str, bytes]:
    """What a run ends with: every cell's metrics and the aggregate tables, as bytes."""
    files = sorted((root / "metrics").rglob("*.json")) + [root / "results" / "summary.csv"]
    return {str(p.relative_to(root)): p.read_bytes() for p in files}


@pytest.fixture(scope="module")
def fresh(two_seed_fresh) -> Path:
    """A project that has not run yet (copied for every kill)."""
    return two_seed_fresh


@pytest.fixture(scope="module")
def reference(two_seed_snakemake) -> tuple[Path, float]:
    """An uninterrupted Snakemake run from scratch, and how long it took."""
    return two_seed_snakemake.root, two_seed_snakemake.duration


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
                    index: int, count: int) -> tuple[str, str]:
    """One kill at a seeded moment of stratum `index` of `count`; returns what was hit, and a line
    saying when."""
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
    return hit, f"{tool} kill {index + 1}/{count} at {delay:.1f}s of {duration:.1f}s: in {hit}; rerun matches"


@background
def snakemake_kill(folder: Path, two_seed_fresh: Path, two_seed_snakemake) -> tuple[str, str]:
    """The default suite's kill and rerun through Snakemake."""
    reference = (two_seed_snakemake.root, two_seed_snakemake.duration)
    return kill_then_rerun("snakemake", two_seed_fresh, reference, folder, seed=2026, index=KILLS_DEFAULT - 1,
                           count=KILLS_DEFAULT)


@background
def dvc_kill(folder: Path, two_seed_fresh: Path, two_seed_snakemake) -> tuple[str, str]:
    """The default suite's kill and rerun through DVC."""
    reference = (two_seed_snakemake.root, two_seed_snakemake.duration)
    return kill_then_rerun("dvc", two_seed_fresh, reference, folder, seed=2026, index=KILLS_DEFAULT - 1,
                           count=KILLS_DEFAULT)


# Resume after a kill through both tools is in `make test` too (test_training.py kills Snakemake
# in task 1 and `dvc repro` in task 2); the kills at a random moment run with `make test-long`.
@pytest.mark.long
def test_a_snakemake_kill_at_a_random_moment_then_rerun_gives_the_uninterrupted_result(snakemake_kill):
    _, said = snakemake_kill.result()
    print(said)


@pytest.mark.long
def test_a_dvc_kill_at_a_random_moment_then_rerun_gives_the_uninterrupted_result(dvc_kill):
    _, said = dvc_kill.result()
    print(said)


@pytest.mark.slow
@pytest.mark.parametrize("tool", ["snakemake", "dvc"])
def test_kills_across_every_stage_then_rerun_give_the_uninterrupted_result(tool, fresh, reference, tmp_path):
    hits = []
    for i in range(KILLS_FULL):
        hit, said = kill_then_rerun(tool, fresh, reference, tmp_path, seed=7, index=i, count=KILLS_FULL)
        print(said)
        hits.append(hit)
    stages = {h.split("@")[0].split("-")[0] for h in hits}
    assert {"pretrain", "lifelong"} <= stages, hits  # the kills reached the long stages


# --- two runs at once ----------------------------------------------------------------------------

def test_a_second_snakemake_on_a_busy_workspace_fails_fast_and_the_first_finishes(two_seed_snakemake, two_seed_dvc):
    """The first run is the reference: a second Snakemake was started there once it held its lock."""
    first = two_seed_snakemake  # it finished: the shared run checks its exit status
    second, took = first.second, first.second_took
    assert second.returncode != 0
    # Snakemake refuses either at its lock or, when the running stage already wrote some of its
    # files, at their "incomplete" marks (it checks those first); both refuse before any job.
    said = second.stdout + second.stderr
    assert "Directory cannot be locked" in said or "seem to be incomplete" in said, said[-2000:]
    assert "Job stats" not in said and "rule " not in said.split("Building DAG of jobs...")[-1]
    assert took < 60, f"the second run took {took:.0f}s to give up"
    # the first ends with the results of the other run from scratch (DVC's)
    assert results(first.root) == results(two_seed_dvc.root)


def test_a_second_dvc_repro_on_a_busy_workspace_fails_fast_and_the_first_finishes(two_seed_dvc, reference):
    """The first run is `dvc repro` from scratch: a second was started there once it ran a stage."""
    first = two_seed_dvc  # it finished: the shared run checks its exit status
    second, took = first.second, first.second_took
    assert second.returncode != 0
    message = second.stdout + second.stderr
    assert "Unable to acquire lock" in message or "is busy" in message, message[-2000:]
    assert took < 60, f"the second run took {took:.0f}s to give up"
    assert results(first.root) == results(reference[0])
    assert "Data and pipelines are up to date." in first.status  # `dvc status` right after the run


# --- repeatability -------------------------------------------------------------------------------

def test_two_fresh_cpu_runs_give_identical_data_and_metrics(two_seed_dvc, reference):
    """A second run from scratch (through DVC this time) reproduces the first byte for byte."""
    root = two_seed_dvc.root
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


@pytest.mark.long
@in_background
def test_paths_with_spaces_and_quotes_work_end_to_end(tmp_path):
    """Project folder, image folder and class names with spaces and both quote characters."""
    root = fast_project(tmp_path / "it's a \"project\" folder")
    images = root / "raw images" / "o'brien \"set\""
    export_digits(images)
    set_param(root, "data.source", "folder")
    set_param(root, "data.root", str(images.relative_to(root)))
    set_param(root, "grid.seed", [0])
    set_param(root, "split.num_tasks", 2)  # the paths are the point: train as little as possible
    set_param(root, "lifelong.epochs", 1)
    out = subprocess.run(SNAKEMAKE, cwd=root, env=env(), capture_output=True, text=True, timeout=LONG)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    metrics = json.loads((root / METRICS).read_text())
    assert metrics["num_tasks"] == 2 and 0 <= metrics["average_accuracy"] <= 1
    classes = (root / "data" / "store" / "classes.txt").read_text().split("\n")
    assert "digit 0" in classes
    # DVC runs the same commands (its own quoting) from the same table: the data stages redo
    # nothing once Snakemake's outputs are committed, and a forced download reruns cleanly.
    run(["dvc", "commit", "-f"], root)
    forced = subprocess.run(["dvc", "repro", "-f", "-s", "download"], cwd=root, env=env(), capture_output=True,
                            text=True, timeout=LONG)
    assert forced.returncode == 0, forced.stdout[-3000:] + forced.stderr[-3000:]
    assert "Running stage 'download'" in forced.stdout
