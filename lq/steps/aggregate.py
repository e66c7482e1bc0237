"""Stage `aggregate`: the comparison over the grid, mean ± std over seeds (tables and figures).

Reads the metrics of every grid cell (`--metrics` is the path pattern with {method}, {bits},
{quantizer} and {seed}; the grid comes from params.yaml) and fails naming any missing run.
"""

from __future__ import annotations

from lq import comparison, grid
from lq.steps import step


def main(argv: list[str]) -> int:
    def body(args, p) -> None:
        records = comparison.read_runs(args.metrics, {axis: p[f"grid.{axis}"] for axis in grid.LIFELONG_AXES})
        comparison.write_comparison(records, table=args.table, markdown=args.markdown, curve=args.curve,
                                    matrices=args.matrices, accuracy_figure=args.accuracy_figure,
                                    forgetting_figure=args.forgetting_figure)

    return step("aggregate", argv, __doc__, body)
