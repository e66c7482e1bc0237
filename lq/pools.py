"""Each task's training pool as a method forms it, counted per class, with its BaLL weights (SPEC 3)."""

from __future__ import annotations

import logging
from pathlib import Path

from lq.io import read_json, read_table, write_json
from lq.manifest import output_dir
from lq.methods import method_class
from lq.tasks import ball_weights, class_counts

log = logging.getLogger("lq")


def write_counts(split_dir: Path, replay_dir: Path, out: Path, *, method: str, replay_in_pool: bool) -> None:
    """counts{t}.json (label -> samples in P_t) and reweight{t}.json (label -> BaLL weight), where
    P_t is the pool `method` trains task t on (`Method.pool`), so the weights describe it."""
    pool_of = method_class(method).pool
    tasks = read_json(split_dir / "tasks.json")
    num_classes, num_tasks = len(tasks["classes"]), len(tasks["tasks"])
    trains = [read_table(split_dir / f"train{t}.csv", num_classes) for t in range(num_tasks)]
    replays = [read_table(replay_dir / f"replay{t}.csv", num_classes) for t in range(num_tasks)]
    with output_dir(out, "count", {"method": method}) as tmp:
        for t in range(num_tasks):
            pool = pool_of(trains[t], replays[:t], trains[:t], replay_in_pool)
            counts = class_counts(pool["label"])
            weights = ball_weights(counts, num_classes)
            write_json(tmp / f"counts{t}.json", {str(c): n for c, n in counts.items()})
            write_json(tmp / f"reweight{t}.json", {str(c): round(w, 10) for c, w in weights.items()})
            log.info("%s task %d: pool of %d images in %d classes", method, t, len(pool), len(counts))
