"""Snakemake overlays (`--config`, `--configfile`) written through to `params.yaml`.

DVC records a stage's parameters from `params.yaml` alone. A Snakemake run with an overlay made
outputs from other values, and a later `dvc commit` would record `params.yaml`'s values beside
them: a record that lies. So before the first job runs, lq writes the overlay's values into
`params.yaml` (keeping its comments and layout) and says which keys changed; the workspace's
parameters then always describe its outputs, whichever tool runs next.
"""

from __future__ import annotations

import io
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from lq.atomic import write_text
from lq.errors import LqError

MISSING = object()


def differences(written: Mapping, effective: Mapping, prefix: str = "") -> list[tuple[str, Any, Any]]:
    """(dotted key, value in `written`, value in `effective`) for each leaf that differs.

    Mappings are compared key by key; anything else (a list, a scalar) is one value. A key only
    `effective` has is reported with MISSING as its written value.
    """
    changes: list[tuple[str, Any, Any]] = []
    for key, value in effective.items():
        name = f"{prefix}{key}"
        old = written.get(key, MISSING)
        if isinstance(value, Mapping) and isinstance(old, Mapping):
            changes.extend(differences(old, value, f"{name}."))
        elif old is MISSING or not _same(old, value):
            changes.append((name, old, value))
    return changes


def _same(a: Any, b: Any) -> bool:
    """Equal values of the same types (YAML's 1 and 1.0 and true are different parameters)."""
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return type(a) is type(b) and a == b


def describe(changes: list[tuple[str, Any, Any]]) -> str:
    return ", ".join(f"{key}: {'(unset)' if old is MISSING else _show(old)} -> {_show(new)}"
                     for key, old, new in changes)


def _show(value: Any) -> str:
    import json

    return json.dumps(value) if not isinstance(value, str) else value


def write_through(path: str | Path, changes: list[tuple[str, Any, Any]]) -> None:
    """Set each changed key in the YAML file at `path`, keeping comments, order and layout."""
    from ruamel.yaml import YAML

    path = Path(path)
    yaml = YAML()  # round trip
    yaml.preserve_quotes = True
    yaml.width = 4096
    # ruamel writes None as an empty value; params.yaml spells it `null` (`train_per_class: null`)
    yaml.representer.add_representer(
        type(None), lambda rep, _: rep.represent_scalar("tag:yaml.org,2002:null", "null"))
    data = yaml.load(path.read_text(encoding="utf-8"))
    for key, _, value in changes:
        *parents, last = key.split(".")
        node = data
        for part in parents:
            if part not in node:
                node[part] = {}
            node = node[part]
            if not isinstance(node, Mapping):
                raise LqError(f"{path}: cannot write {key}: '{part}' is not a section")
        node[last] = _as_yaml(value, node.get(last))
    out = io.StringIO()
    yaml.dump(data, out)
    write_text(path, out.getvalue())


def _as_yaml(value: Any, old: Any) -> Any:
    """Lists of scalars in flow style (`[1, 2]`), as params.yaml writes them; mappings as given."""
    from ruamel.yaml.comments import CommentedMap, CommentedSeq

    if isinstance(value, list):
        seq = CommentedSeq(_as_yaml(v, None) for v in value)
        if all(not isinstance(v, (list, Mapping)) for v in value):
            seq.fa.set_flow_style()
        return seq
    if isinstance(value, Mapping):
        merged = old if isinstance(old, CommentedMap) else CommentedMap()
        for key in list(merged):
            if key not in value:
                del merged[key]
        for key, item in value.items():
            merged[key] = _as_yaml(item, merged.get(key))
        return merged
    return value
