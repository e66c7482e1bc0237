"""Manifests of directory outputs: what a stage wrote into its folder, checked by every reader.

A stage that writes a folder (`data/store/`, `data/split/`, `data/replay/`, `data/counts/`, a
lifelong cell's `models/.../{method}-{bits}/`) also writes `MANIFEST.json` into it, in the same
atomic rename: the stage (and grid cell) that made the folder and each file's size and SHA-256.

    {"format": 1, "stage": "lifelong", "cell": {"method": "lifequant", ...},
     "files": {"task0.pt": {"bytes": 1140353, "sha256": "9f2c..."}, ...}}

Every reader of a file in such a folder calls `verify_file` first: a file the manifest lists
that is missing, or whose size or SHA-256 differs, stops the reader with an `LqError` naming the
file, the stage that wrote it and the commands that rerun that stage. Snakemake does not look
inside directories and DVC reports a damaged folder only to whoever runs `dvc status`, so this is
the check that keeps a damaged upstream file from silently feeding a later stage.

Cost: the full SHA-256 of each file, once per process (a file read twice by one stage is hashed
once while its size, mtime and inode stay the same). There is no size-and-mtime shortcut: a
flipped byte keeps the size, and `dvc commit`/`dvc checkout` rewrite files with new mtimes, so
mtimes can neither prove a file intact nor damaged; and the manifest must not record mtimes, or
two identical runs would give different bytes. Measured on the 2-core development machine:
0.2 s for a CIFAR-100-sized 184 MB `images.npy` (reading that store takes 0.3 s without the
check), 0.6 ms for the digits store: small beside any stage that reads them.

Folders without a manifest (made by hand, e.g. the reference's CSVs) are read unverified.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from lq.atomic import atomic_dir
from lq.errors import LqError

MANIFEST = "MANIFEST.json"
FORMAT = 1

# Per process: manifests by folder (keyed with the manifest's own stat) and files already checked.
_manifests: dict[Path, tuple[tuple[int, int, int], dict[str, Any]]] = {}
_verified: dict[Path, tuple[int, int, int]] = {}


def _stat_key(path: Path) -> tuple[int, int, int]:
    st = path.stat()
    return st.st_size, st.st_mtime_ns, st.st_ino


def sha256(path: Path) -> str:
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def build(folder: Path, stage: str, cell: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The manifest of every visible file under `folder` (hidden files, e.g. Snakemake's markers, aside)."""
    files = sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith(".") and p.name != MANIFEST)
    return {
        "format": FORMAT,
        "stage": stage,
        "cell": {str(k): str(v) for k, v in (cell or {}).items()},
        "files": {p.relative_to(folder).as_posix(): {"bytes": p.stat().st_size, "sha256": sha256(p)} for p in files},
    }


def write(folder: Path, stage: str, cell: Mapping[str, str] | None = None) -> None:
    """Write `folder/MANIFEST.json` (stable bytes: same files, same manifest)."""
    text = json.dumps(build(folder, stage, cell), indent=2) + "\n"
    (folder / MANIFEST).write_text(text, encoding="utf-8", newline="\n")


@contextlib.contextmanager
def output_dir(path: str | os.PathLike, stage: str, cell: Mapping[str, str] | None = None) -> Iterator[Path]:
    """`lq.atomic.atomic_dir` that also writes the folder's manifest before the rename."""
    with atomic_dir(path) as tmp:
        yield tmp
        write(tmp, stage, cell)


def rerun_hint(stage: str, cell: Mapping[str, str], folder: Path) -> str:
    """How to rerun the stage (and grid cell) that made `folder`, with either tool."""
    if cell:
        # One cell only: Snakemake reruns the job that makes this file, DVC the matrix entry.
        try:
            from lq.pipeline import stage_by_name

            axes = [a for a in stage_by_name(stage).axes if a in cell] or list(cell)
        except LqError:
            axes = list(cell)
        snakemake = f"snakemake --cores all --forcerun {folder / MANIFEST} all"
        dvc = f"{stage}@{'-'.join(str(cell[a]) for a in axes)}"
    else:
        snakemake, dvc = f"snakemake --cores all --forcerun {stage} all", stage
    return f"rerun stage '{stage}': `{snakemake}`, or `dvc repro -f -s {dvc}` then `dvc repro`"


def _manifest(folder: Path) -> dict[str, Any] | None:
    """The folder's manifest (cached while the file is unchanged), or None when it has none."""
    path = folder / MANIFEST
    try:
        key = _stat_key(path)
    except FileNotFoundError:
        return None
    cached = _manifests.get(folder.absolute())
    if cached and cached[0] == key:
        return cached[1]
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        if not (isinstance(data, dict) and isinstance(data.get("files"), dict) and isinstance(data.get("stage"), str)):
            raise ValueError("expected an object with 'stage' and 'files'")
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise LqError(f"{path}: damaged manifest ({exc}); rerun the stage that wrote {folder}, "
                      "or delete the folder and run the pipeline again") from None
    _manifests[folder.absolute()] = (key, data)
    return data


def verify_file(path: str | os.PathLike) -> None:
    """Check a file against its folder's manifest, if the folder has one (see the module doc)."""
    path = Path(path)
    folder = path.parent
    manifest = _manifest(folder)
    if manifest is None:
        return
    entry = manifest["files"].get(path.name)
    if entry is None:
        return  # not written by the stage: the reader reports it as it always did
    stage, cell = manifest["stage"], manifest.get("cell") or {}
    hint = rerun_hint(stage, cell, folder)
    try:
        key = _stat_key(path)
    except FileNotFoundError:
        raise LqError(f"{path} is missing: stage '{stage}' wrote it (listed in {folder / MANIFEST}); {hint}") from None
    if _verified.get(path.absolute()) == key:
        return
    if key[0] != entry.get("bytes"):
        raise LqError(f"{path} differs from what stage '{stage}' wrote ({key[0]} bytes, it wrote "
                      f"{entry.get('bytes')}); {hint}")
    digest = sha256(path)
    if digest != entry.get("sha256"):
        raise LqError(f"{path} differs from what stage '{stage}' wrote (sha256 {digest[:12]}…, it wrote "
                      f"{str(entry.get('sha256'))[:12]}…); {hint}")
    _verified[path.absolute()] = key


def verify_files(*paths: str | os.PathLike) -> None:
    for path in paths:
        verify_file(path)
