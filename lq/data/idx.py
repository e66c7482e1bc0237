"""IDX-format sources: Fashion-MNIST and MNIST, from their four official files.

A release is four files in `root` (`train-images-idx3-ubyte`, `train-labels-idx1-ubyte`,
`t10k-images-idx3-ubyte`, `t10k-labels-idx1-ubyte`), each gzipped (`.gz`) or not. Every file is
checked before any pixel is read:

1. present (with `download`, a missing one is fetched from the release's mirrors, its `.gz` checked
   against the published MD5 before it is moved into place);
2. its checksum: a `.gz` whose MD5 is the published one passes; any other `.gz` (a re-compressed
   copy, as Debian's `dataset-fashion-mnist` ships) and any plain file pass only if their
   *decompressed* bytes have the MD5 of the original file's content;
3. its IDX header: the magic number of an image (0x00000803) or label (0x00000801) file, and a
   length that is exactly header + the product of its dimensions (a truncated file fails here);
4. images and labels of a split must agree in number, labels must name a class.

Decoding is torchvision's own IDX reader (`torchvision.datasets.mnist.read_image_file`,
`read_label_file`), and the mirrors, the gzip MD5s and the class names are torchvision's tables
(`FashionMNIST`, `MNIST`), so lq copies none of them. The MD5s of the decompressed files are not
in torchvision; they are the values the datasets' users publish for the original files (the
Fashion-MNIST repository's `t10k-images-idx3-ubyte` hashes to 8181f547..., MNIST's to 2646ac64...).

The store holds train rows, then test rows, each in file order, with ids
`<split>/<class_name>/<row:05d>.png`; class ids index the *sorted* class names (as every lq source
does), and '/' in a name (Fashion-MNIST's `T-shirt/top`) becomes '_', because '/' separates the
parts of an image id.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import struct
import tempfile
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lq.data.sources import download_file
from lq.data.store import ImageStore
from lq.errors import LqError

PathLike = str | os.PathLike

IMAGES_MAGIC = 0x00000803  # unsigned bytes, 3 dimensions
LABELS_MAGIC = 0x00000801  # unsigned bytes, 1 dimension

# split -> (images file, labels file), named as the releases name them (without .gz)
SPLIT_FILES: Mapping[str, tuple[str, str]] = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}

# MD5 of each file's decompressed bytes: what a re-compressed copy still matches.
RAW_MD5: Mapping[str, Mapping[str, str]] = {
    "fashion_mnist": {
        "train-images-idx3-ubyte": "f4a8712d7a061bf5bd6d2ca38dc4d50a",
        "train-labels-idx1-ubyte": "9018921c3c673c538a1fc5bad174d6f9",
        "t10k-images-idx3-ubyte": "8181f5470baa50b63fa0f6fddb340f0a",
        "t10k-labels-idx1-ubyte": "15d484375f8d13e6eb1aabb0c3f46965",
    },
    "mnist": {
        "train-images-idx3-ubyte": "6bbc9ace898e44ae57da46a324031adb",
        "train-labels-idx1-ubyte": "a25bea736e30d166cdddb491f175f624",
        "t10k-images-idx3-ubyte": "2646ac647ad5339dbf082846283269ea",
        "t10k-labels-idx1-ubyte": "27ae3e4e09519cfbb04c329615203637",
    },
}

DEBIAN_HINTS: Mapping[str, str] = {
    "fashion_mnist": "on Debian or Ubuntu: apt-get install dataset-fashion-mnist, then set "
                     "data.root: /usr/share/datasets/fashion-mnist",
}


@dataclass(frozen=True)
class IdxRelease:
    """Where a release's four files come from and what they must hash to.

    `gz_md5` and `raw_md5` map a file name (without .gz) to the MD5 of its published `.gz` and of
    its decompressed bytes; `classes[k]` names label value k.
    """

    source: str
    mirrors: tuple[str, ...]
    gz_md5: Mapping[str, str]
    raw_md5: Mapping[str, str]
    classes: tuple[str, ...]


def release(source: str) -> IdxRelease:
    """The release of `fashion_mnist` or `mnist`, from torchvision's tables and RAW_MD5."""
    from torchvision.datasets import MNIST, FashionMNIST

    if source == "fashion_mnist":
        dataset, classes = FashionMNIST, tuple(FashionMNIST.classes)
    elif source == "mnist":
        # torchvision names them '0 - zero', ...; lq's digits source names them '0'..'9'
        dataset, classes = MNIST, tuple(str(d) for d in range(10))
    else:
        raise LqError(f"no IDX release named {source!r}; expected fashion_mnist or mnist")
    gz_md5 = {name.removesuffix(".gz"): md5 for name, md5 in dataset.resources}
    return IdxRelease(source, tuple(dataset.mirrors), gz_md5, RAW_MD5[source], classes)


