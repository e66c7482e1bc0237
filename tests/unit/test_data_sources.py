"""Data ingestion: the embedded digits, CIFAR-100 (archive, folder, download), folder trees, store.

Nothing here touches the internet: CIFAR-100 is a small archive built by the test in the
official format, and downloads go to an HTTP server on 127.0.0.1 started and stopped here.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import io
import pickle
import re
import tarfile
import threading
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lq.data import sources
from lq.data.sources import load_cifar100, load_folder, load_source
from lq.data.store import STORE_FILES, ImageStore, read_store, write_store
from lq.errors import LqError

# --------------------------------------------------------------------------- digits


@pytest.fixture(scope="module")
def digits() -> ImageStore:
    return load_source("digits", root=None, seed=123, test_fraction=0.2, download=False)


def _original_index(image_id: str) -> int:
    return int(image_id.rsplit("/", 1)[1].split(".")[0])


def test_digits_shape_dtype_classes(digits: ImageStore) -> None:
    from sklearn.datasets import load_digits

    assert digits.images.shape == (1797, 8, 8, 1)
    assert digits.images.dtype == np.uint8
    assert digits.labels.dtype == np.int64
    assert digits.classes == tuple("0123456789")
    assert digits.source == "digits"
    raw = load_digits()
    row = 17
    orig = _original_index(str(digits.ids[row]))
    expected = np.floor(raw.images[orig] * 255 / 16 + 0.5).astype(np.uint8)
    np.testing.assert_array_equal(digits.images[row, :, :, 0], expected)
    assert digits.labels[row] == raw.target[orig]
    assert digits.images.max() == 255 and digits.images.min() == 0


def test_digits_split_is_stratified_and_disjoint(digits: ImageStore) -> None:
    split = digits.split
    assert set(split.tolist()) == {"train", "test"}
    for label in range(10):
        n_class = int(np.count_nonzero(digits.labels == label))
        n_test = int(np.count_nonzero((digits.labels == label) & (split == "test")))
        assert 0 < n_test < n_class
        assert abs(n_test - 0.2 * n_class) <= 1, (label, n_test, n_class)
    train = {_original_index(i) for i in digits.subset("train").ids.tolist()}
    test = {_original_index(i) for i in digits.subset("test").ids.tolist()}
    assert not train & test
    assert train | test == set(range(1797))
    assert all(i.startswith("train/") for i in digits.subset("train").ids.tolist())


def test_digits_split_is_seeded(digits: ImageStore) -> None:
    same = load_source("digits", root=None, seed=123, test_fraction=0.2, download=False)
    other = load_source("digits", root=None, seed=7, test_fraction=0.2, download=False)
    assert same == digits
    np.testing.assert_array_equal(same.ids, digits.ids)
    assert set(other.ids.tolist()) != set(digits.ids.tolist())


@pytest.mark.parametrize("fraction", [0.0, 1.0, -0.1, 1.5])
def test_digits_rejects_bad_test_fraction(fraction: float) -> None:
    with pytest.raises(LqError, match="test_fraction"):
        load_source("digits", root=None, seed=0, test_fraction=fraction, download=False)


def test_unknown_source_lists_the_names() -> None:
    with pytest.raises(LqError, match="cifar100, digits, fashion_mnist, folder, mnist"):
        load_source("imagenet", root=None, seed=0, test_fraction=0.2, download=False)


# --------------------------------------------------------------------------- store


def test_store_round_trip(digits: ImageStore, tmp_path: Path) -> None:
    out = write_store(digits, tmp_path / "store")
    assert sorted(p.name for p in out.iterdir()) == sorted([*STORE_FILES, "MANIFEST.json"])
    assert read_store(out) == digits
    mapped = read_store(out, mmap=True)
    assert isinstance(mapped.images, np.memmap) or isinstance(mapped.images.base, np.memmap)
    assert mapped == digits
    lines = (out / "index.csv").read_text().splitlines()
    assert lines[0] == "image,label,split"
    assert lines[1] == f"{digits.ids[0]},{digits.labels[0]},train"
    assert (out / "classes.txt").read_text() == "".join(f"{d}\n" for d in range(10))


def test_store_subset_keeps_classes(digits: ImageStore) -> None:
    test = digits.subset("test")
    assert test.classes == digits.classes
    assert len(test) == digits.counts()["test"]
    assert set(test.split.tolist()) == {"test"}
    with pytest.raises(LqError, match="split"):
        digits.subset("val")


def test_store_writes_are_byte_identical(digits: ImageStore, tmp_path: Path) -> None:
    a = write_store(digits, tmp_path / "a")
    b = write_store(digits, tmp_path / "b")
    write_store(digits, a)  # rewriting in place replaces the directory
    for name in STORE_FILES:
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def unverified(store: Path) -> Path:
    """A store without its manifest (as if made by hand): only read_store's own checks apply.
    (With the manifest, any edit below is reported as a file that differs from what `download`
    wrote: tests/unit/test_manifest.py.)"""
    (store / "MANIFEST.json").unlink()
    return store


def test_store_rejects_labels_out_of_range(digits: ImageStore, tmp_path: Path) -> None:
    out = unverified(write_store(digits, tmp_path / "store"))
    labels = digits.labels.copy()
    labels[5] = 10
    np.save(out / "labels.npy", labels)
    with pytest.raises(LqError, match="labels.npy"):
        read_store(out)


def test_store_rejects_length_mismatch(digits: ImageStore, tmp_path: Path) -> None:
    out = unverified(write_store(digits, tmp_path / "store"))
    np.save(out / "labels.npy", digits.labels[:-1])
    with pytest.raises(LqError, match=r"labels.npy.*1796 labels"):
        read_store(out)
    out = unverified(write_store(digits, tmp_path / "store2"))
    lines = (out / "index.csv").read_text().splitlines(keepends=True)
    (out / "index.csv").write_text("".join(lines[:-1]))
    with pytest.raises(LqError, match="index.csv"):
        read_store(out)


def test_store_rejects_missing_file(digits: ImageStore, tmp_path: Path) -> None:
    out = unverified(write_store(digits, tmp_path / "store"))
    (out / "classes.txt").unlink()
    with pytest.raises(LqError, match="classes.txt"):
        read_store(out)


def test_store_rejects_meta_that_does_not_match(digits: ImageStore, tmp_path: Path) -> None:
    out = unverified(write_store(digits, tmp_path / "store"))
    meta = (out / "meta.json").read_text().replace('"test": 360', '"test": 361')
    assert meta != (out / "meta.json").read_text()
    (out / "meta.json").write_text(meta)
    with pytest.raises(LqError, match="meta.json"):
        read_store(out)


def test_image_store_validates_on_creation() -> None:
    images = np.zeros((2, 4, 4, 3), np.uint8)
    with pytest.raises(LqError, match="labels"):
        ImageStore(images, np.array([0, 2]), np.array(["train/a/x.png", "test/b/y.png"]), ("a", "b"))
    with pytest.raises(LqError, match="names class"):
        ImageStore(images, np.array([0, 0]), np.array(["train/a/x.png", "test/b/y.png"]), ("a", "b"))
    with pytest.raises(LqError, match="duplicate"):
        ImageStore(images, np.array([0, 0]), np.array(["train/a/x.png", "train/a/x.png"]), ("a", "b"))
    with pytest.raises(LqError, match="sorted"):
        ImageStore(images, np.array([0, 1]), np.array(["train/b/x.png", "test/a/y.png"]), ("b", "a"))


# --------------------------------------------------------------------------- cifar100 fakes

# Unsorted on purpose, so the remap to sorted names is exercised (the official list is sorted).
FAKE_NAMES = ["zebra", "apple", "maple_tree", "bee", "cloud"]
KNOWN = {"y": 1, "x": 2, "rgb": (11, 22, 33)}  # a pixel off the diagonal catches an H/W swap


def _official_pickle(obj: object) -> bytes:
    """Protocol 2 with the numpy module name of the Python 2 era files (numpy.core.multiarray)."""
    data = pickle.dumps(obj, protocol=2)
    return data.replace(b"cnumpy._core.multiarray\n", b"cnumpy.core.multiarray\n")


def _fake_cifar_files(per_class: dict[str, int]) -> dict[str, bytes]:
    """The three official pickles for a tiny CIFAR-100 (5 classes, CHW rows of 3072 bytes)."""
    rng = np.random.default_rng(0)
    files = {}
    for split, n in per_class.items():
        fine = [i % len(FAKE_NAMES) for i in range(n * len(FAKE_NAMES))]
        data = rng.integers(0, 256, size=(len(fine), 3072), dtype=np.uint8)
        y, x = KNOWN["y"], KNOWN["x"]
        for channel, value in enumerate(KNOWN["rgb"]):
            data[0, channel * 1024 + y * 32 + x] = value
        filenames = [f"{FAKE_NAMES[c]}_s_{split}_{i:06d}.png".encode() for i, c in enumerate(fine)]
        files[split] = _official_pickle(
            {b"filenames": filenames, b"batch_label": split.encode(), b"fine_labels": fine,
             b"coarse_labels": [0] * len(fine), b"data": data}
        )
    files["meta"] = _official_pickle(
        {b"fine_label_names": [n.encode() for n in FAKE_NAMES], b"coarse_label_names": [b"all"]}
    )
    return files


def _tar_gz(entries: dict[str, bytes], extra: list[tarfile.TarInfo] = ()) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        folder = tarfile.TarInfo("cifar-100-python")
        folder.type = tarfile.DIRTYPE
        tar.addfile(folder)
        for name, payload in entries.items():
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
        for info in extra:
            tar.addfile(info, io.BytesIO(b"x" * info.size) if info.isfile() else None)
    return buf.getvalue()


@pytest.fixture(scope="module")
def fake_cifar() -> dict[str, object]:
    files = _fake_cifar_files({"train": 3, "test": 2})
    archive = _tar_gz({f"cifar-100-python/{k}": v for k, v in files.items()})
    return {"files": files, "archive": archive, "md5": hashlib.md5(archive).hexdigest()}


def _put_archive(root: Path, payload: bytes) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    path = root / "cifar-100-python.tar.gz"
    path.write_bytes(payload)
    return path


def _check_fake_store(store: ImageStore) -> None:
    assert store.classes == tuple(sorted(FAKE_NAMES))
    assert store.images.shape == (25, 32, 32, 3) and store.images.dtype == np.uint8
    assert store.counts() == {"train": 15, "test": 10}
    for image_id, label in zip(store.ids.tolist(), store.labels.tolist()):
        split, name, filename = image_id.split("/")
        assert name == store.classes[label] and filename.startswith(f"{name}_s_{split}_")
    # Row 0 of each pickle has fine label 0 = 'zebra', which is class 4 after sorting.
    assert store.ids[0] == "train/zebra/zebra_s_train_000000.png"
    assert store.labels[0] == 4 and store.labels[1] == 0  # 'apple'
    test0 = int(np.flatnonzero(store.split == "test")[0])
    for row in (0, test0):
        assert tuple(store.images[row, KNOWN["y"], KNOWN["x"]]) == KNOWN["rgb"]


def test_cifar100_from_archive(fake_cifar: dict, tmp_path: Path) -> None:
    _put_archive(tmp_path, fake_cifar["archive"])
    store = load_cifar100(tmp_path, download=False, md5=fake_cifar["md5"])
    _check_fake_store(store)
    assert store.source == "cifar100"
    assert sorted(p.name for p in (tmp_path / "cifar-100-python").iterdir()) == ["meta", "test", "train"]


def test_cifar100_from_extracted_folder(fake_cifar: dict, tmp_path: Path) -> None:
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    for name, payload in fake_cifar["files"].items():
        (folder / name).write_bytes(payload)
    store = load_source("cifar100", root=tmp_path, seed=0, test_fraction=0.2, download=False)
    _check_fake_store(store)


def test_cifar100_duplicate_class_names_rejected(fake_cifar: dict, tmp_path: Path) -> None:
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    for name, payload in fake_cifar["files"].items():
        (folder / name).write_bytes(payload)
    names = [n.encode() for n in FAKE_NAMES[:-1]] + [b"apple"]
    (folder / "meta").write_bytes(_official_pickle({b"fine_label_names": names}))
    with pytest.raises(LqError, match="duplicates"):
        load_cifar100(tmp_path, download=False)


def test_cifar100_wrong_md5_names_expected_and_actual(fake_cifar: dict, tmp_path: Path) -> None:
    _put_archive(tmp_path, fake_cifar["archive"])
    wrong = "0" * 32
    with pytest.raises(LqError) as err:
        load_cifar100(tmp_path, download=False, md5=wrong)
    assert wrong in str(err.value) and fake_cifar["md5"] in str(err.value)
    assert not (tmp_path / "cifar-100-python").exists()


def test_cifar100_without_archive_and_download_disabled(tmp_path: Path) -> None:
    with pytest.raises(LqError, match=r"cifar-100-python\.tar\.gz"):
        load_source("cifar100", root=tmp_path, seed=0, test_fraction=0.2, download=False)


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        pass


@contextlib.contextmanager
def _serve(directory: Path) -> Iterator[str]:
    """A static HTTP server on 127.0.0.1 (ephemeral port), stopped when the block ends."""
    handler = functools.partial(_QuietHandler, directory=str(directory))
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


@pytest.fixture
def no_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")


def test_cifar100_download_over_loopback(
    fake_cifar: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_proxy: None
) -> None:
    served = tmp_path / "served"
    _put_archive(served, fake_cifar["archive"])
    root = tmp_path / "root"
    with _serve(served) as base:
        monkeypatch.setattr(sources, "CIFAR100_URL", f"{base}/cifar-100-python.tar.gz")
        monkeypatch.setattr(sources, "CIFAR100_MD5", fake_cifar["md5"])
        monkeypatch.setattr(sources, "DOWNLOAD_TIMEOUT_S", 5.0)
        store = load_source("cifar100", root=root, seed=0, test_fraction=0.2, download=True)
    _check_fake_store(store)
    assert (root / "cifar-100-python.tar.gz").read_bytes() == fake_cifar["archive"]
    assert not [p for p in root.iterdir() if p.name.startswith(".")]  # no temp files left


def test_cifar100_download_checksum_mismatch_deletes_temp(
    fake_cifar: dict, tmp_path: Path, no_proxy: None
) -> None:
    served = tmp_path / "served"
    _put_archive(served, fake_cifar["archive"])
    root = tmp_path / "root"
    wrong = "f" * 32
    with _serve(served) as base, pytest.raises(LqError) as err:
        load_cifar100(root, download=True, url=f"{base}/cifar-100-python.tar.gz", md5=wrong, timeout=5)
    assert wrong in str(err.value) and fake_cifar["md5"] in str(err.value)
    assert list(root.iterdir()) == []


def test_cifar100_download_http_error(tmp_path: Path, no_proxy: None) -> None:
    with _serve(tmp_path) as base, pytest.raises(LqError, match="cannot download"):
        load_cifar100(tmp_path / "root", download=True, url=f"{base}/missing.tar.gz", md5="0" * 32, timeout=5)
    assert list((tmp_path / "root").iterdir()) == []


def _member(name: str, kind: bytes = tarfile.REGTYPE) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    if kind == tarfile.SYMTYPE:
        info.linkname = "/etc/passwd"
    else:
        info.size = 1
    return info


@pytest.mark.parametrize(
    ("member", "reason"),
    [
        (_member("cifar-100-python/../evil"), "'..'"),
        (_member("/cifar-100-python/evil"), "absolute"),
        (_member("cifar-100-python/link", tarfile.SYMTYPE), "link"),
        (_member("elsewhere/file"), "expected only cifar-100-python/"),
    ],
    ids=["dotdot", "absolute", "symlink", "outside-prefix"],
)
def test_cifar100_archive_with_unsafe_member_is_rejected(
    fake_cifar: dict, tmp_path: Path, member: tarfile.TarInfo, reason: str
) -> None:
    files = {f"cifar-100-python/{k}": v for k, v in fake_cifar["files"].items()}
    archive = _tar_gz(files, extra=[member])
    root = tmp_path / "root"
    _put_archive(root, archive)
    with pytest.raises(LqError, match="member") as err:
        load_cifar100(root, download=False, md5=hashlib.md5(archive).hexdigest())
    assert reason in str(err.value)
    assert not (tmp_path / "evil").exists() and not (root / "cifar-100-python").exists()
    assert sorted(p.name for p in root.iterdir()) == ["cifar-100-python.tar.gz"]


class _Exploit:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (open, (str(self.marker), "w"))


def test_cifar100_pickle_with_foreign_global_is_refused(fake_cifar: dict, tmp_path: Path) -> None:
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    for name, payload in fake_cifar["files"].items():
        (folder / name).write_bytes(payload)
    marker = tmp_path / "pwned"
    (folder / "meta").write_bytes(pickle.dumps({b"fine_label_names": _Exploit(marker)}, protocol=2))
    with pytest.raises(LqError, match="meta"):
        load_cifar100(tmp_path, download=False)
    assert not marker.exists()


# --------------------------------------------------------------------------- folder


def _image(size: tuple[int, int], colour: tuple[int, int, int], mode: str = "RGB") -> Image.Image:
    img = Image.new("RGB", size, colour)
    img.putpixel((1, 0), (200, 100, 50))  # x=1, y=0
    return img.convert(mode)


def _png_bytes(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def _make_tree(root: Path, size: tuple[int, int] = (6, 5), mode: str = "RGB") -> None:
    """train: 2 images per class (one JPEG), test: 1 PNG per class; classes written unsorted."""
    for split, files in {"train": ["0002.png", "0001.jpg"], "test": ["0001.png"]}.items():
        for k, name in enumerate(["dog", "ant", "cat"]):
            folder = root / split / name
            folder.mkdir(parents=True)
            for f in files:
                img = _image(size, (10 * k, 20, 30), mode)
                img.save(folder / f, format="JPEG" if f.endswith(".jpg") else "PNG")
    (root / "train" / "dog" / ".DS_Store").write_bytes(b"\0junk")


def test_folder_loads_png_and_jpeg_with_sorted_classes(tmp_path: Path) -> None:
    _make_tree(tmp_path)
    store = load_source("folder", root=tmp_path, seed=0, test_fraction=0.2, download=False)
    assert store.classes == ("ant", "cat", "dog")
    assert store.images.shape == (9, 5, 6, 3) and store.images.dtype == np.uint8
    assert store.ids.tolist() == [
        "train/ant/0001.jpg", "train/ant/0002.png",
        "train/cat/0001.jpg", "train/cat/0002.png",
        "train/dog/0001.jpg", "train/dog/0002.png",
        "test/ant/0001.png", "test/cat/0001.png", "test/dog/0001.png",
    ]
    assert store.labels.tolist() == [0, 0, 1, 1, 2, 2, 0, 1, 2]
    row = store.ids.tolist().index("train/cat/0002.png")  # cat was written with k=2
    assert tuple(store.images[row, 0, 1]) == (200, 100, 50)
    assert tuple(store.images[row, 3, 3]) == (20, 20, 30)
    assert store.source == "folder"


def test_folder_grayscale_kept_as_one_channel(tmp_path: Path) -> None:
    _make_tree(tmp_path / "gray", mode="L")
    gray = load_folder(tmp_path / "gray")
    assert gray.images.shape == (9, 5, 6, 1)
    _make_tree(tmp_path / "mixed", mode="L")
    _image((6, 5), (1, 2, 3)).save(tmp_path / "mixed" / "test" / "ant" / "0001.png")
    mixed = load_folder(tmp_path / "mixed")
    assert mixed.images.shape == (9, 5, 6, 3)
    np.testing.assert_array_equal(mixed.images[0, ..., 0], mixed.images[0, ..., 2])


def test_folder_truncated_png_names_the_file(tmp_path: Path) -> None:
    _make_tree(tmp_path, size=(32, 32))
    bad = tmp_path / "train" / "cat" / "0002.png"
    noisy = Image.fromarray(np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8))
    payload = _png_bytes(noisy)
    bad.write_bytes(payload[: len(payload) // 2])
    with pytest.raises(LqError, match=re.escape(str(bad))):
        load_folder(tmp_path)


def test_folder_text_file_named_png_names_the_file(tmp_path: Path) -> None:
    _make_tree(tmp_path)
    bad = tmp_path / "test" / "dog" / "x.png"
    bad.write_text("not an image\n")
    with pytest.raises(LqError, match=re.escape(str(bad))):
        load_folder(tmp_path)


def test_folder_empty_class_is_an_error(tmp_path: Path) -> None:
    _make_tree(tmp_path)
    empty = tmp_path / "test" / "ant"
    for f in empty.iterdir():
        f.unlink()
    (empty / ".hidden").write_text("")
    with pytest.raises(LqError, match=re.escape(str(empty)) + ".*no images"):
        load_folder(tmp_path)


def test_folder_mismatched_classes_is_an_error(tmp_path: Path) -> None:
    _make_tree(tmp_path)
    (tmp_path / "test" / "cat").rename(tmp_path / "test" / "cow")
    with pytest.raises(LqError, match=r"only in train: \['cat'\], only in test: \['cow'\]"):
        load_folder(tmp_path)


def test_folder_mixed_sizes_is_an_error(tmp_path: Path) -> None:
    _make_tree(tmp_path)
    odd = tmp_path / "test" / "cat" / "0001.png"
    _image((7, 5), (0, 0, 0)).save(odd)
    with pytest.raises(LqError, match=re.escape(str(odd)) + ".*7x5"):
        load_folder(tmp_path)


def test_folder_missing_split_is_an_error(tmp_path: Path) -> None:
    _make_tree(tmp_path)
    for f in sorted((tmp_path / "test").rglob("*"), reverse=True):
        f.rmdir() if f.is_dir() else f.unlink()
    (tmp_path / "test").rmdir()
    with pytest.raises(LqError, match=re.escape(f"{tmp_path / 'test'}: missing")):
        load_folder(tmp_path)
