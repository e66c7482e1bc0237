"""Image sources: each turns some input (embedded, an archive, a folder tree) into an ImageStore.

`SOURCES` maps a source name to a loader with one keyword signature
`(*, root, seed, test_fraction, download) -> ImageStore`; a loader ignores what it does not use
(only `digits` splits by `seed`/`test_fraction`; `cifar100`, `fashion_mnist` and `mnist` download).
The IDX sources (Fashion-MNIST, MNIST) live in `lq.data.idx`. `load_source`
looks the name up, so a new source is one function and one registry entry.

Class ids are always indices into the *sorted* class names, as the reference derives them from
sorted folder names (SPEC section 1, step 1). For CIFAR-100 the pickle's `fine_labels` index the
pickle's own name list; they are remapped to the sorted list (the official list happens to be
sorted already, so the remap is the identity there, but a re-packed archive need not be).
"""

from __future__ import annotations

import hashlib
import http.client
import importlib
import os
import pickle
import tarfile
import urllib.parse
import urllib.request
import zlib
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path, PurePosixPath
from types import MappingProxyType

import numpy as np

from lq.atomic import atomic_dir, atomic_path
from lq.checks import describe_odd_entry
from lq.data.store import ImageStore
from lq.errors import LqError

CIFAR100_URL = "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz"
CIFAR100_MD5 = "eb9058c3a382ffc7106e4002c42a8d85"
CIFAR100_ARCHIVE = "cifar-100-python.tar.gz"
CIFAR100_DIR = "cifar-100-python"
CIFAR100_FILES = ("train", "test", "meta")
DOWNLOAD_TIMEOUT_S = 60.0
IMAGE_FORMATS = ("PNG", "JPEG")

PathLike = str | os.PathLike


# --------------------------------------------------------------------------- digits


def load_digits_store(*, seed: int, test_fraction: float) -> ImageStore:
    """scikit-learn's embedded 8x8 digits (no network): the offline default and the test source.

    Pixels 0..16 become uint8 round(v * 255 / 16). The split is stratified and seeded, so every
    class is in both parts. Rows are ordered train then test, each by original index; ids are
    `<split>/<digit>/<original index:04d>.png`.
    """
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    _check_fraction(test_fraction)
    _check_seed(seed)
    digits = load_digits()
    pixels = np.floor(digits.images * 255.0 / 16.0 + 0.5)
    images = np.clip(pixels, 0, 255).astype(np.uint8)[..., np.newaxis]
    target = np.asarray(digits.target, dtype=np.int64)
    index = np.arange(len(target))
    train_idx, test_idx = train_test_split(
        index, stratify=target, random_state=seed, test_size=test_fraction
    )
    classes = tuple(str(d) for d in range(10))
    order = np.concatenate([np.sort(train_idx), np.sort(test_idx)])
    splits = ["train"] * len(train_idx) + ["test"] * len(test_idx)
    ids = [f"{s}/{classes[target[i]]}/{i:04d}.png" for s, i in zip(splits, order.tolist())]
    return ImageStore(images[order], target[order], np.array(ids), classes, "digits")


def _check_fraction(test_fraction: float) -> None:
    """A split needs both parts non-empty."""
    if not isinstance(test_fraction, (int, float)) or not 0.0 < float(test_fraction) < 1.0:
        raise LqError(f"test_fraction must lie strictly between 0 and 1, got {test_fraction!r}")


def _check_seed(seed: int) -> None:
    """scikit-learn and NumPy seeds must be integers in [0, 2**32)."""
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not 0 <= seed < 2**32:
        raise LqError(f"seed must be an integer in [0, 2**32), got {seed!r}")


# --------------------------------------------------------------------------- cifar100