def load_idx(root: PathLike, rel: IdxRelease, *, download: bool) -> ImageStore:
    """The store of one IDX release in `root` (downloading missing files when allowed)."""
    root = Path(root)
    paths = _locate(root, rel, download=download)
    content = {}
    for name, path in paths.items():
        stored = path.read_bytes()
        content[name] = _decompressed(path, stored)
        _verify(path, stored, content[name], name, rel)
    raw_names = [name.replace("/", "_") for name in rel.classes]
    classes = tuple(sorted(raw_names))
    if len(set(classes)) != len(classes):
        raise LqError(f"{rel.source}: class names {raw_names} are not unique")
    remap = np.array([classes.index(n) for n in raw_names], dtype=np.int64)
    images, labels, ids = [], [], []
    for split, (image_name, label_name) in SPLIT_FILES.items():
        x = _read(paths[image_name], content[image_name], "images")
        y = _read(paths[label_name], content[label_name], "labels")
        if len(x) != len(y):
            raise LqError(
                f"{paths[image_name]} holds {len(x)} images but {paths[label_name]} holds {len(y)} labels; "
                "the two files of a split must be of one release"
            )
        if len(y) and int(y.max()) >= len(remap):
            raise LqError(f"{paths[label_name]}: label {int(y.max())} outside 0..{len(remap) - 1}")
        y = remap[y]
        images.append(x[..., np.newaxis])
        labels.append(y)
        ids.extend(f"{split}/{classes[c]}/{row:05d}.png" for row, c in enumerate(y.tolist()))
    return ImageStore(np.concatenate(images), np.concatenate(labels), np.array(ids), classes, rel.source)


def _locate(root: Path, rel: IdxRelease, *, download: bool) -> dict[str, Path]:
    """Each file's path in `root`, plain or .gz; missing ones downloaded, or all named at once."""
    found: dict[str, Path] = {}
    missing = []
    for name in rel.raw_md5:
        for candidate in (root / name, root / f"{name}.gz"):
            if candidate.is_file():
                found[name] = candidate
                break
        else:
            missing.append(name)
    if missing and not download:
        hint = DEBIAN_HINTS.get(rel.source)
        raise LqError(
            f"{rel.source}: {root} lacks {', '.join(f'{m}[.gz]' for m in missing)}; set data.download: true"
            f" to fetch them from {rel.mirrors[0]}" + (f", or {hint}" if hint else "")
        )
    for name in missing:
        found[name] = _download(root, name, rel)
    return found


def _download(root: Path, name: str, rel: IdxRelease) -> Path:
    """Fetch `name.gz` from the first mirror that serves it (each checked against its MD5)."""
    dest = root / f"{name}.gz"
    errors = []
    for mirror in rel.mirrors:
        try:
            return download_file(f"{mirror}{name}.gz", dest, md5=rel.gz_md5[name])
        except LqError as exc:
            errors.append(str(exc))
    raise LqError(f"{rel.source}: cannot fetch {name}.gz from any mirror: " + "; ".join(errors))


def _decompressed(path: Path, stored: bytes) -> bytes:
    """The content of `path`, whose bytes on disk are `stored` (gunzipped when it ends in .gz)."""
    if path.suffix != ".gz":
        return stored
    try:
        return gzip.decompress(stored)
    except (OSError, EOFError, zlib.error) as exc:
        raise LqError(f"{path}: not a complete gzip file ({exc}); fetch it again") from exc


def _verify(path: Path, stored: bytes, data: bytes, name: str, rel: IdxRelease) -> None:
    """Refuse a file that is not the published one (module docstring, step 2): `stored` is its
    bytes on disk, `data` its content."""
    if path.suffix == ".gz" and _md5(stored) == rel.gz_md5[name]:
        return
    got = _md5(data)
    if got != rel.raw_md5[name]:
        what = "its decompressed bytes" if path.suffix == ".gz" else "the file"
        raise LqError(
            f"{path}: failed its checksum: MD5 of {what} is {got}, the published {rel.source} file's is "
            f"{rel.raw_md5[name]}; the file is damaged or of another release"
        )


def _md5(data: bytes) -> str:
    return hashlib.md5(data, usedforsecurity=False).hexdigest()


def _read(path: Path, data: bytes, kind: str) -> np.ndarray:
    """Check the IDX header and length of `path`'s content `data`, then decode with torchvision's reader."""
    from torchvision.datasets.mnist import read_image_file, read_label_file

    _check_header(path, data, IMAGES_MAGIC if kind == "images" else LABELS_MAGIC, kind)
    if path.suffix != ".gz":
        tensor = (read_image_file if kind == "images" else read_label_file)(str(path))
    else:
        with tempfile.TemporaryDirectory(prefix="lq-idx-") as tmp:
            plain = Path(tmp) / path.stem
            plain.write_bytes(data)
            tensor = (read_image_file if kind == "images" else read_label_file)(str(plain))
    return tensor.numpy().astype(np.uint8 if kind == "images" else np.int64, copy=False)


def _check_header(path: Path, data: bytes, magic: int, kind: str) -> None:
    """Magic number, dimensions and exact length, each refused with the file's name."""
    ndim = magic & 0xFF
    header = 4 * (1 + ndim)
    if len(data) < header:
        raise LqError(f"{path}: {len(data)} bytes, shorter than an IDX {kind} header ({header} bytes)")
    (got,) = struct.unpack(">I", data[:4])
    if got != magic:
        raise LqError(
            f"{path}: magic number 0x{got:08x}, expected 0x{magic:08x} (IDX {kind}: unsigned bytes, "
            f"{ndim} dimension{'s' if ndim > 1 else ''}); not an IDX {kind} file"
        )
    dims = struct.unpack(f">{ndim}I", data[4:header])
    expected = header + int(np.prod(dims, dtype=np.int64))
    if len(data) != expected:
        state = "truncated" if len(data) < expected else "longer than its header says"
        raise LqError(
            f"{path}: {state}: {len(data)} bytes, its header ({' x '.join(map(str, dims))}) needs {expected}"
        )
