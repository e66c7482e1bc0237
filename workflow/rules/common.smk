# Shared set-up: validate params.yaml (with the preset applied) and load the stage table.

from snakemake.utils import validate

from lq import config as lqconfig
from lq.errors import LqError
from lq.pipeline import load_table

try:
    PARAMS = lqconfig.resolve(config)
    lqconfig.validate_all_presets(config)
except LqError as exc:
    raise WorkflowError(str(exc)) from None
validate(PARAMS, "../schemas/params.schema.yaml")

PARAMS_FILE, STAGES = load_table()
CONSUMED = {path for stage in STAGES for path in stage.inputs().values()}
# `all` asks for the outputs no other stage consumes; Snakemake pulls in the rest.
FINAL_OUTPUTS = [path for stage in STAGES for path in stage.out_paths if path not in CONSUMED]
