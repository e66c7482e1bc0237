"""One tool run at a time per workspace, whichever tool started it.

Snakemake and DVC each lock the workspace against themselves, not against each other: started
together they delete and rewrite the same outputs and resume states (`.lq-resume/`) and end up
disagreeing about what is up to date. Two locks close that gap:

- A Snakemake run holds DVC's own repository lock (`.dvc/tmp/lock`) from its `onstart`, before
  any output is deleted, to its end: a `dvc` command started meanwhile is refused by DVC before
  it deletes anything ("Unable to acquire lock"), and Snakemake is refused while DVC runs
  (by DVC's lock between stages; DVC lets it go around each stage's command, where the lease
  below refuses it).
- The lq lease (LEASE_FILE) names the run that owns the workspace: that Snakemake process
  (passed to its jobs in LQ_WORKSPACE_OWNER), else the `dvc` process a step runs under, else the
  step itself (run by hand). Every step takes it before it touches a file, and a step of another
  run is refused with a message that says who holds it.

Both are released when their process ends, so a killed run never blocks the next.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psutil

from lq.errors import LqError

LEASE_FILE = ".lq-workspace.lock"
OWNER_ENV = "LQ_WORKSPACE_OWNER"
TOOLS = ("snakemake", "dvc")


def describe_process(process: psutil.Process, tool: str) -> dict:
    return {"tool": tool, "pid": process.pid, "started": process.create_time(), "host": socket.gethostname(),
            "command": " ".join(process.cmdline())[:300]}


def describe_self(tool: str) -> dict:
    """This process as a lease owner (Snakemake's main process calls it as 'snakemake')."""
    return describe_process(psutil.Process(), tool)


def tool_of(process: psutil.Process) -> str | None:
    """'snakemake' or 'dvc' when `process` is that tool's command: `dvc ...`, `python .../dvc ...`
    (an entry-point script), or `python -m snakemake ...`."""
    try:
        argv = process.cmdline()
    except (psutil.Error, OSError):
        return None
    if argv and Path(argv[0]).name.startswith("python"):
        argv = argv[2:] if argv[1:2] == ["-m"] else argv[1:]
    name = Path(argv[0]).name if argv else ""
    return name if name in TOOLS else None


def current_owner() -> dict | None:
    """Who this process works for: the run in LQ_WORKSPACE_OWNER, the nearest Snakemake or DVC
    process above it, or itself. None for a job of a Snakemake run on other machines (a cluster
    job: its main process, on the submit host, holds the lease)."""
    if os.environ.get(OWNER_ENV):
        return json.loads(os.environ[OWNER_ENV])
    me = psutil.Process()
    for parent in me.parents():
        tool = tool_of(parent)
        if tool == "snakemake" and _is_job_process(parent):
            return None
        if tool:
            return describe_process(parent, tool)
    return describe_process(me, "python -m lq")


def _is_job_process(process: psutil.Process) -> bool:
    """A Snakemake started by an executor to run one job (`--mode remote` or `subprocess`)."""
    argv = process.cmdline()
    return "--mode" in argv and argv[argv.index("--mode") + 1:][:1] in (["remote"], ["subprocess"])


def alive(owner: dict) -> bool:
    """The owner's process still runs (the same process: a reused pid has another start time).
    A process on another host cannot be checked and counts as alive."""
    if owner.get("host") != socket.gethostname():
        return True
    try:
        return abs(psutil.Process(owner["pid"]).create_time() - owner["started"]) < 0.01
    except (psutil.Error, KeyError, TypeError):
        return False


def same(a: dict, b: dict) -> bool:
    return all(a.get(k) == b.get(k) for k in ("tool", "pid", "started", "host"))


@contextmanager
def _locked(root: Path) -> Iterator[Path]:
    """The lease file, under an OS lock (so two runs starting together cannot both take it)."""
    path = root / LEASE_FILE
    with open(path, "a+", encoding="utf-8") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield path
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _holder(path: Path) -> dict | None:
    try:
        holder = json.loads(path.read_text(encoding="utf-8") or "null")
    except (OSError, ValueError):
        return None  # unreadable: a write cut short, so nobody holds it
    return holder if isinstance(holder, dict) else None


def refusal(holder: dict, root: Path) -> str:
    return (f"this workspace is in use by another run: {holder.get('tool')} (pid {holder.get('pid')} on "
            f"{holder.get('host')}: {holder.get('command')}). Snakemake and DVC must not run on one "
            f"workspace at once: wait for that run to finish (or stop it), then run again. If no such run "
            f"is going on, delete {root / LEASE_FILE}")


def acquire(root: str | Path = ".", owner: dict | None = None) -> dict | None:
    """Take (or keep) the workspace's lease for `owner` (default: current_owner()); LqError if a
    live other run holds it."""
    root = Path(root)
    owner = owner or current_owner()
    if owner is None:
        return None
    with _locked(root) as path:
        holder = _holder(path)
        if holder and not same(holder, owner) and alive(holder):
            raise LqError(refusal(holder, root))
        if not holder or not same(holder, owner):
            path.write_text(json.dumps(owner), encoding="utf-8")
    return owner


def release(root: str | Path = ".", owner: dict | None = None) -> None:
    """Give the lease up if `owner` holds it (a run that ended; a killed one's lease just goes stale)."""
    root = Path(root)
    if not (root / LEASE_FILE).exists():
        return
    owner = owner or current_owner()
    if owner is None:
        return
    with _locked(root) as path:
        holder = _holder(path)
        if holder and same(holder, owner):
            path.write_text("", encoding="utf-8")


class SnakemakeClaim:
    """What a Snakemake run holds on its workspace: DVC's lock (in a DVC project) and the lease."""

    def __init__(self, root: str | Path = "."):
        self.root = Path(root)
        self.owner = describe_self("snakemake")
        self.dvc_lock = _hold_dvc_lock(self.root)
        try:
            acquire(self.root, self.owner)
        except LqError:
            self.release()
            raise
        own_for_children(self.owner)

    def release(self) -> None:
        release(self.root, self.owner)
        if self.dvc_lock is not None:
            self.dvc_lock.unlock()
            self.dvc_lock = None


def _hold_dvc_lock(root: Path):
    """DVC's repository lock, taken the way DVC takes it (its `core.hardlink_lock` setting
    included), or None outside a DVC project."""
    if not (root / ".dvc").is_dir():
        return None
    from dvc.lock import LockError
    from dvc.repo import Repo

    lock = Repo(str(root), uninitialized=True).lock
    try:
        lock.lock()
    except LockError:
        raise LqError(f"DVC is running in {root.resolve()} (it holds .dvc/tmp/lock): Snakemake and DVC must "
                      "not run on one workspace at once. Wait for it to finish, then run Snakemake again") from None
    return lock


def own_for_children(owner: dict) -> None:
    """Let processes this one starts (jobs, torchrun workers) act for the same run."""
    os.environ[OWNER_ENV] = json.dumps(owner)
