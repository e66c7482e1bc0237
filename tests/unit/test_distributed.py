"""Multi-process (DDP) helpers on one process: batch shards, the one-process world, the torchrun relaunch."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from torch import nn

from lq.train import distributed
from lq.train.distributed import World, shard
from tests.conftest import this_thread_only


def test_shard_gives_equal_contiguous_slices_that_make_up_the_batch() -> None:
    x, y = torch.arange(24.0).reshape(12, 2), torch.arange(12)
    parts = [shard(x, y, World(rank=r, world_size=3, local_rank=r)) for r in range(3)]
    assert [len(py) for _, py in parts] == [4, 4, 4]
    assert torch.equal(torch.cat([px for px, _ in parts]), x) and torch.equal(torch.cat([py for _, py in parts]), y)
    assert torch.equal(parts[1][1], torch.tensor([4, 5, 6, 7]))
    # uneven: the first slices take one more; one process keeps the whole batch
    assert [len(shard(x[:7], y[:7], World(r, 3, r))[1]) for r in range(3)] == [3, 2, 2]
    assert shard(x, y, World.single())[0] is x and shard(x, y, None)[1] is y


def test_world_and_wrap_for_one_process(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    world, device = distributed.init_world(torch.device("cpu"))
    assert world == World.single() and world.is_main and device == torch.device("cpu")
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert distributed.init_world(torch.device("cpu"))[0] == World.single()
    model = nn.Linear(2, 2)
    assert distributed.wrap(model, world) is model
    assert not World(rank=1, world_size=2, local_rank=1).is_main
    assert distributed.all_reduce_sum(torch.tensor(3.0), world) == 3.0


def test_relaunch_under_torchrun_decides_when_to_launch(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    calls = []

    def fake_run(command, check):
        calls.append(command)
        return subprocess.CompletedProcess(command, 7)

    monkeypatch.setattr(distributed.subprocess, "run", this_thread_only(fake_run, subprocess.run))
    assert distributed.relaunch_under_torchrun("pretrain", ["--store", "s"], nproc=1) is None
    assert calls == []
    assert distributed.relaunch_under_torchrun("pretrain", ["--store", "s"], nproc=2) == 7
    assert calls == [[sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                      "-m", "lq", "pretrain", "--store", "s"]]
    monkeypatch.setenv("WORLD_SIZE", "2")  # already one of torchrun's workers: run here
    assert distributed.relaunch_under_torchrun("pretrain", [], nproc=2) is None
    assert len(calls) == 1
