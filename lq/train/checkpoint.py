"""Checkpoints that carry their config, load safely, and make killed runs resumable.

A checkpoint is a plain dict of tensors and primitives (so `torch.load(weights_only=True)` can
read it): model and optimizer state, scheduler state, epoch, task, RNG state, method state, and
the config the model was built with. Loading checks that config against what the caller
expects, so a checkpoint of another model or bit width fails with a message instead of a
shape error deep inside `load_state_dict`.
"""

from __future__ import annotations

import hashlib
import shutil
import sys
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import torch

from lq.atomic import atomic_path
from lq.errors import LqError
from lq.manifest import verify_file

RESUME_ROOT = Path(".lq-resume")


def save(path: Path, payload: Mapping[str, Any]) -> None:
    """Write atomically: a kill mid-save leaves the previous file (or none), never half of one.

    `torch.save` is given an open file, not a file name: given a name, it names the zip archive's
    records after the file (here a random temporary), so identical payloads would give different
    bytes; given a file object it always uses 'archive'. Strings are interned first: pickle writes
    a repeated string once if it is the same object, so a history read back from a resumed run's
    checkpoint (new string objects) would otherwise pickle to other bytes than the one an
    uninterrupted run built. With both, equal payloads give identical bytes.
    """
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        torch.save(_interned(dict(payload)), fh)


def _interned(value: Any) -> Any:
    """`value` with every string in its dicts, lists and tuples interned (tensors untouched)."""
    if isinstance(value, str):
        return sys.intern(value)
    if isinstance(value, dict):
        return {_interned(k): _interned(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_interned(v) for v in value)
    return value


def load(path: Path, expect: Mapping[str, Any] | None = None, map_location: str | torch.device = "cpu",
         describe: Callable[[Mapping[str, Any]], Mapping[str, Any]] | None = None) -> dict:
    """Load with `weights_only=True` and check its config against `expect` (key by key).

    `describe` turns the stored config into the flat view `expect` is written against
    (`lq.train.spec.describe`); by default the config itself.
    """
    verify_file(path)  # a checkpoint in a stage's output folder (lq.manifest)
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise LqError(f"{path}: checkpoint not found (did the stage that makes it run?)") from None
    except Exception as exc:  # noqa: BLE001 - unpickling errors come in many types
        raise LqError(f"{path}: not a readable lq checkpoint ({type(exc).__name__}: {exc})") from None
    if not isinstance(payload, dict) or "config" not in payload or "model" not in payload:
        raise LqError(f"{path}: not an lq checkpoint (no model/config entries)")
    try:
        view = describe(payload["config"]) if describe else payload["config"]
    except (KeyError, TypeError, LqError):
        raise LqError(f"{path}: checkpoint config is not in this lq version's format; rerun the stage that makes it") from None
    for key, wanted in (expect or {}).items():
        got = view.get(key)
        if got != wanted:
            raise LqError(
                f"{path}: checkpoint was made with {key} = {got!r}, but this run needs {key} = {wanted!r}; "
                "rerun the stage that makes it, or fix params.yaml"
            )
    return payload


def scheduler_state(scheduler: torch.optim.lr_scheduler.LRScheduler) -> dict:
    """MultiStepLR keeps its milestones in a Counter, which `weights_only` loading refuses."""
    state = dict(scheduler.state_dict())
    if isinstance(state.get("milestones"), Counter):
        state["milestones"] = dict(state["milestones"])
    return state


def load_scheduler_state(scheduler: torch.optim.lr_scheduler.LRScheduler, state: Mapping) -> None:
    state = dict(state)
    if isinstance(state.get("milestones"), dict):
        state["milestones"] = Counter(state["milestones"])
    scheduler.load_state_dict(state)


def fingerprint(config: Mapping[str, Any], inputs: Iterable[Path]) -> str:
    """A short hash of a stage's parameters and input files: resume only into the same run."""
    digest = hashlib.sha256(repr(sorted(config.items())).encode())
    for path in inputs:
        files = sorted(p for p in Path(path).rglob("*") if p.is_file()) if Path(path).is_dir() else [Path(path)]
        for file in files:
            if file.name.startswith("."):
                continue
            digest.update(str(file.relative_to(path) if Path(path).is_dir() else file.name).encode())
            with open(file, "rb") as fh:
                for block in iter(lambda: fh.read(1 << 20), b""):
                    digest.update(block)
    return digest.hexdigest()[:16]


class ResumeDir:
    """Where a running stage keeps what it needs to resume: outside every declared output.

    Snakemake (`--rerun-incomplete`) and DVC both delete a stage's outputs before rerunning it,
    so resume state lives in `.lq-resume/<run>/<fingerprint>/`, one folder per stage and grid
    cell (cells train side by side); the fingerprint makes a run with other parameters or inputs
    start afresh. It is removed when the stage finishes.
    """

    def __init__(self, run: str, fingerprint_: str, root: Path = RESUME_ROOT):
        self.path = root / run / fingerprint_
        for stale in (root / run).glob("*"):
            if stale != self.path:
                shutil.rmtree(stale, ignore_errors=True)

    def file(self, name: str) -> Path:
        return self.path / name

    def latest(self) -> Path | None:
        last = self.file("last.pt")
        return last if last.exists() else None

    def clear(self) -> None:
        shutil.rmtree(self.path.parent, ignore_errors=True)
