"""`keep_freed_memory`: a process that frees and reallocates the same large blocks stops faulting
them in again (glibc; what the training step gains is measured by `bench/run.py alloc`)."""

from __future__ import annotations

import subprocess
import sys

import pytest

# Minor page faults per round of making, writing and freeing large blocks, after a few rounds to
# settle (the heap grows to fit them), before and after keep_freed_memory():
# - one 64 MiB block from malloc: glibc's adaptive mmap threshold stops at 32 MiB, so with its
#   defaults this block is mmapped and unmapped every round, and each round faults all of its
#   pages in again, whatever the heap's history (the training step's buffers are handed back
#   through heap trimming, which does depend on it);
# - four 8 MiB torch tensors, the training step's sizes, through torch's own allocator.
SCRIPT = """
import ctypes, resource, torch
from lq.memory import keep_freed_memory

libc = ctypes.CDLL(None)
libc.malloc.restype, libc.free.argtypes = ctypes.c_void_p, [ctypes.c_void_p]

def malloc_round():
    block = libc.malloc(64 << 20)
    ctypes.memset(block, 1, 64 << 20)
    libc.free(block)

def torch_round():
    tensors = [torch.empty(2 ** 21).fill_(1.0) for _ in range(4)]
    del tensors

def faults_per_round(one_round, rounds=6, settle=3):
    for _ in range(settle):
        one_round()
    start = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(rounds):
        one_round()
    return (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - start) / rounds

before = faults_per_round(malloc_round)
applied = keep_freed_memory()
print(before, applied, faults_per_round(malloc_round), faults_per_round(torch_round, settle=5))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_freed_blocks_are_reused_instead_of_faulted_in_again():
    out = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, check=True).stdout.split()
    before, applied, after, torch_after = float(out[0]), out[1] == "True", float(out[2]), float(out[3])
    assert applied
    pages = (64 << 20) // 4096
    assert before > pages / 2  # the defaults do give the block back (the test can fail)
    assert after < pages / 20
    assert torch_after < (8 << 20) // 4096  # less than one of the four tensors' pages per round


def test_off_linux_it_does_nothing(monkeypatch):
    from lq import memory

    monkeypatch.setattr(memory.sys, "platform", "darwin")
    assert memory.keep_freed_memory() is False
