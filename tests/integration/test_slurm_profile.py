"""The SLURM profile's requests, against a stand-in `sinfo` and `sbatch` (no SLURM needed).

The stand-in `sinfo` describes a cluster with a CPU partition (the default) and a GPU partition;
the stand-in `sbatch` writes down its arguments and refuses the job. Each case runs the profile
on a project whose data stages are made (`data_run`), so the first job is pretrain, and checks
what it asked for. tests/integration/test_slurm.py runs the profile on a real SLURM (`make test-slurm`).
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from lq.pipeline import stage_by_name

from tests.integration.conftest import clone, one_thread_env

pytestmark = pytest.mark.integration

SINFO = "cpu* (null)\ngpu gpu:a100:4(S:0-1)\n"


def _stand_in(folder: Path) -> Path:
    """`sinfo` answering SINFO, an `sbatch` that writes its arguments to sbatch.log and refuses, and
    silent `squeue` and `sacct`."""
    folder.mkdir()
    lines = SINFO.replace("\n", "\\n")
    (folder / "sinfo").write_text(f"#!/bin/sh\nprintf '{lines}'\n")
    (folder / "sbatch").write_text(f"#!/bin/sh\ncat > /dev/null\necho \"$@\" >> {folder / 'sbatch.log'}\n"
                                   "echo refused >&2\nexit 1\n")
    # the plugin refuses to start without a status command (on a machine without SLURM: none)
    for tool in ("squeue", "sacct"):
        (folder / tool).write_text("#!/bin/sh\nexit 0\n")
    for tool in ("sinfo", "sbatch", "squeue", "sacct"):
        (folder / tool).chmod(0o755)
    return folder


@pytest.mark.parametrize("partition,device,gpus", [("gpu", "auto", "--gpus=1"), ("cpu", "auto", None),
                                                   ("gpu", "cpu", None)])
def test_the_slurm_profile_asks_for_a_gpu_only_where_the_run_uses_one(data_run, tmp_path, partition, device, gpus):
    root = clone(data_run, tmp_path / "repo")
    fake = _stand_in(tmp_path / "bin")
    env = {**one_thread_env(), "PATH": f"{fake}{os.pathsep}{one_thread_env()['PATH']}"}
    out = subprocess.run(["snakemake", "models/seed0/pretrain.pt", "--profile", "workflow/profiles/slurm", "--retries", "0",
                          "--slurm-init-seconds-before-status-checks", "1",  # else its shutdown waits 10 s
                          "--default-resources", f"slurm_partition={partition}", "--config", f"train={{device: {device}}}"],
                         cwd=root, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode != 0, out.stdout + out.stderr  # the stand-in refuses every job
    assert (fake / "sbatch.log").exists(), out.stdout[-3000:] + out.stderr[-3000:]
    [call] = (fake / "sbatch.log").read_text().splitlines()
    # the stage table's threads, memory and runtime; the GPU request as the device and partition say
    cpus = stage_by_name("pretrain").resources["cpus"]
    assert f"-p {partition}" in call and f"--cpus-per-task={cpus}" in call and "--mem 8000" in call and "-t 120" in call, call
    assert [a for a in call.split() if a.startswith("--gpus")] == ([gpus] if gpus else []), call
