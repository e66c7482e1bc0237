"""Scale-out through DVC: a remote shared by two clones, and DVC's experiment queue.

The tests start from `two_seed_dvc` (two seeds, short training, made by `dvc repro`) with its
results committed, as the README's "Scale out" recipe has them:
- a local folder as the remote: `dvc push` from one clone, `git clone` + `dvc pull` into another
  gives the same files and a clean `dvc status`;
- two queued experiments (`dvc exp run --queue -S ...`, `dvc queue start -j 2`) run side by side
  and `dvc exp show` / `dvc metrics diff` list them with their metrics. Each changes LifeQuant's
  lambda on the grid cut to seed 0, so only that cell's lifelong, evaluate and aggregate rerun.
"""

from __future__ import annotations

import csv
import io
import json
import re
import subprocess
import time
from pathlib import Path

import psutil
import pytest

from tests.conftest import METRICS, QAT8, run, tree_bytes
from tests.integration.conftest import LONG, clone, in_background, one_thread_env

pytestmark = pytest.mark.integration

# What `dvc pull` restores (DVC-tracked outputs) and what git carries (metrics, plots, results).
DVC_OUTPUTS = ["data", "models"]
GIT_OUTPUTS = ["metrics", "plots", "results"]
EXPERIMENTS = {"lambda10": "10", "lambda1000": "1000"}
LAMBDA = "lifelong.methods.lifequant.ll_lambda"
CELL_METRICS = f"{METRICS}:average_accuracy"


def committed(two_seed_dvc, root: Path) -> Path:
    """A clone of `two_seed_dvc` with dvc.lock and the git-tracked results committed."""
    clone(two_seed_dvc.root, root)
    run(["git", "add", "-A"], root)
    run(["git", "commit", "-qm", "results of dvc repro"], root)
    return root


def test_dvc_push_then_git_clone_and_dvc_pull_give_the_same_files(two_seed_dvc, tmp_path):
    root = committed(two_seed_dvc, tmp_path / "repo")
    remote = tmp_path / "remote"
    run(["dvc", "remote", "add", "-d", "shared", str(remote)], root)
    run(["git", "commit", "-qam", "a shared remote"], root)
    pushed = run(["dvc", "push"], root).stdout
    assert re.search(r"\d+ files? pushed", pushed), pushed
    assert "Cache and remote 'shared' are in sync." in run(["dvc", "status", "--cloud"], root).stdout

    other = tmp_path / "other"
    run(["git", "clone", "-q", str(root), str(other)], tmp_path)
    assert not (other / QAT8).exists()
    run(["dvc", "pull"], other)
    for folder in DVC_OUTPUTS + GIT_OUTPUTS:
        mine, theirs = tree_bytes(root / folder), tree_bytes(other / folder)
        assert mine and mine.keys() == theirs.keys(), folder
        assert [name for name in mine if mine[name] != theirs[name]] == [], folder
    assert "Data and pipelines are up to date." in run(["dvc", "status"], other).stdout
    assert "Cache and remote 'shared' are in sync." in run(["dvc", "status", "--cloud"], other).stdout


def _exp_rows(root: Path) -> list[dict[str, str]]:
    shown = run(["dvc", "exp", "show", "--csv", "--force"], root).stdout
    return list(csv.DictReader(io.StringIO(shown)))


def _queue_states(root: Path) -> dict[str, str]:
    """Experiment name -> its state in `dvc queue status` (Queued, Running, Success, Failed)."""
    lines = run(["dvc", "queue", "status"], root).stdout.splitlines()
    return {name: line.split()[-1] for line in lines for name in EXPERIMENTS if f" {name} " in f" {line} "}


def _times(log: str) -> list[int]:
    """Seconds of the day of the `HH:MM:SS stage: ...` lines lq logged."""
    return [int(h) * 3600 + int(m) * 60 + int(s) for h, m, s in re.findall(r"^(\d\d):(\d\d):(\d\d) \w+: ", log, re.M)]


def _stop_workers(root: Path) -> None:
    """End DVC's queue workers of this project, by PID (they live on after `dvc queue start`)."""
    run(["dvc", "queue", "stop"], root, check=False)
    for proc in psutil.process_iter(["pid", "cmdline", "cwd"]):
        try:
            if str(root) in (proc.info["cwd"] or "") and "dvc" in " ".join(proc.info["cmdline"] or []):
                proc.terminate()
        except psutil.Error:
            pass


@pytest.mark.long
@in_background
def test_queued_experiments_run_side_by_side_and_are_listed_with_their_metrics(tmp_path, two_seed_dvc):
    root = committed(two_seed_dvc, tmp_path / "repo")
    for name, value in EXPERIMENTS.items():
        run(["dvc", "exp", "run", "--queue", "-n", name, "-S", f"{LAMBDA}={value}", "-S", "grid.seed=[0]"], root)
    env = one_thread_env()
    try:
        subprocess.run(["dvc", "queue", "start", "-j", "2"], cwd=root, env=env, check=True, capture_output=True,
                       text=True, timeout=600)  # it waits for its workers to start: slow on a busy machine
        deadline = time.monotonic() + LONG
        while (states := _queue_states(root)) != {n: "Success" for n in EXPERIMENTS}:
            if "Failed" in states.values():
                logs = "\n".join(run(["dvc", "queue", "logs", n], root, check=False).stdout[-3000:] for n in EXPERIMENTS)
                raise AssertionError(f"an experiment failed: {states}\n{logs}")
            assert time.monotonic() < deadline, states
            time.sleep(5)
        logs = {n: run(["dvc", "queue", "logs", n], root).stdout for n in EXPERIMENTS}
    finally:
        _stop_workers(root)

    # side by side: each ran while the other did (lq's log lines carry the time of day)
    spans = {n: (min(_times(log)), max(_times(log))) for n, log in logs.items()}
    assert max(start for start, _ in spans.values()) < min(end for _, end in spans.values()), spans
    for log in logs.values():  # only the changed cell reran
        assert "Running stage 'lifelong@lifequant-w4a4-proxq-0'" in log and "Running stage 'pretrain" not in log

    rows = {row["Experiment"]: row for row in _exp_rows(root)}
    for name, value in EXPERIMENTS.items():
        row = rows[name]
        assert row.get(LAMBDA, row.get(f"params.yaml:{LAMBDA}")) == value  # DVC prefixes the file when a name is ambiguous
        made = json.loads(run(["git", "show", f"{row['rev']}:{METRICS}"], root).stdout)
        assert float(row[CELL_METRICS]) == pytest.approx(made["average_accuracy"])
        diff = run(["dvc", "metrics", "diff", "HEAD", name, "--json"], root).stdout
        assert json.loads(diff)[METRICS]["average_accuracy"]["new"] == made["average_accuracy"]
    assert rows["lambda10"][CELL_METRICS] != rows["lambda1000"][CELL_METRICS]
