"""Stage `ssl_linear`: linear evaluation of a self-supervised backbone at every (weight, activation) bit pair."""

from __future__ import annotations

from lq import ptq
from lq.ssl import linear
from lq.steps import step, typed


def main(argv: list[str]) -> int:
    def body(args, p) -> None:
        summary = linear.evaluate(args.model, store=args.store, split=args.split, settings=typed.ptq(p),
                                  linear=typed.linear(p))
        ptq.write_outputs(summary, grid=args.grid, table=args.table, heatmap=args.heatmap)

    return step("ssl_linear", argv, __doc__, body)
