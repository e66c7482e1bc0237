"""The compact image store: every image of a data set in one array, loaded in one read.

Decoding tens of thousands of PNG files at every training start is slow and makes results
depend on the decoder, so the download step decodes once and writes a store directory:

    images.npy   uint8, N x H x W x C (C = 3 for RGB, 1 for grayscale)
    labels.npy   int64, N; an index into classes.txt
    index.csv    header `image,label,split`; one row per image in store order. `image` is the
                 image id `<split>/<class_name>/<file>` (the path the image has, or would have,
                 in the folder layout `<root>/<split>/<class_name>/<file>`); later tables (tasks,
                 replay) refer to images by this id.
    classes.txt  the sorted class names, one per line; class id = line number (from 0)
    meta.json    source name, array shape, number of classes, counts per split

All files are byte-deterministic (no timestamps; that is why `.npy` files and not `.npz`), so
DVC and Snakemake see an unchanged output when the input did not change.
"""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lq.errors import LqError
from lq.manifest import output_dir, verify_files

SPLITS: tuple[str, ...] = ("train", "test")
STORE_FILES: tuple[str, ...] = ("images.npy", "labels.npy", "index.csv", "classes.txt", "meta.json")
INDEX_HEADER: tuple[str, ...] = ("image", "label", "split")
FORMAT_VERSION = 1


@dataclass(frozen=True, eq=False)
class ImageStore:
    """Images, labels and ids of one data set (train and test together), validated on creation.

    `ids[i]` is `<split>/<class_name>/<file>` with `class_name == classes[labels[i]]`, so the
    split and the class of every row can be read from its id alone.
    """

    images: np.ndarray
    labels: np.ndarray
    ids: np.ndarray
    classes: tuple[str, ...]
    source: str = "unknown"

    def __post_init__(self) -> None:
        """Normalise dtypes and check every invariant, so a bad store cannot be written."""
        object.__setattr__(self, "labels", np.asarray(self.labels, dtype=np.int64))
        object.__setattr__(self, "ids", np.asarray(self.ids, dtype=str))
        object.__setattr__(self, "classes", tuple(str(c) for c in self.classes))
        problem = _store_problem(self.images, self.labels, self.ids, self.classes)
        if problem:
            raise LqError(f"invalid image store: {problem}")

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def __eq__(self, other: object) -> bool:
        """Compare contents (arrays element-wise, dtypes included), not array identity."""
        if not isinstance(other, ImageStore):
            return NotImplemented
        return (
            self.classes == other.classes
            and self.source == other.source
            and self.images.dtype == other.images.dtype
            and np.array_equal(self.images, other.images)
            and np.array_equal(self.labels, other.labels)
            and np.array_equal(self.ids, other.ids)
        )

    __hash__ = None  # type: ignore[assignment]  # arrays are mutable, so no hash

    @property
    def split(self) -> np.ndarray:
        """Split of every row ('train' or 'test'), read from the id prefix."""
        return np.array([i.split("/", 1)[0] for i in self.ids.tolist()], dtype=str)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(H, W, C) of one image."""
        return tuple(int(s) for s in self.images.shape[1:])  # type: ignore[return-value]

    def counts(self) -> dict[str, int]:
        """Number of images per split, in the order of SPLITS."""
        split = self.split
        return {s: int(np.count_nonzero(split == s)) for s in SPLITS}

    def subset(self, split: str) -> ImageStore:
        """The rows of one split, in store order, with the same class list (ids stay stable)."""
        if split not in SPLITS:
            raise LqError(f"unknown split {split!r}; expected one of {', '.join(SPLITS)}")
        mask = self.split == split
        return ImageStore(
            images=self.images[mask],
            labels=self.labels[mask],
            ids=self.ids[mask],
            classes=self.classes,
            source=self.source,
        )


def _store_problem(
    images: np.ndarray, labels: np.ndarray, ids: np.ndarray, classes: Sequence[str]
) -> str | None:
    """Describe the first broken invariant of a store, or None; shared by creation and reading."""
    if not isinstance(images, np.ndarray) or images.dtype != np.uint8 or images.ndim != 4:
        got = f"{getattr(images, 'dtype', type(images).__name__)} {getattr(images, 'shape', '')}"
        return f"images must be a uint8 array N x H x W x C, got {got}"
    if images.shape[3] not in (1, 3):
        return f"images must have 1 or 3 channels, got shape {images.shape}"
    if labels.ndim != 1 or ids.ndim != 1:
        return f"labels and ids must be 1-D, got shapes {labels.shape} and {ids.shape}"
    if not len(images) == len(labels) == len(ids):
        return f"lengths differ: {len(images)} images, {len(labels)} labels, {len(ids)} ids"
    if not classes:
        return "no classes"
    if list(classes) != sorted(set(classes)):
        return "classes must be sorted and unique (class id = index in the sorted names)"
    bad = [c for c in classes if not c or "/" in c or "\n" in c or c.startswith(".")]
    if bad:
        return f"invalid class name {bad[0]!r} (empty, hidden, or containing '/' or a newline)"
    if len(labels) and (labels.min() < 0 or labels.max() >= len(classes)):
        return f"labels must lie in [0, {len(classes) - 1}], got [{labels.min()}, {labels.max()}]"
    return _ids_problem(ids, labels, classes)


def _ids_problem(ids: np.ndarray, labels: np.ndarray, classes: Sequence[str]) -> str | None:
    """Check ids are unique and of the form <split>/<classes[label]>/<file>."""
    id_list = ids.tolist()
    seen: set[str] = set()
    for image_id in id_list:
        if image_id in seen:
            return f"duplicate image id {image_id!r}"
        seen.add(image_id)
    for row, (image_id, label) in enumerate(zip(id_list, labels.tolist())):
        parts = image_id.split("/")
        if len(parts) != 3 or parts[0] not in SPLITS or not parts[2] or "\n" in image_id:
            return f"row {row}: id {image_id!r} is not '<train|test>/<class_name>/<file>'"
        if parts[1] != classes[label]:
            return (
                f"row {row}: id {image_id!r} names class {parts[1]!r} "
                f"but label {label} is {classes[label]!r}"
            )
    return None


def store_meta(store: ImageStore) -> dict:
    """The meta.json content: what a reader checks before trusting the arrays."""
    return {
        "format": FORMAT_VERSION,
        "source": store.source,
        "shape": [int(s) for s in store.images.shape],
        "dtype": "uint8",
        "num_classes": len(store.classes),
        "counts": store.counts(),
    }


def _npy_bytes(array: np.ndarray) -> bytes:
    """Serialise one array as .npy; the format carries no timestamp, so bytes are reproducible."""
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(array), allow_pickle=False)
    return buf.getvalue()


def _index_csv(store: ImageStore) -> str:
    """The index table `image,label,split`, one row per image in store order."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(INDEX_HEADER)
    for image_id, label, split in zip(store.ids.tolist(), store.labels.tolist(), store.split.tolist()):
        writer.writerow((image_id, label, split))
    return buf.getvalue()


