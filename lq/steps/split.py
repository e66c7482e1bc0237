"""Stage `split`: the lifelong task split (SPEC 1), as the reference's `image,label` CSVs."""

from __future__ import annotations

from lq import stream
from lq.steps import step


def main(argv: list[str]) -> int:
    def body(args, p) -> None:
        stream.write_split(args.store, args.split, num_tasks=p["split.num_tasks"],
                           diminish_rate=p["split.diminish_rate"], seed=p["seed"],
                           train_per_class=p["split.train_per_class"])

    return step("split", argv, __doc__, body)
