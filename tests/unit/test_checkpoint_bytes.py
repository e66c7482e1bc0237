"""Identical payloads give identical checkpoint bytes, whatever the file is called."""

from __future__ import annotations

import zipfile

import torch

from lq.train import checkpoint


def test_two_saves_to_different_paths_give_the_same_bytes(tmp_path):
    torch.manual_seed(0)
    payload = {"model": torch.nn.Linear(4, 3).state_dict(), "config": {"arch": "x"}, "history": [{"step": 1}]}
    checkpoint.save(tmp_path / "a" / "task0.pt", payload)
    checkpoint.save(tmp_path / "b" / "pretrain.pt", payload)
    a, b = (tmp_path / "a" / "task0.pt").read_bytes(), (tmp_path / "b" / "pretrain.pt").read_bytes()
    assert a == b
    # the zip records are not named after the (random) temporary file
    names = zipfile.ZipFile(tmp_path / "a" / "task0.pt").namelist()
    assert all(name.startswith("archive/") for name in names), names
    assert checkpoint.load(tmp_path / "b" / "pretrain.pt")["config"] == {"arch": "x"}
    assert not list(tmp_path.rglob("*.tmp"))


def test_a_payload_read_back_from_a_checkpoint_saves_to_the_same_bytes(tmp_path):
    """A resumed run carries history rows unpickled from its last checkpoint (new string
    objects); its checkpoints must still match an uninterrupted run's byte for byte."""
    torch.manual_seed(0)
    rows = [{"step": s, "task": 0, "loss": 0.5, "lr": 0.01} for s in range(1, 4)]  # literal keys: shared objects
    built = {"model": torch.nn.Linear(4, 3).state_dict(), "history": rows, "config": {"quant": "pow2"}}
    checkpoint.save(tmp_path / "built.pt", built)
    loaded = checkpoint.load(tmp_path / "built.pt")
    # as the engine resumes: the rows read back, one more appended in this process
    resumed = {**loaded, "history": [*loaded["history"], {"step": 4, "task": 0, "loss": 0.4, "lr": 0.01}]}
    fresh = {**built, "history": [*rows, {"step": 4, "task": 0, "loss": 0.4, "lr": 0.01}]}
    checkpoint.save(tmp_path / "resumed.pt", resumed)
    checkpoint.save(tmp_path / "fresh.pt", fresh)
    assert (tmp_path / "resumed.pt").read_bytes() == (tmp_path / "fresh.pt").read_bytes()
