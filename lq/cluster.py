"""How many GPUs a job asks its cluster for: those the run will use, never more.

The stage table (workflow/stages.yaml) names the GPUs a training job can use (`resources.gpu`);
whether it uses them is `train.device`'s choice. A job that asks SLURM for a GPU on a partition
without one is refused ("Invalid generic resource (gres) specification"), so the request follows
the device:

- `cpu`: no GPU, whatever the table says;
- `cuda`, `cuda:N`: the table's GPUs (times `train.nproc` for a stage under torchrun);
- `auto` (CUDA when present): the table's GPUs where the jobs' machines have GPUs, else none. On
  SLURM the partition the jobs go to is asked (`sinfo`); run locally, the request is only a
  token the scheduler counts (`--resources gpu=N`, workflow/profiles/local-gpu) and stays.

The Snakefile passes in where the jobs run (workflow/rules/stages.smk); nothing here imports
Snakemake.
"""

from __future__ import annotations

import functools
import shutil
import subprocess
from collections.abc import Callable

# The executors whose jobs run on SLURM: the submitting one and the one inside a job.
SLURM_EXECUTORS = ("slurm", "slurm-jobstep")


def gpus_per_job(device: str, table_gpus: int, processes: int, machines_have_gpus: Callable[[], bool | None]) -> int:
    """GPUs one job of a stage asks for (see the module doc). `machines_have_gpus` is asked only
    for `auto` and may answer None (cannot tell), which keeps the table's request."""
    if table_gpus <= 0 or device == "cpu":
        return 0
    if device == "auto" and machines_have_gpus() is False:
        return 0
    return table_gpus * processes


def partition_has_gpus(sinfo_output: str, partition: str | None) -> bool | None:
    """From `sinfo -h -o '%P %G'` (one line per partition and node kind: name, '*' after the
    default partition's, and the nodes' generic resources): whether `partition` (None: the
    default partition) has nodes with GPUs. None when no such partition is listed."""
    found = False
    for line in sinfo_output.splitlines():
        name, _, gres = line.strip().partition(" ")
        if not name:
            continue
        default = name.endswith("*")
        name = name.rstrip("*")
        if (partition is None and default) or name == partition:
            found = True
            if any(item.split(":")[0] == "gpu" for item in gres.split(",")):
                return True
    return False if found else None


@functools.cache
def slurm_partition_has_gpus(partition: str | None) -> bool | None:
    """`partition_has_gpus` asked of the cluster (once per partition and process); None when
    `sinfo` is missing or fails (a dry run on a machine without SLURM)."""
    if not shutil.which("sinfo"):
        return None
    try:
        out = subprocess.run(["sinfo", "-h", "-o", "%P %G"], capture_output=True, text=True, timeout=60, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return partition_has_gpus(out.stdout, partition or None)
