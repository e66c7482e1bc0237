"""Without OMP_NUM_THREADS (DVC, a step by hand) a training step uses its declared CPUs, as
Snakemake's jobs do, so both tools split float reductions the same way."""

from __future__ import annotations

import torch

from lq.pipeline import stage_by_name
from lq.steps import use_declared_threads


def test_training_steps_take_the_declared_cpus_unless_the_environment_says_otherwise(monkeypatch):
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        monkeypatch.setenv("OMP_NUM_THREADS", "2")
        use_declared_threads(stage_by_name("lifelong"))
        assert torch.get_num_threads() == 2  # the environment decides
        monkeypatch.delenv("OMP_NUM_THREADS")
        use_declared_threads(stage_by_name("split"))
        assert torch.get_num_threads() == 2  # a data stage trains nothing
        use_declared_threads(stage_by_name("lifelong"))
        assert torch.get_num_threads() == stage_by_name("lifelong").resources["cpus"] == 1
    finally:
        torch.set_num_threads(before)
