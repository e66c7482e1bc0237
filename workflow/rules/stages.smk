# Snakemake's view of workflow/stages.yaml, one rule per row.
#
# Each row is declared by calling `declare` once per stage. The body reads the function's own
# `stage`; a bare `for` loop around the rule would bind every command to the last stage.
# A stage's grid axes are wildcards; a dependency over other axes is expanded over the grid.
# A directory output is declared as the files inside it (DIR_FILES), so Snakemake sees each one.

import os

from lq import cluster

REPORT_ROOT = Path(workflow.basedir)


def report_output(stage, name, path):
    entry = stage.report.get(name)
    if not entry:
        return path
    return report(path, caption=str(REPORT_ROOT / entry["caption"]), category=entry.get("category"))


def configured_resource(rule, name):
    """A resource as --set-resources (for `rule`) or --default-resources (a profile) give it, else None."""
    settings = workflow.resource_settings
    for given in ((settings.overwrite_resources or {}).get(rule) or {}, settings.default_resources or {}):
        if name in given:
            value = getattr(given[name], "raw", given[name])
            return str(value).strip("'\"") or None
    return None


def machines_have_gpus(rule):
    """Whether the machines `rule`'s jobs run on have GPUs: on SLURM the partition is asked (the
    job's own inside a job); None (cannot tell) when the jobs run here."""
    plugin = workflow.executor_plugin
    if plugin is None or plugin.name not in cluster.SLURM_EXECUTORS:
        return None
    if workflow.remote_exec:
        return cluster.slurm_partition_has_gpus(os.environ.get("SLURM_JOB_PARTITION"))
    return cluster.slurm_partition_has_gpus(configured_resource(rule, "slurm_partition"))


def declare(stage):
    outputs = {
        name: DIR_FILES[path] if is_dir else report_output(stage, name, path)
        for name, (path, is_dir) in stage.outputs().items()
    }
    inputs = {name: input_files(stage, path) for name, path in stage.inputs().items()}
    # Each declared key's value is a rule param (Snakemake's params trigger compares them), per
    # cell where the key names an axis (`lifelong.methods.{method}`); `sets` passes them on.
    values = {
        key.replace(".", "__").replace("{", "").replace("}", ""): (
            lambda wildcards, key=key: lqconfig.get_key(
                PARAMS, fill_refs(fill(key, dict(wildcards.items())), lambda ref: lqconfig.get_key(PARAMS, ref))
            )
        )
        for key in stage.params
    }
    values["sets"] = lambda wildcards: stage.set_options(PARAMS, dict(wildcards.items()))
    # Wildcards go in as markers that survive quoting, then become `{wildcards.x}` once the
    # command's own braces are escaped from Snakemake's formatting.
    command = stage.command(PARAMS_FILE, item="@@{}@@".format) + " @@@sets@@@"
    command = command.replace("{", "{{").replace("}", "}}").replace("@@@sets@@@", "{params.sets}")
    command = re.sub(r"@@(\w+)@@", r"{wildcards.\1}", command)
    log = f"logs/{'-'.join([stage.name, *(f'{{{a}}}' for a in stage.axes)])}.log"
    res = dict(stage.resources)

    rule:
        name:
            stage.name
        message:
            stage.doc
        input:
            code=list(stage.code),
            **inputs,
        output:
            **outputs,
        params:
            **values,
        log:
            log,
        threads: res.get("cpus", 1)
        resources:
            mem_mb=res.get("mem_mb", 1000),
            runtime=res.get("runtime", 60),
            # the GPUs this job will use (lq/cluster.py): none for train.device = cpu, or under
            # `auto` on a SLURM partition without GPUs; one per process under torchrun (train.nproc)
            gpu=lambda wildcards, stage=stage, res=res: cluster.gpus_per_job(
                PARAMS["train"]["device"], res.get("gpu", 0),
                PARAMS["train"]["nproc"] if "train.nproc" in stage.params else 1,
                lambda: machines_have_gpus(stage.name),
            ),
        conda:
            "../envs/lq.yaml"
        shell:
            # One BLAS/OpenMP pool per job, sized to its threads: parallel jobs must not
            # oversubscribe the cores (OpenMP spin-waiting then slows training many times over).
            f"export OMP_NUM_THREADS={{threads}} MKL_NUM_THREADS={{threads}}; ({command}) 2>&1 | tee {{log:q}}"


for stage in STAGES:
    declare(stage)
