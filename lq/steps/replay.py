"""Stage `replay`: sample each task's replay set from its training CSV (SPEC 2)."""

from __future__ import annotations

from lq import stream
from lq.steps import step


def main(argv: list[str]) -> int:
    def body(args, p) -> None:
        stream.write_replay(args.split, args.replay, replay_rate=p["replay.replay_rate"], seed=p["seed"])

    return step("replay", argv, __doc__, body)
