"""Stage `split`: the lifelong task split (SPEC 1), as the reference's `image,label` CSVs."""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd

from lq.errors import LqError
from lq.manifest import output_dir, verify_files
from lq.steps import load_stage_params, parser_for, run
from lq.steps.io import write_json, write_table
from lq.tasks import select_classes, task_classes

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


def write_split(index: pd.DataFrame, classes: list[str], out: Path, *, num_tasks: int,
                diminish_rate: float, seed: int) -> list[list[int]]:
    """Write train{t}/test{t} per task plus their unions train/test, and tasks.json."""
    tasks = task_classes(len(classes), num_tasks, diminish_rate, seed)
    parts = {s: index[index["split"] == s].reset_index(drop=True) for s in ("train", "test")}
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
        })
    return [[int(c) for c in ids] for ids in tasks]


def main(argv: list[str]) -> int:
    parser = parser_for("split", __doc__)
    parser.add_argument("--store", type=Path, required=True, help="store folder from `download`")
    parser.add_argument("--out", type=Path, required=True, help="split folder to write")
    args = parser.parse_args(argv)

    def body() -> None:
        params = load_stage_params("split", args)
        index, classes = read_index(args.store)
        tasks = write_split(
            index, classes, args.out, num_tasks=params["split.num_tasks"],
            diminish_rate=params["split.diminish_rate"], seed=params["seed"],
        )
        log.info("%d tasks of %s classes -> %s", len(tasks), [len(t) for t in tasks], args.out)

    return run("split", body)
