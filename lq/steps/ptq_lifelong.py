"""Stage `ptq_lifelong`: a lifelong cell's accuracy matrix, average accuracy and forgetting at every bit pair."""

from __future__ import annotations

from lq import ptq
from lq.steps import step, typed


def main(argv: list[str]) -> int:
    def body(args, p) -> None:
        summary = ptq.sweep_lifelong(args.models, store=args.store, split=args.split, replay=args.replay,
                                     settings=typed.ptq(p))
        ptq.write_outputs(summary, grid=args.grid, table=args.table, heatmap=args.heatmap)

    return step("ptq_lifelong", argv, __doc__, body)
