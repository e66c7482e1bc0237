"""A missing or damaged file inside a stage's output folder, seen by the real tools.

Snakemake declares the files inside each folder output (and `all` asks for every output), so a
deleted checkpoint makes `snakemake -n` plan its stage; DVC hashes folders, so `dvc status` flags
the stage. A change Snakemake cannot see (same size, mtime kept) is caught by the manifest check
of the next stage that reads the file, whose message names the stage to rerun; the command it
suggests is run here too. Each test works on its own clone of the shared run `finished`, its
body queued with the shared runs (tests/integration/conftest.py).
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from tests.conftest import LIFELONG, METRICS, planned_jobs, run, tool_env
from tests.integration.conftest import clone, in_background, shared_run

pytestmark = pytest.mark.integration

DVC_CELL = "lifequant-w4a4-proxq-0"
TASK1 = f"{LIFELONG}/task1.pt"
FOLDERS = ("data/store", "data/split", "data/replay", "data/counts/lifequant", LIFELONG)


@shared_run
def finished(folder: Path, trained: Path) -> Path:
    """The shared Snakemake run `trained`, recorded by `dvc commit`: both tools see it up to date."""
    root = clone(trained, folder / "repo")
    run(["dvc", "commit", "-f", "-q"], root)
    run(["snakemake", "--cores", "1", "--touch", "all"], root)
    assert planned_jobs(root, "all") == {}
    assert "up to date" in run(["dvc", "status"], root).stdout
    return root


def flip_byte(path: Path, keep_mtime: bool = False) -> None:
    """One changed byte, same size; with `keep_mtime` not even the modification time moves."""
    stat = path.stat()
    data = bytearray(path.read_bytes())
    data[-100] ^= 0xFF
    path.write_bytes(bytes(data))
    if keep_mtime:
        os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))


def test_every_folder_output_holds_exactly_its_manifest_files(finished):
    for folder in FOLDERS:
        listed = json.loads((finished / folder / "MANIFEST.json").read_text())["files"]
        present = {p.name for p in (finished / folder).iterdir()} - {"MANIFEST.json", ".snakemake_timestamp"}
        assert set(listed) == present, folder
    assert sorted(json.loads((finished / LIFELONG / "MANIFEST.json").read_text())["files"]) == ["task0.pt", "task1.pt", "task2.pt"]


@in_background
def test_snakemake_reruns_lifelong_when_a_checkpoint_inside_its_folder_is_deleted(tmp_path, finished):
    project = clone(finished, tmp_path / "repo")
    metrics = (project / METRICS).read_bytes()
    (project / TASK1).unlink()
    dry = run(["snakemake", "-n", "all"], project).stdout
    assert planned_jobs(project, "all") == {"lifelong": 1, "evaluate": 1, "aggregate": 1, "ptq_lifelong": 1, "all": 1}
    assert f"Missing output files: {TASK1}" in dry
    # The command of the issue now rebuilds the checkpoint first instead of failing.
    run(["snakemake", "--cores", "1", "-R", "evaluate", "all"], project)
    assert (project / TASK1).exists()
    assert (project / METRICS).read_bytes() == metrics  # CPU: the same numbers as before
    assert planned_jobs(project, "all") == {}


@in_background
def test_a_silently_damaged_checkpoint_stops_evaluate_with_the_lifelong_rerun_command(tmp_path, finished):
    project = clone(finished, tmp_path / "repo")
    metrics = (project / METRICS).read_bytes()
    flip_byte(project / TASK1, keep_mtime=True)
    assert planned_jobs(project, "all") == {}  # nothing for Snakemake to see: same size and time
    proc = run(["snakemake", "--cores", "1", "-R", "evaluate", "all"], project, check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert f"{TASK1} differs from what stage 'lifelong' wrote (sha256 " in out
    hint = f"snakemake --cores all --forcerun {LIFELONG}/MANIFEST.json all"
    assert f"`{hint}`" in out and f"`dvc repro -f -s lifelong@{DVC_CELL}` then `dvc repro`" in out
    # Snakemake removes a job's outputs before running it: the old metrics are gone.
    assert not (project / METRICS).exists()
    # The suggested command repairs the cell (on one core, as the first run: on CPU the numbers
    # are byte-identical only for the same thread count).
    run(hint.replace("--cores all", "--cores 1").split(), project)
    assert (project / METRICS).read_bytes() == metrics


@in_background
def test_a_flipped_byte_in_the_store_is_flagged_by_dvc_and_stops_the_next_reader_under_snakemake(tmp_path, finished):
    project = clone(finished, tmp_path / "repo")
    flip_byte(project / "data/store/images.npy")
    status = json.loads(run(["dvc", "status", "--json"], project).stdout)
    assert {"changed outs": {"data/store": "modified"}} in status["download"]
    # Snakemake sees a newer file, not a damaged one: it plans the stages that read the store.
    assert {"split", "pretrain"} <= set(planned_jobs(project, "all"))
    proc = run(["snakemake", "--cores", "1", "all"], project, check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "data/store/images.npy differs from what stage 'download' wrote (sha256 " in out
    assert "`snakemake --cores all --forcerun download all`" in out and "`dvc repro -f -s download` then `dvc repro`" in out


@in_background
def test_dvc_flags_a_deleted_checkpoint_and_a_forced_evaluate_names_lifelong(tmp_path, finished):
    project = clone(finished, tmp_path / "repo")
    metrics = (project / METRICS).read_bytes()
    (project / TASK1).unlink()
    status = json.loads(run(["dvc", "status", "--json"], project).stdout)
    assert {"changed outs": {LIFELONG: "modified"}} in status[f"lifelong@{DVC_CELL}"]
    proc = run(["dvc", "repro", "-f", "-s", f"evaluate@{DVC_CELL}"], project, check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert f"{TASK1} is missing: stage 'lifelong' wrote it" in out
    assert f"`dvc repro -f -s lifelong@{DVC_CELL}` then `dvc repro`" in out
    # The suggested commands, with the thread count the Snakemake run trained with (--cores 1): on
    # CPU the floats, and so the metrics, are the same only for the same number of threads.
    one_thread = {**tool_env(), "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    for cmd in (["dvc", "repro", "-f", "-s", f"lifelong@{DVC_CELL}"], ["dvc", "repro"]):
        subprocess.run(cmd, cwd=project, env=one_thread, check=True, capture_output=True, timeout=1800)
    assert (project / TASK1).exists()
    assert (project / METRICS).read_bytes() == metrics
    assert "up to date" in run(["dvc", "status"], project).stdout