def write_store(store: ImageStore, out_dir: str | os.PathLike, stage: str = "download") -> Path:
    """Write `store` to `out_dir` atomically: readers see the old directory or the full new one.

    The folder's MANIFEST.json (`lq.manifest`) names `stage` as its maker.
    """
    out = Path(out_dir)
    with output_dir(out, stage) as tmp:
        (tmp / "images.npy").write_bytes(_npy_bytes(store.images))
        (tmp / "labels.npy").write_bytes(_npy_bytes(store.labels.astype(np.int64)))
        (tmp / "index.csv").write_text(_index_csv(store), encoding="utf-8", newline="\n")
        (tmp / "classes.txt").write_text(
            "".join(f"{c}\n" for c in store.classes), encoding="utf-8", newline="\n"
        )
        meta = json.dumps(store_meta(store), indent=2, sort_keys=True) + "\n"
        (tmp / "meta.json").write_text(meta, encoding="utf-8", newline="\n")
        os.chmod(tmp, 0o755)  # mkdtemp makes 0700; a store is ordinary shared output
    return out


def _load_npy(path: Path, mmap: bool) -> np.ndarray:
    """Load one array without pickles; a damaged file becomes an LqError naming it."""
    try:
        return np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except (OSError, ValueError, EOFError) as exc:
        raise LqError(f"{path}: not a readable .npy array ({exc})") from exc


def _read_index(path: Path) -> tuple[list[str], list[int], list[str]]:
    """Parse index.csv into ids, labels and splits, checking the header."""
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            rows = list(csv.reader(fh))
    except (OSError, UnicodeDecodeError) as exc:
        raise LqError(f"{path}: cannot read the index ({exc})") from exc
    if not rows or tuple(rows[0]) != INDEX_HEADER:
        raise LqError(f"{path}: header must be {','.join(INDEX_HEADER)}")
    ids, labels, splits = [], [], []
    for line, row in enumerate(rows[1:], start=2):
        if len(row) != 3 or not row[1].lstrip("-").isdigit():
            raise LqError(f"{path}: line {line} must be `image,label,split` with an integer label")
        ids.append(row[0])
        labels.append(int(row[1]))
        splits.append(row[2])
    return ids, labels, splits


