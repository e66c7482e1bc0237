"""The comparison over the grid: every run's metrics, mean ± std over seeds, as tables and figures."""

from __future__ import annotations

import io
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from lq import grid, plots, report
from lq.atomic import write_text
from lq.errors import LqError
from lq.io import read_json

log = logging.getLogger("lq")


def csv_text(frame: pd.DataFrame) -> str:
    buffer = io.StringIO()
    frame.to_csv(buffer, index=False, lineterminator="\n", float_format="%.6g")
    return buffer.getvalue()


def read_runs(pattern: str, values: Mapping[str, Sequence]) -> list[dict]:
    """The metrics of every grid cell (`pattern` names {method} {bits} {quantizer} {seed});
    a missing run is an error naming it."""
    records = []
    for cell in grid.cells(values, list(values)):
        path = Path(pattern.format(**cell))
        if not path.exists():
            raise LqError(f"{path}: metrics of run {grid.cell_name(cell)} are missing; run its evaluate stage first")
        records.append(read_json(path))
    return records


def write_comparison(records: list[dict], *, table: Path, markdown: Path, curve: Path, matrices: Path,
                     accuracy_figure: Path, forgetting_figure: Path) -> None:
    summary = report.summary_table(records)
    write_text(table, csv_text(summary))
    write_text(markdown, report.markdown_table(summary))
    write_text(curve, csv_text(report.curve_table(records)))
    groups = report.group_runs(records)
    labels = [report.run_label(key) for key in groups]
    plots.matrices_figure(matrices, [(label, *report.stacked(g, "accuracy_matrix"))
                                     for label, g in zip(labels, groups.values())])
    plots.curves_figure(accuracy_figure, [(label, *report.stacked(g, "average_accuracy_curve"))
                                          for label, g in zip(labels, groups.values())],
                        "average accuracy on seen tasks (%)", "Average accuracy after each task (mean ± std over seeds)")
    plots.bars_figure(forgetting_figure, labels, summary["forgetting_mean"].to_numpy(),
                      np.nan_to_num(summary["forgetting_std"].to_numpy()), "forgetting (%)",
                      "Average forgetting after the last task (mean ± std over seeds)")
    log.info("%d runs:\n%s", len(groups), report.markdown_table(summary))
