"""Stage entry points: parse paths and the stage's parameters, call a typed `lq` function.

Every step is run as `python -m lq <step> --<dep> PATH ... --<out> PATH ... --params params.yaml
[--axis name=value ...] [--set key=value ...]`. Its path options are built from its row of the
stage table (`workflow/stages.yaml`): one per named dependency and output, so the table is the
only place a step's inputs and outputs are declared. The step sees only the parameter keys the
table declares for it (`lq.config.StageParams`), and turns them into a typed config once.
"""

from __future__ import annotations

import argparse
import logging
import os
from collections.abc import Callable
from pathlib import Path

from lq import atomic, checks, runlog
from lq import config as lqconfig
from lq import grid, workspace
from lq.errors import LqError
from lq.pipeline import Stage, stage_by_name

log = logging.getLogger("lq")

STEPS = ("download", "split", "replay", "count", "pretrain", "qat8", "lifelong", "evaluate", "aggregate", "ptq",
         "ptq_lifelong", "ssl", "ssl_linear")


def parser_for(stage: Stage, description: str | None) -> argparse.ArgumentParser:
    """The step's options: its table row's dependencies and outputs, plus the shared ones."""
    parser = argparse.ArgumentParser(prog=f"python -m lq {stage.name}", description=description)
    for name, path in stage.deps.items():
        gathered = bool(stage.gathered(path))
        parser.add_argument(f"--{name}", type=str if gathered else Path, required=True,
                            help=f"{path} (from stage {stage.producer(name)})"
                            + (": a pattern over the grid" if gathered else ""))
    for name, path in stage.outs.items():
        parser.add_argument(f"--{name}", type=Path, required=True, help=f"{path} (written)")
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


def load_stage_params(stage: Stage, args: argparse.Namespace) -> lqconfig.StageParams:
    """Validate the whole parameter file, then expose only this stage's declared keys.

    A stage over grid axes must be told its cell: every axis it depends on, no others.
    """
    cell = grid.parse_assignments(args.axes)
    if set(cell) != set(stage.axes):
        raise LqError(f"stage '{stage.name}' runs per {', '.join(stage.axes) or 'nothing'}: pass exactly "
                      + (" ".join(f"--axis {a}=VALUE" for a in stage.axes) or "no --axis")
                      + f" (got {', '.join(args.axes) or 'none'})")
    config = lqconfig.load(args.params, args.overrides, cell)
    # The device is checked on the machine that trains: in every stage under `dvc repro` (it runs
    # them all here, so the first stage already fails) and in each stage that uses the device.
    if "train.device" in stage.params or os.environ.get("DVC_STAGE"):
        checks.check_device(config["train"]["device"])
    return lqconfig.StageParams(config, stage.declared_params(cell, config=config), stage.name, cell)


def step(name: str, argv: list[str], description: str | None,
         body: Callable[[argparse.Namespace, lqconfig.StageParams], None]) -> int:
    """Parse a step's command line from its table row, load its parameters, run `body(args, params)`.

    User errors print one clear line (no traceback) and exit 2.
    """
    runlog.start(name, argv)  # stderr and this run's own log file, logs/<stage>-<cell>/<id>.log
    stage = stage_by_name(name)
    args = parser_for(stage, description).parse_args(argv)
    try:
        owner = workspace.acquire()  # refused while another tool's run owns this workspace
        params = load_stage_params(stage, args)
        atomic.check_writable([getattr(args, out.replace("-", "_")) for out in stage.outs])
        use_declared_threads(stage)
        if "train.nproc" in stage.params and params["train.nproc"] > 1 and owner:
            workspace.own_for_children(owner)  # torchrun's workers act for the same run
        if "train.nproc" in stage.params and relaunched(name, argv, params["train.nproc"]):
            return 0
        body(args, params)
    except LqError as exc:
        runlog.error(f"lq {name}: error: {exc}")
        return 2
    return 0


def use_declared_threads(stage: Stage) -> None:
    """Train on the stage's declared CPUs when nothing set OMP_NUM_THREADS (DVC, a run by hand),
    as Snakemake does for its jobs: float reductions split by thread count, so both tools then
    give the same numbers on CPU."""
    if "train.device" in stage.params and "OMP_NUM_THREADS" not in os.environ:
        import torch

        torch.set_num_threads(stage.resources.get("cpus", 1))


def relaunched(name: str, argv: list[str], nproc: int) -> bool:
    """True when this step ran on `nproc` processes under torchrun (and succeeded)."""
    from lq.train.distributed import relaunch_under_torchrun

    code = relaunch_under_torchrun(name, argv, nproc)
    if code is None:
        return False
    if code != 0:
        raise LqError(f"{name} on {nproc} processes under torchrun failed (exit {code}); see the log above")
    return True
