"""Stage entry points: parse paths and the stage's parameters, call a typed `lq` function.

Every step is run as `python -m lq <step> [paths] --params params.yaml [--set key=value ...]`.
The step sees only the keys the stage table declares for it (`lq.config.StageParams`).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable

from lq import checks
from lq import config as lqconfig
from lq import grid
from lq.errors import LqError
from lq.pipeline import stage_by_name

log = logging.getLogger("lq")

STEPS = ("download", "split", "replay", "count", "pretrain", "qat8", "lifelong", "evaluate", "aggregate")


def parser_for(step: str, description: str) -> argparse.ArgumentParser:
    """An argument parser with the options every step shares."""
    parser = argparse.ArgumentParser(prog=f"python -m lq {step}", description=description)
    parser.add_argument("--params", default="params.yaml", help="parameter file (default: params.yaml)")
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
        help="override a parameter, e.g. --set split.num_tasks=5 (repeatable)",
    )
    parser.add_argument(
        "--axis", dest="axes", action="append", default=[], metavar="NAME=VALUE",
        help="this run's grid cell, e.g. --axis method=ewc --axis seed=1 (the pipeline passes them)",
    )
    return parser


def load_stage_params(step: str, args: argparse.Namespace) -> lqconfig.StageParams:
    """Validate the whole parameter file, then expose only this stage's declared keys.

    A stage over grid axes must be told its cell: every axis it depends on, no others.
    """
    stage = stage_by_name(step)
    cell = grid.parse_assignments(args.axes)
    if set(cell) != set(stage.axes):
        raise LqError(f"stage '{step}' runs per {', '.join(stage.axes) or 'nothing'}: pass exactly "
                      + (" ".join(f"--axis {a}=VALUE" for a in stage.axes) or "no --axis")
                      + f" (got {', '.join(args.axes) or 'none'})")
    config = lqconfig.load(args.params, args.overrides, cell)
    # The device is checked on the machine that trains: in every stage under `dvc repro` (it runs
    # them all here, so the first stage already fails) and in each stage that uses the device.
    if "train.device" in stage.params or os.environ.get("DVC_STAGE"):
        checks.check_device(config["train"]["device"])
    return lqconfig.StageParams(config, stage.params, step, cell)


def run(step: str, body: Callable[[], None]) -> int:
    """Run a step body; user errors print one clear line (no traceback) and exit 2."""
    logging.basicConfig(level=logging.INFO, format=f"%(asctime)s {step}: %(message)s", datefmt="%H:%M:%S")
    try:
        body()
    except LqError as exc:
        print(f"lq {step}: error: {exc}", file=sys.stderr)
        return 2
    return 0
