# Snakemake's view of workflow/stages.yaml, one rule per row.
#
# Each row is declared by calling `declare` once per stage. The body reads the function's own
# `stage`; a bare `for` loop around the rule would bind every command to the last stage.


def declare(stage):
    outputs = {
        name: directory(path) if is_dir else path
        for name, (path, is_dir) in stage.outputs().items()
    }
    values = {key.replace(".", "__"): lqconfig.get_key(PARAMS, key) for key in stage.params}
    command = stage.command_with_values(PARAMS, PARAMS_FILE).replace("{", "{{").replace("}", "}}")
    res = dict(stage.resources)

    rule:
        name:
            stage.name
        message:
            stage.doc
        input:
            code=list(stage.code),
            **stage.inputs(),
        output:
            **outputs,
        params:
            **values,
        log:
            f"logs/{stage.name}.log",
        threads: res.get("cpus", 1)
        resources:
            mem_mb=res.get("mem_mb", 1000),
            runtime=res.get("runtime", 60),
            gpu=res.get("gpu", 0),
        conda:
            "../envs/lq.yaml"
        shell:
            # One BLAS/OpenMP pool per job, sized to its threads: parallel jobs must not
            # oversubscribe the cores (OpenMP spin-waiting then slows training many times over).
            f"export OMP_NUM_THREADS={{threads}} MKL_NUM_THREADS={{threads}}; ({command}) 2>&1 | tee {{log:q}}"


for stage in STAGES:
    declare(stage)
