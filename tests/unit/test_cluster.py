"""GPUs a cluster job asks for (lq/cluster.py)."""

from __future__ import annotations

import pytest

from lq import cluster

# `sinfo -h -o '%P %G'` on a cluster with a default CPU partition, a GPU partition and a mixed one
SINFO = """cpu* (null)
gpu gpu:a100:4(S:0-1)
mixed (null)
mixed gpu:2,mps:100
"""


def never_asked():
    raise AssertionError("the cluster was asked, but the device alone decides")


@pytest.mark.parametrize("device,has_gpus,want", [
    ("cpu", never_asked, 0),
    ("cpu", lambda: True, 0),
    ("cuda", never_asked, 2),
    ("cuda:1", never_asked, 2),
    ("auto", lambda: True, 2),
    ("auto", lambda: False, 0),
    ("auto", lambda: None, 2),  # cannot tell (no SLURM here): the table's request, as before
])
def test_the_gpu_request_follows_the_device(device, has_gpus, want):
    assert cluster.gpus_per_job(device, 1, 2, has_gpus) == want


def test_a_stage_without_gpus_never_asks_for_one():
    for device in ("cpu", "cuda", "auto"):
        assert cluster.gpus_per_job(device, 0, 4, never_asked) == 0


@pytest.mark.parametrize("partition,want", [
    (None, False),       # the default partition (cpu*)
    ("cpu", False),
    ("gpu", True),
    ("mixed", True),     # some of its nodes have GPUs: a GPU job can run there
    ("nosuch", None),
])
def test_sinfo_tells_which_partitions_have_gpus(partition, want):
    assert cluster.partition_has_gpus(SINFO, partition) is want


def test_a_gres_that_is_no_gpu_does_not_count():
    assert cluster.partition_has_gpus("fpga* fpga:2,mps:100\n", None) is False


def test_without_sinfo_the_cluster_cannot_tell(monkeypatch):
    cluster.slurm_partition_has_gpus.cache_clear()
    monkeypatch.setenv("PATH", "/nonexistent")
    try:
        assert cluster.slurm_partition_has_gpus("gpu") is None
    finally:
        cluster.slurm_partition_has_gpus.cache_clear()
