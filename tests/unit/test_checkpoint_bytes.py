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
