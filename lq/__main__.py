"""`python -m lq <step> ...`: dispatch to the stage entry points in `lq.steps`."""

from __future__ import annotations

import importlib
import os
import sys
from pathlib import Path

from lq import __version__
from lq.memory import keep_freed_memory
from lq.pipeline import load_table
from lq.steps import STEPS


def usage() -> str:
    """The steps with what each computes (the stage table's `doc`), and the common options."""
    docs = {stage.name: stage.doc for stage in load_table()[1]}
    width = max(map(len, STEPS))
    lines = [
        "usage: python -m lq <step> [options]    (python -m lq <step> --help: the step's options)",
        "       python -m lq --version",
        "",
        "Run one stage of the lq pipeline (Snakemake and DVC run these commands; see README.md).",
        "",
        "steps:",
        *(f"  {step:<{width}}  {docs.get(step, '')}" for step in STEPS),
        "",
        "Every step reads params.yaml (--params FILE), takes --set KEY=VALUE overrides, and a step",
        "that runs per grid cell its cell as --axis NAME=VALUE. Also: python -m lq.pipeline write|check",
        "(regenerate dvc.yaml from workflow/stages.yaml, or check it is current).",
    ]
    return "\n".join(lines)


# Inductor's compiled kernels and graphs, kept in the workspace (ignored by git and DVC): every job
# of a workspace, on this machine or on cluster nodes that share its file system, reuses what the
# first compiled, instead of each machine's /tmp holding its own.
COMPILE_CACHE = Path(".lq-cache") / "inductor"


def share_compile_cache() -> None:
    """Point Inductor's cache at the workspace's COMPILE_CACHE, unless the user chose another."""
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(COMPILE_CACHE.resolve()))


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in ("-h", "--help", "help"):
        print(usage())
        return 0
    if argv and argv[0] in ("-V", "--version"):
        print(f"lq {__version__}")
        return 0
    if not argv or argv[0] not in STEPS:
        problem = f"unknown step '{argv[0]}'" if argv else "no step given"
        print(f"{usage()}\n\npython -m lq: error: {problem}", file=sys.stderr)
        return 2
    keep_freed_memory()  # a stage's process: reuse its step buffers instead of faulting them in again
    share_compile_cache()
    module = importlib.import_module(f"lq.steps.{argv[0]}")
    return module.main(argv[1:])


if __name__ == "__main__":
    sys.exit(main())
