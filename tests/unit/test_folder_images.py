"""Issue 11: 16-bit PNGs are scaled to 8 bits (not clipped at 255), and a symbolic link loop or a
broken link in a folder source is named as such (not "found a folder").

The 16-bit files are generated here: by Pillow (16-bit grayscale, mode I;16) and by a minimal PNG
writer (any colour type at 16 bits, which Pillow cannot write), so the expected bytes are known.
"""

from __future__ import annotations

import os
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lq.data.sources import _to_array, load_folder
from lq.errors import LqError

# 16-bit values and their 8-bit scaling v >> 8 (the high byte, as PIL reduces 16-bit colour PNGs)
VALUES = np.array([[0, 255, 256, 1000], [32768, 65535, 65280, 511]], dtype=np.uint16)
EXPECTED = np.array([[0, 0, 1, 3], [128, 255, 255, 1]], dtype=np.uint8)


def png16(path: Path, pixels: np.ndarray, color_type: int) -> Path:
    """A 16-bit PNG: colour type 0 gray, 2 RGB, 4 gray + alpha, 6 RGBA; rows unfiltered, big-endian."""
    h, w = pixels.shape[:2]
    rows = b"".join(b"\x00" + pixels[y].astype(">u2").tobytes() for y in range(h))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", w, h, 16, color_type, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows))
                     + chunk(b"IEND", b""))
    return path


def tree(root: Path, write) -> Path:
    """<root>/{train,test}/{a,b}/0.png, each written by write(path)."""
    for split in ("train", "test"):
        for name in ("a", "b"):
            folder = root / split / name
            folder.mkdir(parents=True)
            write(folder / "0.png")
    return root


def test_pillow_16_bit_grayscale_png_is_scaled_not_clipped(tmp_path):
    assert Image.fromarray(VALUES).mode == "I;16"
    store = load_folder(tree(tmp_path / "t", lambda p: Image.fromarray(VALUES).save(p)))
    assert store.images.dtype == np.uint8 and store.images.shape == (4, 2, 4, 1)  # stays one channel
    for image in store.images:
        assert np.array_equal(image[..., 0], EXPECTED)


def test_hand_written_16_bit_gray_png_is_scaled(tmp_path):
    store = load_folder(tree(tmp_path / "t", lambda p: png16(p, VALUES, 0)))
    assert np.array_equal(store.images[0, ..., 0], EXPECTED)


@pytest.mark.parametrize("color_type,channels", [(2, 3), (6, 4), (4, 2)])
def test_16_bit_colour_pngs_keep_their_high_byte(tmp_path, color_type, channels):
    pixels = np.stack([VALUES, VALUES[::-1], 65535 - VALUES, VALUES][:channels], axis=-1)
    store = load_folder(tree(tmp_path / "t", lambda p: png16(p, pixels, color_type)))
    expected = (pixels.astype(np.uint32) >> 8).astype(np.uint8)
    if channels == 2:  # gray + alpha: alpha is dropped, gray widened to RGB
        expected = np.repeat(expected[..., :1], 3, axis=-1)
    assert np.array_equal(store.images[0], expected[..., :3])


@pytest.mark.parametrize("mode", ["I;16", "I;16B", "I"])
def test_every_16_bit_gray_mode_is_scaled(mode):
    if mode == "I":  # older Pillow decodes 16-bit gray PNGs to 32-bit 'I'
        image = Image.fromarray(VALUES.astype(np.int32))
    else:
        image = Image.fromarray(VALUES.astype(">u2" if mode == "I;16B" else "<u2"))
    assert image.mode == mode
    assert np.array_equal(_to_array(Path("x.png"), image), EXPECTED)


def test_32_bit_values_beyond_16_bits_are_refused_with_the_path():
    image = Image.fromarray(np.array([[0, 70000]], dtype=np.int32))
    with pytest.raises(LqError, match=r"x\.png: I image with values outside 0..65535"):
        _to_array(Path("x.png"), image)


def test_8_bit_images_are_unchanged(tmp_path):
    gray = np.array([[0, 17, 255, 128]], dtype=np.uint8)
    store = load_folder(tree(tmp_path / "t", lambda p: Image.fromarray(gray).save(p)))
    assert np.array_equal(store.images[0, ..., 0], gray)


# --- symbolic links -------------------------------------------------------------------------------


def image_tree(root: Path) -> Path:
    return tree(root, lambda p: Image.fromarray(np.full((4, 4), 7, np.uint8)).save(p))


def refusal(root: Path) -> str:
    with pytest.raises(LqError) as info:
        load_folder(root)
    return str(info.value)


def test_a_link_to_itself_is_a_loop(tmp_path):
    root = image_tree(tmp_path / "t")
    link = root / "train" / "a" / "loop.png"
    os.symlink("loop.png", link)
    message = refusal(root)
    assert message.startswith(f"{link}: is a symbolic link loop") and "found a folder" not in message


def test_a_link_to_its_own_folder_is_a_loop(tmp_path):
    root = image_tree(tmp_path / "t")
    link = root / "train" / "a" / "again"
    os.symlink(".", link)
    message = refusal(root)
    assert message.startswith(f"{link}: is a symbolic link loop") and str(root / "train" / "a") in message


def test_a_class_folder_that_links_back_is_a_loop(tmp_path):
    root = image_tree(tmp_path / "t")
    link = root / "test" / "c"
    os.symlink("..", link)
    assert refusal(root).startswith(f"{link}: is a symbolic link loop")


def test_a_broken_link_is_named(tmp_path):
    root = image_tree(tmp_path / "t")
    link = root / "train" / "b" / "1.png"
    os.symlink("gone.png", link)
    assert refusal(root) == (f"{link}: is a broken symbolic link (to gone.png, which does not exist); "
                             "remove it or point it at an image (or a class folder)")


def test_links_to_images_and_real_subfolders_behave_as_before(tmp_path):
    root = image_tree(tmp_path / "t")
    os.symlink(root / "train" / "a" / "0.png", root / "train" / "a" / "1.png")
    assert len(load_folder(root).images) == 5
    (root / "train" / "a" / "sub").mkdir()
    assert "found a folder" in refusal(root)