def load_cifar100(
    root: PathLike,
    *,
    download: bool,
    url: str | None = None,
    md5: str | None = None,
    timeout: float = DOWNLOAD_TIMEOUT_S,
) -> ImageStore:
    """CIFAR-100 from the official python-pickle release (`root` holds the archive or its folder).

    `url` and `md5` default to the module constants CIFAR100_URL and CIFAR100_MD5, read at call
    time so a test can point them at a local server and a small archive.
    """
    folder = fetch_cifar100(root, download=download, url=url, md5=md5, timeout=timeout)
    return read_cifar100_folder(folder)


def fetch_cifar100(
    root: PathLike,
    *,
    download: bool,
    url: str | None = None,
    md5: str | None = None,
    timeout: float = DOWNLOAD_TIMEOUT_S,
) -> Path:
    """Return `root/cifar-100-python`, extracting the verified archive (downloading it if allowed).

    Order: an extracted folder is used as is; else `root/cifar-100-python.tar.gz` is checked
    against the MD5 and extracted; else, with `download`, the archive is fetched first.
    """
    url = CIFAR100_URL if url is None else url
    md5 = CIFAR100_MD5 if md5 is None else md5
    base = Path(root)
    folder = base / CIFAR100_DIR
    if folder.is_dir():
        return folder
    archive = base / CIFAR100_ARCHIVE
    if not archive.is_file():
        if not download:
            raise LqError(
                f"CIFAR-100 not found: put the official archive at {archive} (from {url}) "
                f"or its extracted folder at {folder}, or enable download"
            )
        download_file(url, archive, md5=md5, timeout=timeout)
    verify_md5(archive, md5)
    safe_extract(archive, folder, prefix=CIFAR100_DIR)
    return folder


def file_md5(path: PathLike, chunk: int = 1 << 20) -> str:
    """MD5 hex digest of a file, read in chunks (the archive is 161 MB)."""
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def verify_md5(path: PathLike, expected: str) -> None:
    """Refuse an archive that is not the published one (truncated download, other version)."""
    got = file_md5(path)
    if got != expected.lower():
        raise LqError(f"{path}: MD5 mismatch, expected {expected.lower()}, got {got}")


def download_file(url: str, dest: PathLike, *, md5: str, timeout: float = DOWNLOAD_TIMEOUT_S) -> Path:
    """Stream `url` to a temporary file beside `dest`; move it into place only if the MD5 matches.

    On any failure (network, short read, checksum) the temporary file is deleted and `dest` is
    left untouched, so a rerun starts clean.
    """
    scheme = urllib.parse.urlsplit(url).scheme
    if scheme not in ("http", "https"):
        raise LqError(f"download URL must be http or https, got {url!r}")
    dest = Path(dest)
    with atomic_path(dest) as tmp:
        got = _stream_to(url, tmp, timeout, dest)
        if got != md5.lower():
            raise LqError(
                f"download of {url} failed its checksum: MD5 expected {md5.lower()}, got {got}; "
                f"the partial file was deleted, nothing was written to {dest}"
            )
    return dest


def _stream_to(url: str, path: Path, timeout: float, dest: Path) -> str:
    """Copy the response body to `path` in chunks and return its MD5 (`dest` is for messages)."""
    digest = hashlib.md5(usedforsecurity=False)
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response, open(path, "wb") as out:
            total = int(response.headers.get("Content-Length") or 0) or None
            received = 0
            with _progress(total, url) as bar:
                while block := response.read(1 << 16):
                    out.write(block)
                    digest.update(block)
                    received += len(block)
                    bar.update(len(block))
    except (OSError, http.client.HTTPException) as exc:
        raise LqError(
            f"cannot download {url} ({exc}); fetch it by hand and put it at {dest}"
        ) from exc
    if total is not None and received != total:
        raise LqError(f"download of {url} stopped after {received} of {total} bytes")
    return digest.hexdigest()


class _NoBar:
    """Stand-in progress bar when tqdm is not installed."""

    def __enter__(self) -> _NoBar:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def update(self, n: int) -> None:
        """Ignore progress."""


