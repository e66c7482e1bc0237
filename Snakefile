# lq: quantization-aware lifelong learning, as a Snakemake workflow.
# The rules are built from workflow/stages.yaml (the same table dvc.yaml is generated from).
#   snakemake --cores 8 all            run everything on the configuration in params.yaml
#   snakemake --config preset=paper    the LifeQuant paper configuration (CIFAR-100-LL)
#   snakemake --rulegraph dot all | dot -Tsvg > docs/rulegraph.svg   the stage graph

from snakemake.utils import min_version

from lq.config import check_params_file

min_version("9.0")
check_params_file("params.yaml", WorkflowError)  # a YAML mistake is reported as file:line:column


configfile: "params.yaml"


include: "workflow/rules/common.smk"
include: "workflow/rules/stages.smk"


rule all:
    default_target: True
    input:
        FINAL_OUTPUTS,
