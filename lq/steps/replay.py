"""Stage `replay`: sample each task's replay set from its training CSV (SPEC 2)."""

from __future__ import annotations

import logging
from pathlib import Path

from lq.manifest import output_dir
from lq.steps import load_stage_params, parser_for, run
from lq.steps.io import read_table, task_count, write_table
from lq.tasks import sample_replay

log = logging.getLogger("lq")


def write_replay(split_dir: Path, out: Path, *, replay_rate: float, seed: int) -> list[int]:
    """replay{t}.csv for every task: only training rows, never test ones."""
    sizes = []
    with output_dir(out, "replay") as tmp:
        for t in range(task_count(split_dir)):
            replay = sample_replay(read_table(split_dir / f"train{t}.csv"), replay_rate, seed, t)
            write_table(tmp / f"replay{t}.csv", replay)
            sizes.append(len(replay))
    return sizes


def main(argv: list[str]) -> int:
    parser = parser_for("replay", __doc__)
    parser.add_argument("--split", type=Path, required=True, help="split folder from `split`")
    parser.add_argument("--out", type=Path, required=True, help="replay folder to write")
    args = parser.parse_args(argv)

    def body() -> None:
        params = load_stage_params("replay", args)
        sizes = write_replay(args.split, args.out, replay_rate=params["replay.replay_rate"], seed=params["seed"])
        log.info("replay sets of %s images -> %s", sizes, args.out)

    return run("replay", body)
