"""Snakemake never runs more threads at once than the machine has, whatever `--cores` says."""

from __future__ import annotations

import os
import re
import shutil

import pytest

from tests.conftest import copy_project, default_plan_stages, run

pytestmark = pytest.mark.integration
STAGES = default_plan_stages()
TWO_THREADS = ["--set-threads", "pretrain=2", "qat8=2", "lifelong=2", "evaluate=2"]


def planned_threads(said: str) -> list[int]:
    return [int(n) for n in re.findall(r"export OMP_NUM_THREADS=(\d+)", said)]


@pytest.mark.skipif(shutil.which("taskset") is None, reason="needs taskset (util-linux) to pin Snakemake to one CPU")
def test_cores_beyond_the_machine_are_capped_and_each_job_gets_at_most_them(tmp_path):
    root = copy_project(tmp_path / "repo")
    # pinned to one CPU, `--cores 8` must not give a training job the 2 threads it asks for
    plan = run(["taskset", "-c", "0", "snakemake", "-n", "-p", "--cores", "8", "all", *TWO_THREADS], root)
    said = plan.stdout + plan.stderr
    assert "--cores 8 is more than this machine's 1 CPUs" in said
    assert planned_threads(said) == [1] * len(STAGES)  # one job per stage, all capped
    if len(os.sched_getaffinity(0)) < 2:
        return
    # with no more cores than the machine has, the jobs get the threads they ask for
    plan = run(["taskset", "-c", "0,1", "snakemake", "-n", "-p", "--cores", "2", "all", *TWO_THREADS], root)
    assert "is more than this machine's" not in plan.stdout + plan.stderr
    assert sorted(planned_threads(plan.stdout)) == [1] * (len(STAGES) - 4) + [2] * 4
    # by default every job takes one thread (bench/THREADS.md: the fastest on a grid)
    assert set(planned_threads(run(["snakemake", "-n", "-p", "--cores", "2", "all"], root).stdout)) == {1}
