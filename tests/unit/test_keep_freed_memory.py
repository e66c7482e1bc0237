"""`keep_freed_memory`: a process that frees and reallocates the same large tensors stops
faulting them in again (glibc; the training step's pattern, measured by `bench/run.py alloc`)."""

from __future__ import annotations

import subprocess
import sys

import pytest

# Four 8 MiB tensors made, written and freed, 6 rounds; minor page faults per round after three
# rounds to settle (the heap grows to fit them), before and after keep_freed_memory(). With
# glibc's defaults the freed 32 MiB at the heap's top is trimmed back to the kernel every round
# (the adaptive trim threshold ends at 2 x 8 MiB).
SCRIPT = """
import resource, torch
from lq.memory import keep_freed_memory

def faults_per_round(rounds=6):
    def one_round():
        tensors = [torch.empty(2 ** 21).fill_(1.0) for _ in range(4)]
        del tensors
    for _ in range(3):
        one_round()
    start = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(rounds):
        one_round()
    return (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - start) / rounds

before = faults_per_round()
applied = keep_freed_memory()
after = faults_per_round()
print(before, applied, after)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_freed_tensors_are_reused_instead_of_faulted_in_again():
    out = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, check=True).stdout.split()
    before, applied, after = float(out[0]), out[1] == "True", float(out[2])
    assert applied
    pages = 4 * (8 << 20) // 4096
    assert before > pages / 2  # the defaults do give back the memory (the test can fail)
    assert after < pages / 20


def test_off_linux_it_does_nothing(monkeypatch):
    from lq import memory

    monkeypatch.setattr(memory.sys, "platform", "darwin")
    assert memory.keep_freed_memory() is False
