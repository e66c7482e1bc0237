"""Stage `count`: class counts of each task's training pool and its BaLL weights (SPEC 3)."""

from __future__ import annotations

import logging
from pathlib import Path

from lq.manifest import output_dir
from lq.steps import load_stage_params, parser_for, run
from lq.steps.io import read_json, read_table, write_json
from lq.tasks import ball_weights, class_counts, training_pool

log = logging.getLogger("lq")


def write_counts(split_dir: Path, replay_dir: Path, out: Path) -> None:
    """counts{t}.json (label -> samples in P_t) and reweight{t}.json (label -> BaLL weight)."""
    tasks = read_json(split_dir / "tasks.json")
    num_classes, num_tasks = len(tasks["classes"]), len(tasks["tasks"])
    replays = [read_table(replay_dir / f"replay{t}.csv", num_classes) for t in range(num_tasks)]
    with output_dir(out, "count") as tmp:
        for t in range(num_tasks):
            pool = training_pool(read_table(split_dir / f"train{t}.csv", num_classes), replays[:t])
            counts = class_counts(pool["label"])
            weights = ball_weights(counts, num_classes)
            write_json(tmp / f"counts{t}.json", {str(c): n for c, n in counts.items()})
            write_json(tmp / f"reweight{t}.json", {str(c): round(w, 10) for c, w in weights.items()})
            log.info("task %d: pool of %d images in %d classes", t, len(pool), len(counts))


def main(argv: list[str]) -> int:
    parser = parser_for("count", __doc__)
    parser.add_argument("--split", type=Path, required=True, help="split folder from `split`")
    parser.add_argument("--replay", type=Path, required=True, help="replay folder from `replay`")
    parser.add_argument("--out", type=Path, required=True, help="counts folder to write")
    args = parser.parse_args(argv)

    def body() -> None:
        load_stage_params("count", args)  # validates params.yaml; the stage reads no keys
        write_counts(args.split, args.replay, args.out)

    return run("count", body)
