"""Stage `aggregate`: the comparison over the grid, mean ± std over seeds (tables and figures).

Reads the metrics of every grid cell (`--metrics` is the path pattern with {method}, {bits},
{quantizer} and {seed}; the grid comes from params.yaml) and fails naming any missing run. The
timing files of the same runs (`--timings`, lifelong; `--qat8_timings`, per seed and quantizer)
make the time table beside it (`--timings_table`, `--timings_markdown`: lq/timings.py), kept out
of the summary because seconds differ between runs.
"""

from __future__ import annotations

from lq import comparison, grid, timings
from lq.atomic import write_text
from lq.steps import step


def main(argv: list[str]) -> int:
    def body(args, p) -> None:
        records = comparison.read_runs(args.metrics, {axis: p[f"grid.{axis}"] for axis in grid.LIFELONG_AXES})
        table = timings.timing_table(*timings.read_timings(records, args.timings, args.qat8_timings))
        comparison.write_comparison(records, table=args.table, markdown=args.markdown, curve=args.curve,
                                    matrices=args.matrices, accuracy_figure=args.accuracy_figure,
                                    forgetting_figure=args.forgetting_figure)
        write_text(args.timings_table, comparison.csv_text(table))
        write_text(args.timings_markdown, timings.markdown_table(table))

    return step("aggregate", argv, __doc__, body)
