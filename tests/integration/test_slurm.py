"""The SLURM profile against a real slurmctld: `make test-slurm` (marker `slurm`, not in `make test`).

A one-node cluster (tests/integration/local_slurm.py: Debian's slurm-wlm and munge, installed
with apt-get when missing, no accounting database, CPUs only) runs the default pipeline on digits
with short training (`two_seed_fresh`, grid cut to seed 0 by an overlay) through

    snakemake --profile workflow/profiles/slurm all --default-resources slurm_partition=lqtest

as a user would, `train.device: auto` (the default) included. The pretrain job holds in its second
epoch (LQ_TEST_PAUSE_AT, lq/train/pause.py) until the test cancels it with `scancel`; the profile's
retry resumes it from its first epoch. Checked: every job went through sbatch, one per stage of the
stage table (only `all` runs locally), pretrain twice (its SLURM job id is in Snakemake's log and
the controller knows it), the cancelled job was retried and resumed, and the results (models,
metrics, curves, PTQ sweeps; the figures aside) equal a local one-thread run's (`two_seed_snakemake`,
seed 0) byte for byte. The sbatch test prints one line with Snakemake's wall time and each job's id.
"""

from __future__ import annotations

import subprocess
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import pytest

import yaml

from lq import cluster
from lq.train import pause
from tests.conftest import default_plan_stages, job_stats
from tests.integration.conftest import LONG, background, clone, one_thread_env
from tests.integration.local_slurm import PARTITION, LocalSlurm, submissions

pytestmark = [pytest.mark.integration, pytest.mark.slurm]

COMMAND = ["snakemake", "--profile", "workflow/profiles/slurm", "all",
           "--default-resources", f"slurm_partition={PARTITION}",  # the partition the user edits in
           "--config", "grid={seed: [0]}", "train={device: auto}",  # one cell; the default device
           "--max-threads", "1",  # one OpenMP thread per job, as in the local reference run
           "--slurm-init-seconds-before-status-checks", "2"]  # a test's jobs take seconds
PAUSE_AT = "0:1:3"  # pretrain: task 0, second epoch, after its fourth step
RULES = [stage.name for stage in default_plan_stages()]  # one job each for one seed
# What the run ends with, compared with the local run's bytes (the figures aside).
RESULTS = ["models/seed0", "metrics/seed0", "plots/seed0", "ptq/seed0"]


@dataclass
class SlurmRun:
    root: Path
    output: str                 # what Snakemake printed
    returncode: int
    took: float                 # seconds, start of Snakemake to its end
    cancelled: str              # the SLURM job id the test cancelled
    jobs: dict[str, str]        # SLURM job id -> state, as squeue saw them after the run
    gpu_refused: str            # sbatch's answer to a GPU request on the test partition
    partition_has_gpus: bool | None
    stopped: list[str]          # daemons that had to be killed


@background
def slurm_run(folder: Path, two_seed_fresh: Path) -> SlurmRun:
    root = clone(two_seed_fresh, folder / "repo")
    flag = folder / "paused.json"
    slurm = LocalSlurm()
    try:
        slurm.start()
        refused = slurm.run(["sbatch", "--parsable", "-p", PARTITION, "--gpus=1", "--wrap", "true"], check=False)
        env = {**slurm.env(one_thread_env()), "CUDA_VISIBLE_DEVICES": "",
               "LQ_TEST_PAUSE_AT": PAUSE_AT, "LQ_TEST_PAUSE_FLAG": str(flag)}
        has_gpus = subprocess.run(["python", "-c", f"from lq import cluster; print(cluster.slurm_partition_has_gpus({PARTITION!r}))"],
                                  cwd=root, env=env, capture_output=True, text=True, timeout=120).stdout.strip()
        log = folder / "snakemake.log"
        started = time.monotonic()
        with open(log, "w") as out:
            proc = subprocess.Popen(COMMAND, cwd=root, env=env, stdout=out, stderr=subprocess.STDOUT)
            try:
                deadline = time.monotonic() + LONG
                while (held := pause.paused(flag)) is None:
                    if proc.poll() is not None or time.monotonic() > deadline:
                        raise AssertionError(f"the pretrain job never reached {PAUSE_AT}:\n{log.read_text()[-4000:]}")
                    time.sleep(0.2)
                cancelled = held["slurm_job_id"]
                slurm.run(["scancel", cancelled])
                code = proc.wait(timeout=LONG)
            finally:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
        took = time.monotonic() - started
        jobs = slurm.jobs()
    finally:
        stopped = slurm.stop()
        slurm.remove()
    return SlurmRun(root, log.read_text(), code, took, cancelled, jobs, refused.stderr.strip(),
                    {"True": True, "False": False}.get(has_gpus), stopped)


