"""Snakemake never runs more threads at once than the machine has, whatever `--cores` says."""

from __future__ import annotations

import os
import re
import shutil

import pytest

from tests.conftest import copy_project, run

pytestmark = pytest.mark.integration


@pytest.mark.skipif(shutil.which("taskset") is None, reason="needs taskset (util-linux) to pin Snakemake to one CPU")
def test_cores_beyond_the_machine_are_capped_and_each_job_gets_at_most_them(tmp_path):
    root = copy_project(tmp_path / "repo")
    # pinned to one CPU, `--cores 8` must not give a training job 2 threads (its declared cpus)
    plan = run(["taskset", "-c", "0", "snakemake", "-n", "-p", "--cores", "8", "all"], root)
    said = plan.stdout + plan.stderr
    assert "--cores 8 is more than this machine's 1 CPUs" in said
    threads = [int(n) for n in re.findall(r"export OMP_NUM_THREADS=(\d+)", said)]
    assert len(threads) == 9 and set(threads) == {1}, threads  # one job per stage, all capped
    # with as many cores as the machine has or fewer, the stage table's threads apply
    if len(os.sched_getaffinity(0)) < 2:
        return
    plan = run(["taskset", "-c", "0,1", "snakemake", "-n", "-p", "--cores", "2", "all"], root)
    assert "is more than this machine's" not in plan.stdout + plan.stderr
    assert set(int(n) for n in re.findall(r"export OMP_NUM_THREADS=(\d+)", plan.stdout)) == {1, 2}
