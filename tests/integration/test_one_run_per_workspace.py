"""Snakemake and DVC on one workspace at once: the second is refused before it deletes anything.

A Snakemake run holds DVC's repository lock and lq's workspace lease (lq/workspace.py) from its
`onstart` to its end, so `dvc repro` started meanwhile gives up at DVC's lock, a step started by
hand is refused by the lease with a message naming the Snakemake run, and the Snakemake run ends
with the result of an undisturbed one. The other way round, Snakemake refuses to start while
`dvc repro` runs.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from lq.workspace import LEASE_FILE
from tests.conftest import METRICS, run, tool_env
from tests.integration.conftest import LONG, clone, in_background, one_thread_env, wait_for

pytestmark = pytest.mark.integration


def upstream_files(root: Path) -> dict[Path, tuple[int, int]]:
    """Size and mtime of every file the running Snakemake has no reason to touch: the outputs of
    the stages before lifelong, the ones `dvc repro` (which has recorded nothing) would delete
    first. The lifelong job's own outputs (data/replay_used, models/.../lifequant-w4a4) change
    while Snakemake runs, so they are left out."""
    files = [p for folder in ("data/store", "data/split", "data/replay", "data/counts") for p in (root / folder).rglob("*")]
    files += (root / "models").rglob("pretrain.pt")
    files += (root / "models").rglob("qat8.pt")
    return {p.relative_to(root): (p.stat().st_size, p.stat().st_mtime_ns) for p in files if p.is_file()}


def lease(root: Path) -> dict:
    text = (root / LEASE_FILE).read_text() if (root / LEASE_FILE).exists() else ""
    return json.loads(text) if text else {}


@in_background
def test_dvc_and_a_step_by_hand_are_refused_while_snakemake_runs(tmp_path, trained_upstream, trained):
    root = clone(trained_upstream, tmp_path / "repo")
    with open(tmp_path / "snakemake.log", "w") as log:
        snakemake = subprocess.Popen(["snakemake", "--cores", "1", "all"], cwd=root, env=one_thread_env(),
                                     stdout=log, stderr=subprocess.STDOUT)
        wait_for(lambda: snakemake.poll() is not None or lease(root).get("tool") == "snakemake")
        assert lease(root)["pid"] == snakemake.pid, (tmp_path / "snakemake.log").read_text()
        before = upstream_files(root)
        assert len(before) > 20 and Path("models/seed0/pretrain.pt") in before, sorted(before)

        repro = run(["dvc", "repro"], root, check=False)
        assert repro.returncode != 0 and "Unable to acquire lock" in repro.stderr, repro.stdout + repro.stderr
        by_hand = run(["python", "-m", "lq", "split", "--store", "data/store", "--split", str(tmp_path / "split")],
                      root, check=False)
        assert by_hand.returncode == 2, by_hand.stderr
        assert f"in use by another run: snakemake (pid {snakemake.pid}" in by_hand.stderr
        assert not (tmp_path / "split").exists()
        assert upstream_files(root) == before  # nothing deleted or rewritten

        assert snakemake.wait(timeout=LONG) == 0, (tmp_path / "snakemake.log").read_text()[-3000:]
    assert (root / METRICS).read_bytes() == (trained / METRICS).read_bytes()
    assert lease(root) == {}  # given back at the end
    assert run(["dvc", "status"], root).returncode == 0  # DVC's lock too


@in_background
def test_snakemake_is_refused_while_dvc_repro_runs(tmp_path, trained_upstream):
    root = clone(trained_upstream, tmp_path / "repo")  # DVC has recorded nothing: it starts from download
    with open(tmp_path / "dvc.log", "w") as log:
        repro = subprocess.Popen(["dvc", "repro"], cwd=root, env=one_thread_env(), stdout=log, stderr=subprocess.STDOUT,
                                 start_new_session=True)
        try:
            wait_for(lambda: repro.poll() is not None or "Running stage" in (tmp_path / "dvc.log").read_text())
            time.sleep(1)
            started = time.monotonic()
            snakemake = subprocess.run(["snakemake", "--cores", "1", "all"], cwd=root, env=tool_env(),
                                       capture_output=True, text=True, timeout=300)
            said = snakemake.stdout + snakemake.stderr
            assert snakemake.returncode != 0, said[-3000:]
            # DVC's lock while DVC does its own bookkeeping; lq's lease while a stage runs (DVC
            # lets its lock go around a stage's command)
            assert ("DVC is running in" in said
                    or f"in use by another run: dvc (pid {repro.pid}" in said), said[-3000:]
            assert time.monotonic() - started < 120
            assert lease(root).get("tool") != "snakemake"
        finally:
            os.killpg(repro.pid, signal.SIGKILL)  # DVC and the stage it runs
            repro.wait(timeout=120)
