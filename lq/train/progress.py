"""Where a training stage stands, for the per-epoch log line: epochs done of the stage's total,
time elapsed in this run and an estimate of the time left.

Progress bars (tqdm) show only on a terminal; under Snakemake or DVC the log line is what the user
sees, so it carries the stage's progress: `...; stage: 7/30 epochs, 0:00:15 elapsed, ETA 0:00:20`. The total counts every task's epochs; a task's phases are known when it starts (a
plugin such as INQ may change them), and later tasks are assumed to have the same. Epochs an
earlier, killed run finished count as done but not in the timing: the ETA is this run's mean
epoch time times the epochs left.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from datetime import timedelta
from typing import Any


def clock(seconds: float) -> str:
    """0:00:15 (hours:minutes:seconds, whole seconds)."""
    return str(timedelta(seconds=round(max(seconds, 0.0))))


class Progress:
    """Epoch counts of one training stage; `history` is the engine's (one row per finished epoch)."""

    def __init__(self, task_epochs: Mapping[int, int], history: list[dict[str, Any]]):
        self.epochs = dict(task_epochs)  # task index -> its epochs, in plan order
        self.known: set[int] = set()
        self.history = history
        self.started = time.perf_counter()
        self.timed = 0  # epochs this run trained

    def task(self, index: int, phase_epochs: Sequence[int]) -> None:
        """Task `index` runs these phases; later tasks likely the same. Tasks before it that an
        earlier run finished count the epochs their history rows show."""
        count = sum(phase_epochs)
        self.epochs.setdefault(index, count)  # a task the stage did not announce
        tasks = list(self.epochs)
        for earlier in tasks[: tasks.index(index)]:
            if earlier not in self.known:
                self.epochs[earlier] = sum(1 for row in self.history if row.get("task") == earlier)
                self.known.add(earlier)
        self.epochs[index] = count
        self.known.add(index)
        for later in tasks[tasks.index(index) + 1:]:
            if later not in self.known:
                self.epochs[later] = count

    @property
    def total(self) -> int:
        return sum(self.epochs.values())

    def epoch_done(self) -> str:
        """Called after each epoch this run trains: the log line's suffix."""
        self.timed += 1
        done, total = len(self.history), self.total
        elapsed = time.perf_counter() - self.started
        left = max(total - done, 0) * elapsed / self.timed
        return f"; stage: {done}/{total} epochs, {clock(elapsed)} elapsed, ETA {clock(left)}"
