"""What a training run leaves for people to look at: the curve CSV and TensorBoard scalars."""

from __future__ import annotations

import io
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from lq import runlog
from lq.atomic import write_text

CURVE_COLUMNS = ["step", "task", "epoch", "loss", "accuracy", "lr"]


def write_curve(path: Path, history: list[dict[str, Any]]) -> None:
    """Per-epoch training curve as CSV (a DVC plot); deterministic, no timings."""
    buffer = io.StringIO()
    pd.DataFrame(history, columns=CURVE_COLUMNS).to_csv(buffer, index=False, lineterminator="\n")
    write_text(path, buffer.getvalue())


class Board:
    """TensorBoard scalars of this run in a folder of its own, runs/<stage>-<cell>/<run id>/
    (`lq.runlog`: a rerun never adds points to an earlier run's folder), the event file opened at
    the first epoch written (so a process that logs nothing, e.g. a non-main DDP rank, leaves none)."""

    def __init__(self, run: str):
        self.log_dir = runlog.tensorboard_dir(run)
        self.writer = None

    def epoch(self, row: Mapping[str, Any]) -> None:
        if self.writer is None:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(log_dir=str(self.log_dir))
        for key in ("loss", "accuracy", "lr"):
            self.writer.add_scalar(f"train/{key}", row[key], row["step"])
        self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
