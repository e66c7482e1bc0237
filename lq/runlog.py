"""What each run of a step leaves for people to read beside its tracked outputs.

Every run (one `python -m lq <step>` process, whichever tool started it) gets an id,
`<UTC time>-<pid>` (plus the DVC experiment's name when DVC runs one: `DVC_EXP_NAME`), and under
it a log file of its own, `logs/<stage>-<cell>/<id>.log`, and a TensorBoard folder of its own,
`runs/<stage>-<cell>/<id>/`. Nothing is overwritten or appended to by a later run, so reruns never
mix. Neither is a pipeline output: both tools ignore them (.gitignore has /logs/ and /runs/).

Both live under the workspace the user sees: the current folder, or `DVC_ROOT` when DVC sets it.
A queued DVC experiment (`dvc exp run --queue`, `dvc queue start`) runs in a temporary copy of the
workspace under `.dvc/tmp/exps/` that is deleted afterwards; DVC points `DVC_ROOT` at the real
workspace for it, so its logs and TensorBoard scalars land where the user looks.

Under torchrun (`train.nproc` > 1) the workers inherit the launching step's id (`LQ_RUN_ID`):
rank 0 appends to the launcher's log and writes its TensorBoard folder; other ranks log to
`<id>-rank<N>.log`.
"""

from __future__ import annotations

import logging
import os
import re
import shlex
import sys
import time
from pathlib import Path

from lq import grid
from lq.errors import LqError

FORMAT = "%(asctime)s {name}: %(message)s"
ENV_ID = "LQ_RUN_ID"

_current: str | None = None
_used: set[str] = set()
_handler: logging.Handler | None = None


def root() -> Path:
    """The workspace the user sees: `DVC_ROOT` when DVC set it (a queued experiment runs in a
    temporary copy), else the current folder."""
    return Path(os.environ.get("DVC_ROOT") or ".")


def _worker() -> bool:
    return "LOCAL_RANK" in os.environ and bool(os.environ.get(ENV_ID))


def new_run() -> str:
    """Start a new run id for this process (`<UTC time>-<pid>[-<experiment>]`) and return it.

    A second run in the same process and second (tests) gets a numbered suffix, never the same id.
    """
    global _current
    if _worker():  # a torchrun worker: the launching step's run
        _current = os.environ[ENV_ID]
        return _current
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    experiment = re.sub(r"[^A-Za-z0-9_-]+", "_", os.environ.get("DVC_EXP_NAME", "")).strip("_")
    base, n = f"{stamp}-{os.getpid()}", 1
    run = "-".join(filter(None, [base, experiment]))
    while run in _used:
        n += 1
        run = "-".join(filter(None, [f"{base}.{n}", experiment]))
    _used.add(run)
    _current = run
    os.environ[ENV_ID] = run  # inherited by torchrun's workers (and only read by them)
    return run


def run_id() -> str:
    """This process's run id (a new one on first use)."""
    return _current or new_run()


def tensorboard_dir(run: str) -> Path:
    """`runs/<stage>-<cell>/<id>/`: this run's TensorBoard folder."""
    return root() / "runs" / run / run_id()


def log_path(run: str) -> Path:
    """`logs/<stage>-<cell>/<id>.log`: this run's log file (a non-main torchrun rank: `-rank<N>`)."""
    rank = os.environ.get("RANK", "0") if _worker() else "0"
    return root() / "logs" / run / (run_id() + (f"-rank{rank}" if rank != "0" else "") + ".log")


def cell_label(stage: str, axes: list[str]) -> str:
    """`<stage>-<cell>` as the training stages name their runs (`lifelong-lifequant-w4a4-proxq-seed0`);
    the stage alone when the cell cannot be read (the step reports that itself)."""
    try:
        label = "-".join(filter(None, [stage, grid.cell_name(grid.parse_assignments(axes))]))
    except (LqError, ValueError, KeyError):
        return stage
    # the values are checked later, by the step: here they only must not leave logs/
    return re.sub(r"[^A-Za-z0-9_=+-]+", "_", label)


def _axes(argv: list[str]) -> list[str]:
    """The `--axis NAME=VALUE` values of a step's command line, read before argparse does."""
    found = []
    for i, arg in enumerate(argv):
        if arg == "--axis" and i + 1 < len(argv):
            found.append(argv[i + 1])
        elif arg.startswith("--axis="):
            found.append(arg.split("=", 1)[1])
    return found


def start(stage: str, argv: list[str]) -> Path | None:
    """Log to stderr as before and, for a real run (not --help), also to this run's own log file.

    Returns the log file; None when there is none (help, or a folder that cannot be written: a
    warning says so, the step still runs).
    """
    global _handler
    logging.basicConfig(level=logging.INFO, format=FORMAT.format(name=stage), datefmt="%H:%M:%S")
    if logging.getLogger().level > logging.INFO:  # basicConfig does nothing where logging is set up
        logging.getLogger().setLevel(logging.INFO)
    stop()  # an earlier step in this process (tests): its file is closed
    if any(arg in ("-h", "--help") for arg in argv):
        return None
    new_run()
    path = log_path(cell_label(stage, _axes(argv)))
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handler = logging.FileHandler(path, mode="a", encoding="utf-8")
    except OSError as exc:
        print(f"lq {stage}: warning: no log file ({exc.strerror or exc}: {path.parent}); logging to stderr only",
              file=sys.stderr)
        return None
    handler.setFormatter(logging.Formatter(FORMAT.format(name=stage), datefmt="%Y-%m-%d %H:%M:%S"))
    handler.setLevel(logging.INFO)
    logging.getLogger().addHandler(handler)
    _handler = handler
    if sys.excepthook is not _uncaught:
        _uncaught.previous = sys.excepthook  # type: ignore[attr-defined]
        sys.excepthook = _uncaught
    logging.getLogger("lq").info("run %s: python -m lq %s", run_id(), shlex.join([stage, *argv]))
    return path


def _uncaught(kind, value, tb) -> None:
    """An unexpected exception: its traceback goes to the run's log too, then on as before."""
    if _handler is not None:
        _handler.emit(logging.LogRecord("lq", logging.ERROR, __file__, 0, "uncaught exception", (), (kind, value, tb)))
    _uncaught.previous(kind, value, tb)  # type: ignore[attr-defined]


_uncaught.previous = sys.excepthook  # type: ignore[attr-defined]


def error(message: str) -> None:
    """A user error: one line on stderr (no traceback), and the same line in the run's log."""
    print(message, file=sys.stderr)
    if _handler is not None:
        _handler.emit(logging.LogRecord("lq", logging.ERROR, __file__, 0, "%s", (message,), None))


def stop() -> None:
    """Close this process's log file (tests run several steps in one process)."""
    global _handler
    if _handler is not None:
        logging.getLogger().removeHandler(_handler)
        _handler.close()
        _handler = None
