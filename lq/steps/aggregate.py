"""Stage `aggregate`: the comparison over the grid, mean ± std over seeds (tables and figures).

Reads the metrics of every grid cell (`--metrics` is the path pattern with {method}, {bits},
{quantizer} and {seed}; the grid comes from params.yaml) and fails naming any missing run.
"""

from __future__ import annotations

import io
import logging
from pathlib import Path

import numpy as np
import pandas as pd

from lq import grid, plots, report
from lq.atomic import write_text
from lq.errors import LqError
from lq.steps import load_stage_params, parser_for, run
from lq.steps.io import read_json

log = logging.getLogger("lq")


def csv_text(frame: pd.DataFrame) -> str:
    buffer = io.StringIO()
    frame.to_csv(buffer, index=False, lineterminator="\n", float_format="%.6g")
    return buffer.getvalue()


def main(argv: list[str]) -> int:
    parser = parser_for("aggregate", __doc__)
    parser.add_argument("--metrics", required=True, help="metrics path pattern with {method} {bits} {quantizer} {seed}")
    for name in ("table", "markdown", "curve", "matrices", "accuracy-figure", "forgetting-figure"):
        parser.add_argument(f"--{name}", type=Path, required=True)
    args = parser.parse_args(argv)

    def body() -> None:
        p = load_stage_params("aggregate", args)
        values = {axis: p[f"grid.{axis}"] for axis in grid.AXES}
        records = []
        for cell in grid.cells(values, grid.AXES):
            path = Path(args.metrics.format(**cell))
            if not path.exists():
                raise LqError(f"{path}: metrics of run {grid.cell_name(cell)} are missing; run its evaluate stage first")
            records.append(read_json(path))
        table = report.summary_table(records)
        write_text(args.table, csv_text(table))
        write_text(args.markdown, report.markdown_table(table))
        write_text(args.curve, csv_text(report.curve_table(records)))

        groups = report.group_runs(records)
        labels = [report.run_label(key) for key in groups]
        plots.matrices_figure(args.matrices, [(label, *report.stacked(g, "accuracy_matrix"))
                                              for label, g in zip(labels, groups.values())])
        plots.curves_figure(args.accuracy_figure, [(label, *report.stacked(g, "average_accuracy_curve"))
                                                   for label, g in zip(labels, groups.values())],
                            "average accuracy on seen tasks (%)", "Average accuracy after each task (mean ± std over seeds)")
        plots.bars_figure(args.forgetting_figure, labels, table["forgetting_mean"].to_numpy(),
                          np.nan_to_num(table["forgetting_std"].to_numpy()), "forgetting (%)",
                          "Average forgetting after the last task (mean ± std over seeds)")
        log.info("%d runs over %d seeds:\n%s", len(groups), len(values["seed"]), report.markdown_table(table))

    return run("aggregate", body)
