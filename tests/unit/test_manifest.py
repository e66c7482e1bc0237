"""Manifests of directory outputs (lq.manifest): written with the folder, checked by every reader.

A missing or damaged file inside a stage's output folder must stop the stage that reads it, with
a message naming the file, the stage that wrote it and how to rerun that stage in either tool.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from lq import manifest
from lq.data.sources import load_source
from lq.data.store import read_store, write_store
from lq.errors import LqError
from lq.pipeline import load_table, stage_by_name
from lq.io import read_json, read_table, task_count
from lq.pools import write_counts
from lq.stream import read_index, write_replay, write_split
from lq.train import checkpoint

CELL = {"method": "lifequant", "bits": "w4a4", "quantizer": "proxq", "seed": "0"}


def flip_byte(path: Path, offset: int = -100) -> None:
    """Change one byte, keeping the size (what a bit flip or a careless edit does)."""
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


def lifelong_folder(root: Path) -> Path:
    out = root / "models" / "lifequant-w4a4"
    with manifest.output_dir(out, "lifelong", CELL) as tmp:
        for t in range(3):
            checkpoint.save(tmp / f"task{t}.pt", {"model": {"w": torch.full((4,), float(t))}, "config": {"task": t}})
    return out


@pytest.fixture(scope="module")
def digits():
    return load_source("digits", root=None, seed=123, test_fraction=0.2, download=False)


def test_output_dir_writes_sizes_hashes_and_the_stage(tmp_path):
    out = lifelong_folder(tmp_path)
    data = json.loads((out / "MANIFEST.json").read_text())
    assert data["stage"] == "lifelong" and data["cell"] == CELL
    assert sorted(data["files"]) == ["task0.pt", "task1.pt", "task2.pt"]
    for name, entry in data["files"].items():
        assert entry["bytes"] == (out / name).stat().st_size
        assert entry["sha256"] == manifest.sha256(out / name)


def test_manifest_bytes_depend_only_on_the_files(tmp_path):
    """Two identical writes give identical manifests (no times, no temporary names): DVC's and the
    determinism tests' byte-for-byte comparisons still hold."""
    for name in ("a", "b"):
        with manifest.output_dir(tmp_path / name, "split") as tmp:
            (tmp / "train0.csv").write_text("image,label\nx,0\n")
    assert (tmp_path / "a" / "MANIFEST.json").read_bytes() == (tmp_path / "b" / "MANIFEST.json").read_bytes()


def test_a_failed_write_leaves_the_old_folder_and_its_manifest(tmp_path):
    out = lifelong_folder(tmp_path)
    before = (out / "MANIFEST.json").read_bytes()
    with pytest.raises(RuntimeError):
        with manifest.output_dir(out, "lifelong", CELL) as tmp:
            (tmp / "task0.pt").write_bytes(b"half")
            raise RuntimeError("killed")
    assert (out / "MANIFEST.json").read_bytes() == before
    manifest.verify_files(*(out / f"task{t}.pt" for t in range(3)))


def test_intact_files_pass_every_reader(tmp_path, digits):
    store = write_store(digits, tmp_path / "store")
    assert read_store(store) == digits
    read_index(store)
    split = tmp_path / "split"
    write_split(store, split, num_tasks=3, diminish_rate=0.5, seed=123)
    assert task_count(split) == 3 and len(read_table(split / "train0.csv", 10))
    out = lifelong_folder(tmp_path)
    assert checkpoint.load(out / "task1.pt")["config"] == {"task": 1}


def test_a_flipped_byte_in_the_store_names_the_download_stage(tmp_path, digits):
    store = write_store(digits, tmp_path / "store")
    flip_byte(store / "images.npy")
    with pytest.raises(LqError) as err:
        read_store(store)
    message = str(err.value)
    assert f"{store / 'images.npy'} differs from what stage 'download' wrote (sha256 " in message
    assert "`snakemake --cores all --forcerun download all`" in message
    assert "`dvc repro -f -s download` then `dvc repro`" in message
    read_index(store)  # the split stage reads only the index and class list, which are intact


def test_a_missing_checkpoint_names_the_lifelong_stage_and_its_cell(tmp_path):
    out = lifelong_folder(tmp_path)
    (out / "task1.pt").unlink()
    checkpoint.load(out / "task0.pt")
    with pytest.raises(LqError) as err:
        checkpoint.load(out / "task1.pt")
    message = str(err.value)
    assert f"{out / 'task1.pt'} is missing: stage 'lifelong' wrote it" in message
    assert f"`snakemake --cores all --forcerun {out / 'MANIFEST.json'} all`" in message
    assert "`dvc repro -f -s lifelong@lifequant-w4a4-proxq-0` then `dvc repro`" in message


def test_a_truncated_file_reports_its_size(tmp_path):
    out = lifelong_folder(tmp_path)
    data = (out / "task2.pt").read_bytes()
    (out / "task2.pt").write_bytes(data[:100])
    with pytest.raises(LqError, match=r"task2.pt differs from what stage 'lifelong' wrote \(100 bytes, it wrote \d+\)"):
        checkpoint.load(out / "task2.pt")


