"""The IDX sources (Fashion-MNIST, MNIST): tiny IDX files made here, gzipped or not, broken on purpose.

The real release is read at the end when Debian's `dataset-fashion-mnist` is installed (CI installs it).
"""

from __future__ import annotations

import gzip
import hashlib
import struct
from pathlib import Path

import numpy as np
import pytest

from lq.data import idx
from lq.data.sources import load_source
from lq.errors import LqError
from tests.unit.test_data_sources import _serve, no_proxy  # noqa: F401  (a fixture)

CLASSES = ("T-shirt/top", "Trouser", "Bag")  # label value k names CLASSES[k]; sorted: Bag, T-shirt_top, Trouser
DEBIAN_FOLDER = Path("/usr/share/datasets/fashion-mnist")


def _idx_bytes(array: np.ndarray) -> bytes:
    """An IDX file of unsigned bytes: magic 0x08 type, ndim, big-endian dimensions, then the data."""
    header = struct.pack(">I", 0x0800 | array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + np.ascontiguousarray(array, dtype=np.uint8).tobytes()


def _md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def _contents() -> dict[str, bytes]:
    """Four small files: 5 train and 3 test images of 4 x 3 pixels, labels 0..2."""
    rng = np.random.default_rng(0)
    return {
        "train-images-idx3-ubyte": _idx_bytes(rng.integers(0, 256, (5, 4, 3))),
        "train-labels-idx1-ubyte": _idx_bytes(np.array([0, 2, 1, 0, 2])),
        "t10k-images-idx3-ubyte": _idx_bytes(rng.integers(0, 256, (3, 4, 3))),
        "t10k-labels-idx1-ubyte": _idx_bytes(np.array([1, 0, 2])),
    }


def _gz(data: bytes, mtime: int = 0) -> bytes:
    return gzip.compress(data, mtime=mtime)


def _release(contents: dict[str, bytes], mirrors: tuple[str, ...] = ("http://127.0.0.1:9/",)) -> idx.IdxRelease:
    """A release whose published checksums are those of `contents` (gzipped with mtime 0)."""
    return idx.IdxRelease(
        source="fashion_mnist",
        mirrors=mirrors,
        gz_md5={name: _md5(_gz(data)) for name, data in contents.items()},
        raw_md5={name: _md5(data) for name, data in contents.items()},
        classes=CLASSES,
    )


def _write(root: Path, contents: dict[str, bytes], gz: bool, mtime: int = 0) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for name, data in contents.items():
        if gz:
            (root / f"{name}.gz").write_bytes(_gz(data, mtime))
        else:
            (root / name).write_bytes(data)
    return root


@pytest.mark.parametrize("gz", [False, True], ids=["plain", "gzipped"])
def test_reads_images_labels_and_sorted_classes(tmp_path: Path, gz: bool) -> None:
    contents = _contents()
    store = idx.load_idx(_write(tmp_path, contents, gz), _release(contents), download=False)
    assert store.classes == ("Bag", "T-shirt_top", "Trouser")
    assert store.images.shape == (8, 4, 3, 1) and store.images.dtype == np.uint8
    train_pixels = np.frombuffer(contents["train-images-idx3-ubyte"], np.uint8, offset=16).reshape(5, 4, 3)
    np.testing.assert_array_equal(store.images[:5, :, :, 0], train_pixels)
    # label values 0 (T-shirt/top), 1 (Trouser), 2 (Bag) become indices into the sorted names
    assert store.labels.tolist() == [1, 0, 2, 1, 0, 2, 1, 0]
    assert store.ids[:2].tolist() == ["train/T-shirt_top/00000.png", "train/Bag/00001.png"]
    assert store.ids[5].startswith("test/Trouser/00000")
    assert store.counts() == {"train": 5, "test": 3}


def test_a_recompressed_gz_passes_on_its_content(tmp_path: Path) -> None:
    """Debian re-compresses the files: the .gz bytes differ, the decompressed bytes do not."""
    contents = _contents()
    root = _write(tmp_path, contents, gz=True, mtime=1_591_347_900)
    rel = _release(contents)
    assert _md5((root / "t10k-labels-idx1-ubyte.gz").read_bytes()) != rel.gz_md5["t10k-labels-idx1-ubyte"]
    assert len(idx.load_idx(root, rel, download=False)) == 8


def test_the_published_gz_passes_on_its_own_md5(tmp_path: Path) -> None:
    contents = _contents()
    rel = _release(contents)
    rel = idx.IdxRelease(rel.source, rel.mirrors, rel.gz_md5, {k: "0" * 32 for k in rel.raw_md5}, rel.classes)
    assert len(idx.load_idx(_write(tmp_path, contents, gz=True), rel, download=False)) == 8


@pytest.mark.parametrize("gz", [False, True], ids=["plain", "gzipped"])
def test_a_file_that_fails_its_checksum_is_named(tmp_path: Path, gz: bool) -> None:
    contents = _contents()
    rel = _release(contents)
    changed = dict(contents, **{"t10k-images-idx3-ubyte": contents["t10k-images-idx3-ubyte"][:-1] + b"\x00"})
    root = _write(tmp_path, changed, gz)
    suffix = ".gz" if gz else ""
    with pytest.raises(LqError, match=rf"t10k-images-idx3-ubyte{suffix}: failed its checksum"):
        idx.load_idx(root, rel, download=False)


def _broken(contents: dict[str, bytes], name: str, data: bytes) -> tuple[dict[str, bytes], idx.IdxRelease]:
    """Contents with one file replaced, and a release that publishes the broken file's checksum,
    so the check under test is the structural one, not the checksum."""
    broken = dict(contents, **{name: data})
    return broken, _release(broken)


@pytest.mark.parametrize("gz", [False, True], ids=["plain", "gzipped"])
def test_a_truncated_file_is_named(tmp_path: Path, gz: bool) -> None:
    contents = _contents()
    broken, rel = _broken(contents, "train-images-idx3-ubyte", contents["train-images-idx3-ubyte"][:-7])
    with pytest.raises(LqError, match=r"train-images-idx3-ubyte(\.gz)?: truncated: 69 bytes, .* needs 76"):
        idx.load_idx(_write(tmp_path, broken, gz), rel, download=False)


def test_a_wrong_magic_number_is_named(tmp_path: Path) -> None:
    contents = _contents()
    # the images file with a label file's magic number: 0x801, not 0x803
    images = contents["t10k-images-idx3-ubyte"]
    broken, rel = _broken(contents, "t10k-images-idx3-ubyte", struct.pack(">I", 0x801) + images[4:])
    with pytest.raises(LqError, match=r"t10k-images-idx3-ubyte: magic number 0x00000801, expected 0x00000803"):
        idx.load_idx(_write(tmp_path, broken, gz=False), rel, download=False)


def test_a_header_cut_short_is_named(tmp_path: Path) -> None:
    contents = _contents()
    broken, rel = _broken(contents, "train-labels-idx1-ubyte", b"\x00\x00")
    with pytest.raises(LqError, match=r"train-labels-idx1-ubyte: 2 bytes, shorter than an IDX labels header"):
        idx.load_idx(_write(tmp_path, broken, gz=False), rel, download=False)


def test_image_and_label_counts_that_disagree_are_named(tmp_path: Path) -> None:
    contents = _contents()
    broken, rel = _broken(contents, "train-labels-idx1-ubyte", _idx_bytes(np.array([0, 1, 2, 0])))
    with pytest.raises(LqError, match=r"train-images-idx3-ubyte holds 5 images but .*train-labels-idx1-ubyte holds 4"):
        idx.load_idx(_write(tmp_path, broken, gz=False), rel, download=False)


def test_a_label_without_a_class_is_named(tmp_path: Path) -> None:
    contents = _contents()
    broken, rel = _broken(contents, "t10k-labels-idx1-ubyte", _idx_bytes(np.array([1, 3, 2])))
    with pytest.raises(LqError, match=r"t10k-labels-idx1-ubyte: label 3 outside 0..2"):
        idx.load_idx(_write(tmp_path, broken, gz=False), rel, download=False)


def test_a_cut_gzip_stream_is_named(tmp_path: Path) -> None:
    contents = _contents()
    root = _write(tmp_path, contents, gz=True)
    path = root / "train-images-idx3-ubyte.gz"
    path.write_bytes(path.read_bytes()[:30])
    with pytest.raises(LqError, match=r"train-images-idx3-ubyte\.gz: not a complete gzip file"):
        idx.load_idx(root, _release(contents), download=False)


def test_missing_files_are_listed_with_both_routes(tmp_path: Path) -> None:
    contents = _contents()
    root = _write(tmp_path, {k: v for k, v in contents.items() if k.startswith("train")}, gz=True)
    with pytest.raises(LqError) as err:
        idx.load_idx(root, _release(contents), download=False)
    message = str(err.value)
    assert "t10k-images-idx3-ubyte[.gz], t10k-labels-idx1-ubyte[.gz]" in message
    assert "data.download: true" in message and "apt-get install dataset-fashion-mnist" in message


def test_download_fetches_only_missing_files_from_the_first_mirror_that_has_them(
    tmp_path: Path, no_proxy: None  # noqa: F811
) -> None:
    contents = _contents()
    served = _write(tmp_path / "served", contents, gz=True)
    root = _write(tmp_path / "root", {"train-images-idx3-ubyte": contents["train-images-idx3-ubyte"]}, gz=False)
    (tmp_path / "empty-mirror").mkdir()
    with _serve(tmp_path / "empty-mirror") as empty, _serve(served) as full:
        rel = _release(contents, mirrors=(f"{empty}/", f"{full}/"))
        store = idx.load_idx(root, rel, download=True)
    assert len(store) == 8
    assert sorted(p.name for p in root.iterdir()) == [
        "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz", "train-images-idx3-ubyte", "train-labels-idx1-ubyte.gz",
    ]


def test_a_download_that_fails_its_checksum_leaves_nothing(tmp_path: Path, no_proxy: None) -> None:  # noqa: F811
    contents = _contents()
    served = _write(tmp_path / "served", contents, gz=True)
    rel = _release(contents)
    rel = idx.IdxRelease(rel.source, rel.mirrors, {k: "f" * 32 for k in rel.gz_md5}, rel.raw_md5, rel.classes)
    root = tmp_path / "root"
    with _serve(served) as base, pytest.raises(LqError, match="cannot fetch .* failed its checksum"):
        idx.load_idx(root, idx.IdxRelease(rel.source, (f"{base}/",), rel.gz_md5, rel.raw_md5, rel.classes),
                     download=True)
    assert list(root.iterdir()) == []


def test_the_releases_come_from_torchvision_tables() -> None:
    from torchvision.datasets import MNIST, FashionMNIST

    fashion = idx.release("fashion_mnist")
    assert fashion.classes == tuple(FashionMNIST.classes) and len(fashion.classes) == 10
    assert fashion.mirrors == tuple(FashionMNIST.mirrors)
    assert set(fashion.gz_md5) == set(fashion.raw_md5) == {n for pair in idx.SPLIT_FILES.values() for n in pair}
    mnist = idx.release("mnist")
    assert mnist.classes == tuple("0123456789") and mnist.gz_md5 != fashion.gz_md5
    assert mnist.mirrors == tuple(MNIST.mirrors)
    with pytest.raises(LqError, match="no IDX release named 'kmnist'"):
        idx.release("kmnist")


@pytest.mark.skipif(not DEBIAN_FOLDER.is_dir(), reason="Debian's dataset-fashion-mnist is not installed")
def test_the_debian_package_is_the_published_fashion_mnist() -> None:
    store = load_source("fashion_mnist", root=DEBIAN_FOLDER, seed=0, test_fraction=0.2, download=False)
    assert store.images.shape == (70000, 28, 28, 1)
    assert store.counts() == {"train": 60000, "test": 10000}
    assert store.classes[0] == "Ankle boot" and "T-shirt_top" in store.classes
    train = store.labels[:60000]
    assert np.bincount(train).tolist() == [6000] * 10
    # the first training image of the release is an ankle boot (label 9), the second a T-shirt/top (0)
    assert store.ids[:2].tolist() == ["train/Ankle boot/00000.png", "train/T-shirt_top/00001.png"]
