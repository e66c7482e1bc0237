"""Reading and writing the pipeline's tables: the reference's `image,label` CSVs and JSON files."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pandas as pd

from lq.atomic import write_text
from lq.errors import LqError
from lq.manifest import verify_file

TABLE_COLUMNS = ["image", "label"]


def write_table(path: Path, table: pd.DataFrame) -> None:
    """`image,label` CSV, '\\n' line endings, no index: byte-identical for the same rows."""
    buffer = io.StringIO()
    table[TABLE_COLUMNS].to_csv(buffer, index=False, lineterminator="\n")
    write_text(path, buffer.getvalue())


def read_table(path: Path, num_classes: int | None = None) -> pd.DataFrame:
    """Read an `image,label` CSV, checking its columns and labels."""
    verify_file(path)  # against the manifest of a stage's output folder (lq.manifest)
    try:
        table = pd.read_csv(path, dtype={"image": str})
    except FileNotFoundError:
        raise LqError(f"{path}: file not found (did an earlier stage run?)") from None
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise LqError(f"{path}: not a readable CSV: {exc}") from None
    missing = [c for c in TABLE_COLUMNS if c not in table.columns]
    if missing:
        raise LqError(f"{path}: missing column(s) {missing}; expected columns {TABLE_COLUMNS}")
    if not pd.api.types.is_integer_dtype(table["label"]):
        raise LqError(f"{path}: column 'label' must hold integer class ids")
    if num_classes is not None:
        bad = table[(table["label"] < 0) | (table["label"] >= num_classes)]
        if len(bad):
            row = bad.iloc[0]
            raise LqError(
                f"{path}: label {row['label']} of '{row['image']}' is outside the "
                f"{num_classes} classes (0..{num_classes - 1})"
            )
    return table[TABLE_COLUMNS]


def write_json(path: Path, data: Any) -> None:
    """Indented JSON in the mapping's own order, final newline: stable bytes, readable diffs."""
    write_text(path, json.dumps(data, indent=2) + "\n")


def read_json(path: Path) -> Any:
    verify_file(path)
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise LqError(f"{path}: file not found (did an earlier stage run?)") from None
    except json.JSONDecodeError as exc:
        raise LqError(f"{path}: not valid JSON: {exc}") from None


def task_count(split_dir: Path) -> int:
    """Number of tasks in a split folder, from its tasks.json."""
    return len(read_json(Path(split_dir) / "tasks.json")["tasks"])