@pytest.fixture(scope="module")
def done(slurm_run) -> SlurmRun:
    return slurm_run.result()


def summary(run: SlurmRun) -> str:
    """One line for the record: Snakemake's wall time and each sbatch job, with its state in squeue."""
    jobs = ", ".join(f"{rule} {slurm_id} {run.jobs.get(slurm_id, '?')}" for rule, slurm_id in submissions(run.output))
    return f"SLURM run: snakemake took {run.took:.0f} s; sbatch jobs (rule, SLURM job id, state): {jobs}"


def test_the_cluster_refuses_a_gpu_and_the_profile_asks_for_none(done):
    """The partition has no GPU: a job asking for one is refused, so the run below asked for none
    (train.device = auto: `sinfo` says the partition has no GPUs)."""
    assert "Invalid generic resource (gres) specification" in done.gpu_refused
    assert done.partition_has_gpus is False
    assert cluster.gpus_per_job("auto", 1, 1, lambda: done.partition_has_gpus) == 0


def test_every_job_went_through_sbatch_and_the_cancelled_one_was_retried(done, capsys):
    with capsys.disabled():  # shown with or without -s: the job ids for the record
        print(f"\n{summary(done)}")
    said = done.output
    assert done.returncode == 0, said[-4000:]
    jobs = submissions(said)
    # every job but the local `all`, once, and pretrain a second time (the retry)
    assert job_stats(said) == {**{r: 1 for r in RULES}, "all": 1}
    assert Counter(rule for rule, _ in jobs) == Counter({**{r: 1 for r in RULES}, "pretrain": 2})
    assert len({slurm_id for _, slurm_id in jobs}) == len(jobs)
    # the controller ran each of them: completed, but the one the test cancelled
    first_pretrain = next(slurm_id for rule, slurm_id in jobs if rule == "pretrain")
    assert done.cancelled == first_pretrain
    assert {slurm_id: done.jobs.get(slurm_id) for _, slurm_id in jobs} == {
        slurm_id: "CANCELLED" if slurm_id == done.cancelled else "COMPLETED" for _, slurm_id in jobs}
    assert f"SLURM-job '{done.cancelled}' failed, SLURM status is: 'CANCELLED'" in said
    assert "Trying to restart job" in said
    assert done.stopped == [], f"killed after SIGTERM: {done.stopped}"


def test_the_retry_resumed_after_the_last_finished_epoch(done):
    log = (done.root / "logs" / "pretrain-0.log").read_text()  # the retry's (tee rewrites it)
    assert "task 0: resuming after epoch 1" in log, log
    assert "epoch 1/2" not in log and "epoch 2/2" in log, log
    resume = done.root / ".lq-resume"
    assert not resume.exists() or not any(resume.iterdir()), f"left behind: {list(resume.iterdir())}"


def test_the_results_equal_a_local_runs_byte_for_byte(done, two_seed_snakemake):
    def results(root: Path) -> dict[str, bytes]:
        files = [p for out in RESULTS for p in sorted((root / out).rglob("*")) if p.is_file() and p.suffix != ".png"]
        return {str(p.relative_to(root)): p.read_bytes() for p in files}

    got, want = results(done.root), results(two_seed_snakemake.root)
    assert len(got) >= 13 and got.keys() == want.keys()
    assert [name for name in got if got[name] != want[name]] == []
    # the overlay is in params.yaml, which describes what ran (and what `dvc commit` would record)
    params = yaml.safe_load((done.root / "params.yaml").read_text())
    assert params["grid"]["seed"] == [0] and params["train"]["device"] == "auto"
