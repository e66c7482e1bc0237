"""Atomic file and directory writes.

A crash (SIGKILL, full disk) must never leave a half-written file under its final name, because
Snakemake and DVC take any file that exists for a finished output. Everything is written to a
temporary sibling and moved into place with `os.replace`, which is atomic on POSIX.
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from lq.errors import LqError


def _clear_leftovers(final: Path) -> None:
    """Remove temporaries of earlier writes of `final` that a kill interrupted (one writer per
    output path in the pipeline, so any such sibling is stale)."""
    for stale in final.parent.glob(f".{glob.escape(final.name)}.*.tmp"):
        if stale.is_dir():
            shutil.rmtree(stale, ignore_errors=True)
        else:
            stale.unlink(missing_ok=True)


def _default_mode(directory: bool) -> int:
    """The mode a plain open()/mkdir() would give under the current umask (mkstemp uses 0600)."""
    umask = os.umask(0)
    os.umask(umask)
    return (0o777 if directory else 0o666) & ~umask


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`; move it onto `path` only if the block succeeds."""
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    _clear_leftovers(final)
    fd, tmp = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as fh:
            os.fsync(fh.fileno())
        os.chmod(tmp_path, _default_mode(directory=False))
        os.replace(tmp_path, final)
    finally:
        tmp_path.unlink(missing_ok=True)


def write_text(path: str | os.PathLike, text: str) -> None:
    """Write `text` to `path` atomically (UTF-8, '\\n' line endings)."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8", newline="\n")


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write `data` to `path` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Yield an empty temporary directory; it replaces `path` only if the block succeeds.

    An existing `path` is removed just before the rename, so a reader sees either the old
    complete directory, nothing, or the new complete directory, never a partial one.
    """
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    _clear_leftovers(final)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent))
    try:
        yield tmp
        os.chmod(tmp, _default_mode(directory=True))
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def check_writable(paths: list[str | os.PathLike]) -> None:
    """Refuse, before any work, outputs this process could not write: `atomic_path`/`atomic_dir`
    create a temporary beside each output (in its folder, made if missing) and rename it into
    place, and replacing an existing folder output deletes what it holds."""
    for path in map(Path, paths):
        folder = path.parent
        nearest = folder
        while not nearest.exists() and nearest != nearest.parent:
            nearest = nearest.parent
        if not nearest.is_dir():
            raise LqError(f"cannot write {path}: {nearest} is a file, not a folder; move it away or "
                          "choose another output path, then rerun")
        needed = [nearest]
        if path.is_dir() and not path.is_symlink():
            needed += [Path(d) for d, _, _ in os.walk(path)]
        for place in needed:
            if not os.access(place, os.W_OK | os.X_OK):
                made = "" if place == folder or place == path or path in place.parents else \
                    f" (where {folder} would be made)"
                raise LqError(f"cannot write {path}: the folder {place}{made} is not writable; make it writable "
                              f"(chmod u+w '{place}') or choose another output path, then rerun")
