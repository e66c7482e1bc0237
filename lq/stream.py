"""The lifelong task stream on disk: the split (SPEC 1) and the replay sets (SPEC 2).

Each writer fills a folder atomically with the reference's `image,label` CSVs or JSON files,
byte-identical for the same inputs and seed.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd

from lq.errors import LqError
from lq.io import read_table, task_count, write_json, write_table
from lq.manifest import output_dir, verify_files
from lq.tasks import sample_replay, select_classes, subsample_per_class, task_classes

log = logging.getLogger("lq")


def read_index(store_dir: Path) -> tuple[pd.DataFrame, list[str]]:
    """The store's index (image, label, split) and class names, without loading pixels."""
    verify_files(store_dir / "classes.txt", store_dir / "index.csv")
    try:
        classes = (store_dir / "classes.txt").read_text(encoding="utf-8").splitlines()
        index = pd.read_csv(store_dir / "index.csv", dtype={"image": str, "split": str})
    except FileNotFoundError as exc:
        raise LqError(f"{exc.filename}: missing; run the download stage first") from None
    return index, classes


def write_split(store_dir: Path, out: Path, *, num_tasks: int, diminish_rate: float, seed: int,
                train_per_class: int | None = None) -> list[list[int]]:
    """Write train{t}/test{t} per task plus their unions train/test, and tasks.json.

    With `train_per_class`, the training images are first cut to a seeded, stratified subsample
    of that many per class (test images never); tasks.json then records the number.
    """
    index, classes = read_index(store_dir)
    tasks = task_classes(len(classes), num_tasks, diminish_rate, seed)
    parts = {s: index[index["split"] == s].reset_index(drop=True) for s in ("train", "test")}
    parts["train"] = subsample_per_class(parts["train"], train_per_class, seed)
    with output_dir(out, "split") as tmp:
        for split, table in parts.items():
            for t, ids in enumerate(tasks):
                write_table(tmp / f"{split}{t}.csv", select_classes(table, ids))
            union = sorted({int(c) for ids in tasks for c in ids})
            write_table(tmp / f"{split}.csv", select_classes(table, union))
        write_json(tmp / "tasks.json", {
            "classes": classes,
            "tasks": [[int(c) for c in ids] for ids in tasks],
            "num_tasks": num_tasks, "diminish_rate": diminish_rate, "seed": seed,
            # only when set, so the split of a configuration without a subsample keeps its bytes
            **({"train_per_class": train_per_class} if train_per_class is not None else {}),
        })
    log.info("%d tasks of %s classes -> %s", len(tasks), [len(t) for t in tasks], out)
    return [[int(c) for c in ids] for ids in tasks]


def write_replay(split_dir: Path, out: Path, *, replay_rate: float, seed: int) -> list[int]:
    """replay{t}.csv for every task: only training rows, never test ones."""
    sizes = []
    with output_dir(out, "replay") as tmp:
        for t in range(task_count(split_dir)):
            replay = sample_replay(read_table(split_dir / f"train{t}.csv"), replay_rate, seed, t)
            write_table(tmp / f"replay{t}.csv", replay)
            sizes.append(len(replay))
    log.info("replay sets of %s images -> %s", sizes, out)
    return sizes
