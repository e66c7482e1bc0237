"""Stage `count`: class counts of each task's training pool, as the method forms it, and its BaLL
weights (SPEC 3); once per method, since `joint` and `replay_in_pool: false` train on other pools."""

from __future__ import annotations

from lq import pools
from lq.steps import step


def main(argv: list[str]) -> int:
    def body(args, p) -> None:
        pools.write_counts(args.split, args.replay, args.counts, method=p["lifelong.method"],
                            replay_in_pool=p["lifelong.replay_in_pool"])

    return step("count", argv, __doc__, body)