def _progress(total: int | None, url: str):
    """A tqdm bar on interactive terminals if tqdm is installed, else a no-op."""
    try:
        from tqdm import tqdm
    except ImportError:
        return _NoBar()
    name = PurePosixPath(urllib.parse.urlsplit(url).path).name
    return tqdm(total=total, unit="B", unit_scale=True, desc=name, disable=None)


def safe_extract(archive: PathLike, dest: PathLike, *, prefix: str) -> Path:
    """Extract the regular files under `prefix/` of a tar archive into `dest`, atomically.

    Every member is checked before anything is written: absolute paths, '..' components, links
    and device files are refused (a crafted archive could otherwise write outside `dest`), as are
    members outside `prefix/` (not the expected layout).
    """
    archive = Path(archive)
    try:
        with tarfile.open(archive, "r:*") as tar:
            members = tar.getmembers()
            files = _checked_members(archive, members, prefix)
            with atomic_dir(dest) as tmp:
                for member, rel in files:
                    _copy_member(tar, member, tmp / rel)
    except (tarfile.TarError, EOFError, zlib.error) as exc:
        raise LqError(f"{archive}: not a readable tar archive ({exc})") from exc
    return Path(dest)


def _checked_members(
    archive: Path, members: list[tarfile.TarInfo], prefix: str
) -> list[tuple[tarfile.TarInfo, PurePosixPath]]:
    """Validate all members and return the regular files with their path relative to prefix."""
    files = []
    for member in members:
        name = PurePosixPath(member.name)
        if member.name.startswith(("/", "\\")) or name.is_absolute() or ".." in name.parts:
            raise LqError(f"{archive}: refusing member {member.name!r} (absolute path or '..')")
        if not (member.isfile() or member.isdir()):
            raise LqError(f"{archive}: refusing member {member.name!r} (link or special file)")
        parts = [p for p in name.parts if p != "."]
        if not parts or parts[0] != prefix:
            raise LqError(f"{archive}: unexpected member {member.name!r}, expected only {prefix}/...")
        if member.isfile() and len(parts) > 1:
            files.append((member, PurePosixPath(*parts[1:])))
    return files


def _copy_member(tar: tarfile.TarFile, member: tarfile.TarInfo, target: Path) -> None:
    """Write one regular member's bytes (never its mode, owner or links)."""
    source = tar.extractfile(member)
    if source is None:
        raise LqError(f"{tar.name}: cannot read member {member.name!r}")
    target.parent.mkdir(parents=True, exist_ok=True)
    with source, open(target, "wb") as out:
        while block := source.read(1 << 20):
            out.write(block)