def test_damaged_csv_and_json_in_the_split_name_the_split_stage(tmp_path, digits):
    store = write_store(digits, tmp_path / "store")
    split = tmp_path / "split"
    write_split(store, split, num_tasks=3, diminish_rate=0.5, seed=123)
    flip_byte(split / "test2.csv", offset=-2)  # a digit of a label: still a valid CSV
    with pytest.raises(LqError, match="test2.csv differs from what stage 'split' wrote"):
        read_table(split / "test2.csv", 10)
    (split / "tasks.json").unlink()
    with pytest.raises(LqError, match="tasks.json is missing: stage 'split' wrote it"):
        task_count(split)


def test_a_file_rewritten_during_the_process_is_checked_again(tmp_path, monkeypatch):
    """A file is hashed once per process while unchanged; a new size, mtime or inode rechecks it."""
    out = lifelong_folder(tmp_path)
    hashed = []
    real = manifest.sha256
    monkeypatch.setattr(manifest, "sha256", lambda p: hashed.append(Path(p).name) or real(p))
    for _ in range(3):
        checkpoint.load(out / "task0.pt")
    assert hashed == ["task0.pt"]
    flip_byte(out / "task0.pt")
    os.utime(out / "task0.pt", ns=(1, 1))  # a different mtime: the edit is seen
    with pytest.raises(LqError, match="differs from what stage 'lifelong' wrote"):
        checkpoint.load(out / "task0.pt")


def test_folders_without_a_manifest_are_read_unverified(tmp_path):
    """Hand-made inputs (e.g. the reference's CSVs) have no manifest and are read as before."""
    folder = tmp_path / "handmade"
    folder.mkdir()
    pd.DataFrame({"image": ["train/0/a.png"], "label": [0]}).to_csv(folder / "train0.csv", index=False)
    (folder / "tasks.json").write_text('{"tasks": [[0]]}')
    assert len(read_table(folder / "train0.csv")) == 1
    assert read_json(folder / "tasks.json") == {"tasks": [[0]]}
    with pytest.raises(LqError, match="file not found"):
        read_table(folder / "train1.csv")


def test_a_damaged_manifest_is_an_error(tmp_path):
    out = lifelong_folder(tmp_path)
    (out / "MANIFEST.json").write_text("{not json")
    with pytest.raises(LqError, match="MANIFEST.json: damaged manifest"):
        checkpoint.load(out / "task0.pt")


def test_files_the_stage_did_not_write_are_left_to_the_reader(tmp_path):
    out = lifelong_folder(tmp_path)
    checkpoint.save(out / "extra.pt", {"model": {}, "config": {}})
    assert checkpoint.load(out / "extra.pt")["config"] == {}


# --- the stage table's file lists (what Snakemake declares) match what the steps write ----------

def written(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_every_directory_output_lists_its_files_and_those_are_what_the_steps_write(tmp_path, digits):
    stages = {s.name: s for s in load_table()[1]}
    dirs = {(s.name, name) for s in stages.values() for name, (_, is_dir) in s.outputs().items() if is_dir}
    assert dirs == {("download", "store"), ("split", "split"), ("replay", "replay"), ("count", "counts"),
                    ("lifelong", "models"), ("lifelong", "replay_used")}
    store = write_store(digits, tmp_path / "store")
    assert written(store) == sorted(stages["download"].dir_files("store", 4))
    for num_tasks in (2, 4):
        split, replay, counts = (tmp_path / f"{n}{num_tasks}" for n in ("split", "replay", "counts"))
        write_split(store, split, num_tasks=num_tasks, diminish_rate=0.5, seed=1)
        write_replay(split, replay, replay_rate=0.2, seed=1)
        write_counts(split, replay, counts, method="lifequant", replay_in_pool=True)
        assert written(split) == sorted(stages["split"].dir_files("split", num_tasks))
        assert written(replay) == sorted(stages["replay"].dir_files("replay", num_tasks))
        assert written(counts) == sorted(stages["count"].dir_files("counts", num_tasks))
    assert stage_by_name("lifelong").dir_files("models", 2) == ["task0.pt", "task1.pt", "MANIFEST.json"]
    assert stage_by_name("lifelong").dir_files("replay_used", 2) == ["replay0.csv", "replay1.csv", "reweight0.json",
                                                                     "reweight1.json", "MANIFEST.json"]


def test_a_directory_output_without_a_file_list_is_refused(tmp_path):
    table = (Path(__file__).resolve().parents[2] / "workflow" / "stages.yaml").read_text()
    broken = tmp_path / "stages.yaml"
    broken.write_text(table.replace('    files: {replay: ["replay{task}.csv"]}\n', ""))
    with pytest.raises(LqError, match="stage 'replay': 'files' must list the files of exactly its directory outputs"):
        load_table(broken)
    broken.write_text(table.replace('["replay{task}.csv"]', '["replay{seed}.csv"]'))
    with pytest.raises(LqError, match="must be a plain name"):
        load_table(broken)


def test_arrays_are_unchanged_by_the_manifest(tmp_path, digits):
    """The manifest is one more file; the store's own files keep their bytes."""
    store = write_store(digits, tmp_path / "store")
    assert np.array_equal(np.load(store / "images.npy"), digits.images)
