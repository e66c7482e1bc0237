"""What a training run leaves for people to look at: the curve CSV and TensorBoard scalars."""

from __future__ import annotations

import io
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from lq import runlog
from lq.atomic import write_text

log = logging.getLogger("lq")
CURVE_COLUMNS = ["step", "task", "epoch", "loss", "accuracy", "lr"]


def write_curve(path: Path, history: list[dict[str, Any]], columns: Sequence[str] = CURVE_COLUMNS) -> None:
    """Per-epoch training curve as CSV (a DVC plot); deterministic, no timings."""
    buffer = io.StringIO()
    pd.DataFrame(history, columns=list(columns)).to_csv(buffer, index=False, lineterminator="\n")
    write_text(path, buffer.getvalue())


class Board:
    """TensorBoard scalars of this run in a folder of its own, runs/<stage>-<cell>/<run id>/
    (`lq.runlog`: a rerun never adds points to an earlier run's folder), the event file opened at
    the first epoch written (so a process that logs nothing, e.g. a non-main DDP rank, leaves none)."""

    def __init__(self, run: str):
        self.log_dir = runlog.tensorboard_dir(run)
        self.writer = None

    def epoch(self, row: Mapping[str, Any]) -> None:
        if self.writer is False:
            return
        if self.writer is None:
            from torch.utils.tensorboard import SummaryWriter

            try:
                self.writer = SummaryWriter(log_dir=str(self.log_dir))
            except OSError as exc:  # not an output: the run goes on without scalars
                log.warning("no TensorBoard scalars for this run (%s: %s)", exc.strerror or exc, self.log_dir)
                self.writer = False
                return
        for key in ("loss", "accuracy", "lr", "embedding_std"):
            if row.get(key) is not None:
                self.writer.add_scalar(f"train/{key}", row[key], row["step"])
        self.writer.flush()

    def close(self) -> None:
        if self.writer:
            self.writer.close()
