# Shared set-up: validate params.yaml (with the preset applied) and load the stage table.

import os
import re
from pathlib import Path

from snakemake.logging import logger
from snakemake.resources import Resource
from snakemake.utils import validate

from lq import checks
from lq import config as lqconfig
from lq import grid, overlay, workspace
from lq.errors import LqError
from lq.pipeline import fill, fill_refs, load_table, placeholders

try:
    # `--config 'lifelong={epochs: 1}'` arrives as strings ('1'): read them as YAML, as --set does.
    for key, value in lqconfig.typed_cli_values(workflow.config_settings.config):
        lqconfig.set_key(config, key, value)
    PARAMS = lqconfig.resolve(config)
    lqconfig.validate_all_presets(config)
except LqError as exc:
    raise WorkflowError(str(exc)) from None
validate(PARAMS, "../schemas/params.schema.yaml")

PARAMS_FILE, STAGES = load_table()

# Never more threads at once than this machine has: `--cores 8` on a 2-core machine would run
# four 2-thread training jobs side by side, and OpenMP's spin-waiting then slows each many times
# over (an epoch from 1.4 s to 12-90 s). Jobs run here: capped at the CPUs this process may use.
# A cluster's jobs (another executor) get their cores from their own allocation.
MACHINE_CORES = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
if workflow.local_exec and workflow.is_main_process and (workflow._cores or 0) > MACHINE_CORES:
    logger.info(f"lq: --cores {workflow._cores} is more than this machine's {MACHINE_CORES} CPUs: "
                f"running at most {MACHINE_CORES} threads at once")
    workflow.global_resources["_cores"] = Resource("_cores", MACHINE_CORES)
# What an overlay (--configfile, --config) changes in params.yaml: written through before the
# first job (onstart), so that params.yaml, and what DVC records from it, describe the outputs.
OVERLAY = overlay.differences(lqconfig.read_yaml(PARAMS_FILE), config)
GRID = {name: [str(v) for v in PARAMS["grid"][name]] for name in grid.AXES}


wildcard_constraints:
    **{name: axis.pattern for name, axis in grid.AXES.items()},


def expand_grid(pattern, keep=()):
    """A path pattern filled in for every grid cell of its placeholders (those in `keep` stay)."""
    axes = [a for a in placeholders(pattern) if a not in keep]
    return sorted({fill(pattern, cell) for cell in grid.cells(GRID, axes)})


# Snakemake does not look inside a directory output, so it sees the files the stage table lists
# for it (and the folder's MANIFEST.json): a missing file makes its stage rerun.
DIR_FILES = {
    path: [f"{path}/{name}" for name in stage.dir_files(out, PARAMS["split"]["num_tasks"])]
    for stage in STAGES
    for out, (path, is_dir) in stage.outputs().items()
    if is_dir
}


def input_files(stage, path):
    """A dependency as Snakemake sees it: a directory as its files, a gathered pattern expanded."""
    files = DIR_FILES.get(path, [path])
    if stage.gathered(path):
        return [cell for file in files for cell in expand_grid(file, keep=stage.axes)]
    return files if path in DIR_FILES else path


# `all` asks for every output of every stage and grid cell (directories as their files), as
# `dvc repro` does: a deleted checkpoint or data file is rebuilt, not skipped as an intermediate.
FINAL_OUTPUTS = [
    path
    for stage in STAGES
    for out in stage.out_paths
    for file in DIR_FILES.get(out, [out])
    for path in expand_grid(file)
]


CLAIM = []  # the workspace claim of this run, once it starts


onstart:
    # Runs only when there are jobs to run (never for -n), before any output is deleted.
    try:
        # train.device = cuda on a machine without CUDA fails here, before the first job. Only when
        # this machine runs the jobs (a cluster's submit host may have no GPU while its nodes do),
        # and not for --touch, which runs nothing.
        if workflow.local_exec and not workflow.touch:
            checks.check_device(PARAMS["train"]["device"])
        if workflow.is_main_process:
            # This run owns the workspace until it ends (DVC's lock and lq's lease): DVC started
            # meanwhile is refused before it deletes anything, as is this run while DVC runs.
            CLAIM.append(workspace.SnakemakeClaim())
            if OVERLAY:
                overlay.write_through(PARAMS_FILE, OVERLAY)
                logger.info(f"lq: wrote the overlay into {PARAMS_FILE}, which now describes what this run "
                            f"makes (and what `dvc commit` records): {overlay.describe(OVERLAY)}")
    except LqError as exc:
        raise WorkflowError(str(exc)) from None


onsuccess:
    for claim in CLAIM:
        claim.release()


onerror:
    for claim in CLAIM:
        claim.release()
