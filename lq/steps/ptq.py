"""Stage `ptq`: the FP32 model's test accuracy on task 0 at every (weight, activation) bit pair."""

from __future__ import annotations

from lq import ptq
from lq.steps import step, typed


def main(argv: list[str]) -> int:
    def body(args, p) -> None:
        summary = ptq.sweep_pretrain(args.model, store=args.store, split=args.split, settings=typed.ptq(p))
        ptq.write_outputs(summary, grid=args.grid, table=args.table, heatmap=args.heatmap)

    return step("ptq", argv, __doc__, body)