# Globals a CIFAR pickle legitimately needs: numpy array reconstruction (legacy and numpy 2
# module names) and the bytes codec of protocol-2 pickles written by Python 3. Anything else
# is refused, because unpickling can run arbitrary code and the extracted folder is user input.
_PICKLE_ALLOWED = frozenset(
    {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.numeric", "_frombuffer"),
        ("numpy._core.numeric", "_frombuffer"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("_codecs", "encode"),
    }
)


class _ArrayUnpickler(pickle.Unpickler):
    """An unpickler that only resolves the globals in _PICKLE_ALLOWED."""

    def find_class(self, module: str, name: str) -> object:
        if (module, name) not in _PICKLE_ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load global {module}.{name}")
        if module.startswith("numpy.core"):
            module = "numpy._core" + module[len("numpy.core") :]
        return getattr(importlib.import_module(module), name)


def _read_pickle(path: Path) -> dict[str, object]:
    """Load one CIFAR pickle (Python 2 era: bytes keys) into a dict with str keys."""
    try:
        with open(path, "rb") as fh:
            data = _ArrayUnpickler(fh, encoding="bytes").load()
    except FileNotFoundError as exc:
        raise LqError(f"{path}: missing; expected the CIFAR-100 files {', '.join(CIFAR100_FILES)}") from exc
    except (OSError, pickle.UnpicklingError, EOFError, ValueError, TypeError) as exc:
        raise LqError(f"{path}: not a CIFAR-100 pickle ({exc})") from exc
    if not isinstance(data, dict):
        raise LqError(f"{path}: expected a pickled dict, got {type(data).__name__}")
    return {k.decode("latin1") if isinstance(k, bytes) else str(k): v for k, v in data.items()}


def _field(data: Mapping[str, object], key: str, path: Path) -> object:
    """One required key of a CIFAR pickle."""
    if key not in data:
        raise LqError(f"{path}: missing key {key!r} (has {', '.join(sorted(data))})")
    return data[key]


def _text(value: object) -> str:
    """Pickle strings are bytes in the official files."""
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def read_cifar100_folder(folder: PathLike) -> ImageStore:
    """Build the store from an extracted `cifar-100-python/` folder (train rows, then test)."""
    folder = Path(folder)
    meta_path = folder / "meta"
    raw_names = _field(_read_pickle(meta_path), "fine_label_names", meta_path)
    names = [_text(n) for n in raw_names]  # type: ignore[attr-defined]
    classes = tuple(sorted(names))
    if len(set(names)) != len(names):
        raise LqError(f"{meta_path}: fine_label_names has duplicates")
    remap = np.array([classes.index(n) for n in names], dtype=np.int64)
    parts = [_read_cifar_split(folder / split, split, remap, classes) for split in ("train", "test")]
    images = np.concatenate([p[0] for p in parts])
    labels = np.concatenate([p[1] for p in parts])
    ids = np.concatenate([p[2] for p in parts])
    return ImageStore(images, labels, ids, classes, "cifar100")


def _read_cifar_split(
    path: Path, split: str, remap: np.ndarray, classes: tuple[str, ...]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Decode one pickle: rows of 3072 bytes (R plane, G plane, B plane) become 32x32x3 HWC."""
    data = _read_pickle(path)
    raw = np.asarray(_field(data, "data", path))
    fine = np.asarray(_field(data, "fine_labels", path), dtype=np.int64)
    filenames = [_text(f) for f in _field(data, "filenames", path)]  # type: ignore[union-attr]
    if raw.ndim != 2 or raw.shape[1] != 3 * 32 * 32 or raw.dtype != np.uint8:
        raise LqError(f"{path}: 'data' must be uint8 rows of 3072 values, got {raw.dtype} {raw.shape}")
    if not len(raw) == len(fine) == len(filenames):
        raise LqError(
            f"{path}: {len(raw)} images, {len(fine)} fine_labels and {len(filenames)} filenames differ"
        )
    if len(fine) and (fine.min() < 0 or fine.max() >= len(remap)):
        raise LqError(f"{path}: fine_labels outside [0, {len(remap) - 1}]")
    images = np.ascontiguousarray(raw.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
    labels = remap[fine]
    names = _unique_names(filenames)
    ids = np.array([f"{split}/{classes[c]}/{n}" for c, n in zip(labels.tolist(), names)], dtype=str)
    return images, labels, ids


def _unique_names(names: list[str]) -> list[str]:
    """Keep file names as ids, suffixing a repeated name with its row (ids must be unique)."""
    seen: set[str] = set()
    out = []
    for row, name in enumerate(names):
        if name in seen:
            stem, dot, ext = name.rpartition(".")
            name = f"{stem}_row{row}.{ext}" if dot else f"{name}_row{row}"
        seen.add(name)
        out.append(name)
    return out


# --------------------------------------------------------------------------- folder


def load_folder(root: PathLike, *, workers: int | None = None) -> ImageStore:
    """Any tree `<root>/{train,test}/<class_name>/<image>` of PNG or JPEG files.

    Class and file names are sorted and hidden entries (names starting with '.') skipped, so
    the store is the same on every file system. Images are decoded to RGB, except when every
    image is 8-bit grayscale (PIL mode 'L'): then the single channel is kept (N x H x W x 1).
    Alpha is dropped. Every image is fully decoded, so a truncated file fails here, not in
    training.
    """
    root = Path(root)
    listing = {split: _list_split(root, split) for split in ("train", "test")}
    _check_same_classes(root, listing["train"], listing["test"])
    classes = tuple(sorted(listing["train"]))
    paths, labels, ids = [], [], []
    for split in ("train", "test"):
        for label, name in enumerate(classes):
            for path in listing[split][name]:
                paths.append(path)
                labels.append(label)
                ids.append(f"{split}/{name}/{path.name}")
    images = _decode_all(paths, workers)
    return ImageStore(images, np.array(labels, dtype=np.int64), np.array(ids, dtype=str), classes, "folder")


def _visible(entries: list[Path]) -> list[Path]:
    """Sorted entries without hidden ones ('.DS_Store', editor swap files)."""
    return sorted((e for e in entries if not e.name.startswith(".")), key=lambda p: p.name)


def _refuse_odd_link(path: Path) -> None:
    """A symbolic link loop or a broken link is named as such (is_dir/is_file just say False)."""
    odd = describe_odd_entry(path)
    if odd:
        raise LqError(f"{path}: is {odd}; remove it or point it at an image (or a class folder)")


def _list_split(root: Path, split: str) -> dict[str, list[Path]]:
    """Map class name -> sorted image paths for one split, refusing empty classes."""
    split_dir = root / split
    _refuse_odd_link(split_dir)
    if not split_dir.is_dir():
        raise LqError(f"{split_dir}: missing; expected {root}/{{train,test}}/<class_name>/<image>")
    listing: dict[str, list[Path]] = {}
    for class_dir in _visible(list(split_dir.iterdir())):
        _refuse_odd_link(class_dir)
        if not class_dir.is_dir():
            raise LqError(f"{class_dir}: expected only class folders in {split_dir}")
        files = _visible(list(class_dir.iterdir()))
        for entry in files:
            _refuse_odd_link(entry)
        nested = [f for f in files if not f.is_file()]
        if nested:
            kind = "a folder" if nested[0].is_dir() else "something that is neither a file nor a folder"
            raise LqError(f"{nested[0]}: expected image files directly in {class_dir}, found {kind}")
        if not files:
            raise LqError(f"{class_dir}: class folder has no images")
        listing[class_dir.name] = files
    if not listing:
        raise LqError(f"{split_dir}: no class folders")
    return listing


def _check_same_classes(root: Path, train: Mapping[str, list[Path]], test: Mapping[str, list[Path]]) -> None:
    """Train and test must name the same classes, or class ids would mean different things."""
    only_train = sorted(set(train) - set(test))
    only_test = sorted(set(test) - set(train))
    if only_train or only_test:
        raise LqError(
            f"{root}: train and test must have the same class folders; "
            f"only in train: {only_train or 'none'}, only in test: {only_test or 'none'}"
        )


# PIL modes of 16-bit grayscale: PNG decodes to 'I;16' (Pillow >= 10) or 'I' (older Pillow);
# the byte-order variants come from in-memory images. Converting them to 'L' or 'RGB' clips at
# 255 instead of scaling, so they are scaled here. (16-bit colour PNGs decode to 8-bit 'RGB' /
# 'RGBA' already, keeping the high byte.)
GRAY16_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")


def _gray16_to_8(path: Path, img) -> np.ndarray:
    """16-bit grayscale to 8 bits by its high byte (v >> 8), as PIL reduces 16-bit colour PNGs."""
    values = np.asarray(img)
    if values.size and (values.min() < 0 or values.max() > 0xFFFF):
        raise LqError(
            f"{path}: {img.mode} image with values outside 0..65535 ({values.min()}..{values.max()}); "
            "lq reads 8-bit and 16-bit PNG or JPEG images only"
        )
    return (values.astype(np.uint32) >> 8).astype(np.uint8)


def _to_array(path: Path, img) -> np.ndarray:
    """A decoded image as uint8: 'L' and 16-bit gray stay 2-D, everything else becomes H x W x 3 RGB."""
    if img.mode in GRAY16_MODES:
        return _gray16_to_8(path, img)
    if img.mode != "L":
        img = img.convert("RGB")
    return np.asarray(img, dtype=np.uint8)


def _decode(path: Path) -> np.ndarray:
    """Fully decode one PNG/JPEG into uint8 (`_to_array`)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path, formats=IMAGE_FORMATS) as img:
            img.load()
            return _to_array(path, img)
    except UnidentifiedImageError as exc:
        raise LqError(f"{path}: not a PNG or JPEG image") from exc
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise LqError(f"{path}: unreadable image ({exc})") from exc


def _decode_all(paths: list[Path], workers: int | None) -> np.ndarray:
    """Decode in a thread pool (PIL releases the GIL while decoding), keeping input order."""
    workers = workers or min(8, os.cpu_count() or 1)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        arrays = list(pool.map(_decode, paths, chunksize=64))
    return _stack(paths, arrays)


def _stack(paths: list[Path], arrays: list[np.ndarray]) -> np.ndarray:
    """Stack decoded images, refusing mixed sizes; grayscale is widened to RGB if mixed with colour."""
    size = arrays[0].shape[:2]
    for path, array in zip(paths, arrays):
        if array.shape[:2] != size:
            raise LqError(
                f"{path}: image is {array.shape[1]}x{array.shape[0]} (WxH) but {paths[0]} is "
                f"{size[1]}x{size[0]}; all images must have one size"
            )
    if all(a.ndim == 2 for a in arrays):
        return np.stack(arrays)[..., np.newaxis]
    out = np.empty((len(arrays), size[0], size[1], 3), dtype=np.uint8)
    for i, array in enumerate(arrays):
        out[i] = array[..., np.newaxis] if array.ndim == 2 else array
    return out


# --------------------------------------------------------------------------- registry

Loader = Callable[..., ImageStore]


def _digits_loader(*, root: PathLike | None, seed: int, test_fraction: float, download: bool) -> ImageStore:
    """Registry adapter: digits needs no root and no download."""
    return load_digits_store(seed=seed, test_fraction=test_fraction)


def _cifar100_loader(*, root: PathLike | None, seed: int, test_fraction: float, download: bool) -> ImageStore:
    """Registry adapter: CIFAR-100 has its own train/test split, so seed and fraction are unused."""
    return load_cifar100(_require_root(root, "cifar100"), download=download)


def _folder_loader(*, root: PathLike | None, seed: int, test_fraction: float, download: bool) -> ImageStore:
    """Registry adapter: a folder tree carries its own split and is never downloaded."""
    return load_folder(_require_root(root, "folder"))


def _idx_loader(name: str) -> Loader:
    """Registry adapter of an IDX release (lq.data.idx): its own train/test split, like CIFAR-100."""

    def load(*, root: PathLike | None, seed: int, test_fraction: float, download: bool) -> ImageStore:
        from lq.data import idx

        return idx.load_idx(_require_root(root, name), idx.release(name), download=download)

    load.__doc__ = f"Registry adapter: {name} from its four IDX files (lq.data.idx)."
    return load


def _require_root(root: PathLike | None, name: str) -> PathLike:
    """Sources backed by files need to know where they are."""
    if root is None or str(root) == "":
        raise LqError(f"source {name!r} needs a root directory")
    return root


SOURCES: Mapping[str, Loader] = MappingProxyType(
    {
        "digits": _digits_loader,
        "cifar100": _cifar100_loader,
        "fashion_mnist": _idx_loader("fashion_mnist"),
        "mnist": _idx_loader("mnist"),
        "folder": _folder_loader,
    }
)


def load_source(
    name: str,
    *,
    root: PathLike | None,
    seed: int,
    test_fraction: float,
    download: bool,
) -> ImageStore:
    """Load the named source into an ImageStore (the download stage's whole job)."""
    if name not in SOURCES:
        raise LqError(f"unknown data source {name!r}; expected one of {', '.join(sorted(SOURCES))}")
    return SOURCES[name](root=root, seed=seed, test_fraction=test_fraction, download=download)