def _read_classes(path: Path) -> tuple[str, ...]:
    """Read classes.txt (one name per line)."""
    try:
        return tuple(path.read_text(encoding="utf-8").splitlines())
    except (OSError, UnicodeDecodeError) as exc:
        raise LqError(f"{path}: cannot read the class list ({exc})") from exc


def _read_meta(path: Path) -> dict:
    """Read meta.json."""
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise LqError(f"{path}: not valid JSON ({exc})") from exc
    if not isinstance(meta, dict):
        raise LqError(f"{path}: must hold a JSON object")
    return meta


def read_store(store_dir: str | os.PathLike, mmap: bool = False) -> ImageStore:
    """Read a store written by `write_store`; every inconsistency names the file at fault.

    With `mmap=True` the images stay on disk (read-only memory map), for data sets larger
    than memory; labels and ids are always loaded.
    """
    root = Path(store_dir)
    verify_files(*(root / name for name in STORE_FILES))  # against what the download stage wrote
    missing = [name for name in STORE_FILES if not (root / name).is_file()]
    if missing:
        raise LqError(f"{root}: not an image store, missing {', '.join(missing)}")
    images = _load_npy(root / "images.npy", mmap)
    labels = _load_npy(root / "labels.npy", mmap=False)
    classes = _read_classes(root / "classes.txt")
    ids, index_labels, splits = _read_index(root / "index.csv")
    meta = _read_meta(root / "meta.json")
    _check_arrays(root, images, labels, classes)
    _check_index(root, labels, ids, index_labels, splits, len(images))
    _check_meta(root, meta, images, splits)
    try:
        source = str(meta.get("source", "unknown"))
        return ImageStore(images, labels, np.array(ids, dtype=str), classes, source)
    except LqError as exc:
        raise LqError(f"{root / 'index.csv'}: {exc}") from exc


def _check_arrays(root: Path, images: np.ndarray, labels: np.ndarray, classes: tuple[str, ...]) -> None:
    """Check images.npy and labels.npy against each other and classes.txt."""
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[3] not in (1, 3):
        raise LqError(
            f"{root / 'images.npy'}: expected uint8 N x H x W x C (C = 1 or 3), "
            f"got {images.dtype} {images.shape}"
        )
    if labels.dtype != np.int64 or labels.ndim != 1:
        raise LqError(f"{root / 'labels.npy'}: expected a 1-D int64 array, got {labels.dtype} {labels.shape}")
    if len(labels) != len(images):
        raise LqError(
            f"{root / 'labels.npy'}: {len(labels)} labels but images.npy holds {len(images)} images"
        )
    if not classes:
        raise LqError(f"{root / 'classes.txt'}: no class names")
    if len(labels) and (labels.min() < 0 or labels.max() >= len(classes)):
        raise LqError(
            f"{root / 'labels.npy'}: labels must lie in [0, {len(classes) - 1}] "
            f"(classes.txt has {len(classes)} names), got [{labels.min()}, {labels.max()}]"
        )


def _check_index(
    root: Path,
    labels: np.ndarray,
    ids: list[str],
    index_labels: list[int],
    splits: list[str],
    n_images: int,
) -> None:
    """Check index.csv agrees row by row with labels.npy and with its own ids."""
    path = root / "index.csv"
    if len(ids) != n_images:
        raise LqError(f"{path}: {len(ids)} rows but images.npy holds {n_images} images")
    if not np.array_equal(np.asarray(index_labels, dtype=np.int64), labels):
        row = int(np.flatnonzero(np.asarray(index_labels, dtype=np.int64) != labels)[0])
        raise LqError(f"{path}: row {row + 1} has label {index_labels[row]} but labels.npy has {labels[row]}")
    for row, (image_id, split) in enumerate(zip(ids, splits)):
        if image_id.split("/", 1)[0] != split:
            raise LqError(f"{path}: row {row + 1}: split {split!r} does not match id {image_id!r}")


def _check_meta(root: Path, meta: dict, images: np.ndarray, splits: list[str]) -> None:
    """Check meta.json describes the arrays actually present (catches mixed-up directories)."""
    path = root / "meta.json"
    if meta.get("shape") != [int(s) for s in images.shape]:
        raise LqError(f"{path}: shape {meta.get('shape')} but images.npy has {list(images.shape)}")
    counts = {s: splits.count(s) for s in SPLITS}
    if meta.get("counts") != counts:
        raise LqError(f"{path}: counts {meta.get('counts')} but index.csv has {counts}")
