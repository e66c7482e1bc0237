"""The stage table (`workflow/stages.yaml`) and the two views of it: Snakemake rules and dvc.yaml.

Both tools must agree on what each stage runs, reads and writes, so neither file is written by
hand: the Snakefile calls `Stage.snakemake_*` while building its rules, and `dvc.yaml` is
rendered by `render_dvc_yaml` (`python -m lq.pipeline write`; `check` fails on drift).
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from lq import config as lqconfig
from lq.atomic import write_text
from lq.errors import LqError

REPO_ROOT = Path(__file__).resolve().parent.parent
TABLE_PATH = REPO_ROOT / "workflow" / "stages.yaml"
DVC_HEADER = (
    "# GENERATED from workflow/stages.yaml by `python -m lq.pipeline write`: do not edit.\n"
    "# tests/test_pipeline.py fails when this file differs from a fresh generation.\n"
)


@dataclass(frozen=True)
class Stage:
    """One row of the stage table."""

    name: str
    doc: str
    cmd_template: str
    code: tuple[str, ...]
    deps: dict[str, str]
    outs: dict[str, str]
    params: tuple[str, ...]
    metrics: tuple[str, ...] = ()
    plots: tuple[str, ...] = ()
    resources: dict[str, Any] = field(default_factory=dict)

    def outputs(self) -> dict[str, tuple[str, bool]]:
        """Named outputs as (path, is_directory); a trailing '/' in the table marks a directory."""
        return {name: (path.rstrip("/"), path.endswith("/")) for name, path in self.outs.items()}

    def inputs(self) -> dict[str, str]:
        """Named data inputs, without the directory marker."""
        return {name: path.rstrip("/") for name, path in self.deps.items()}

    @property
    def out_paths(self) -> list[str]:
        """Output paths without the directory marker."""
        return [p.rstrip("/") for p in self.outs.values()]

    def command(self, params_file: str = "params.yaml") -> str:
        """The shell command, paths quoted, as DVC runs it."""
        quoted = lambda paths: {k: shlex.quote(v.rstrip("/")) for k, v in paths.items()}  # noqa: E731
        cmd = self.cmd_template.format(deps=quoted(self.deps), outs=quoted(self.outs))
        return f"{cmd} --params {shlex.quote(params_file)}"

    def command_with_values(self, config: Mapping, params_file: str = "params.yaml") -> str:
        """The command plus `--set key=value` for each declared key (Snakemake's view).

        Snakemake may run with `--config` overrides that params.yaml does not hold; passing the
        resolved values makes the step see exactly what Snakemake's params trigger compared.
        """
        sets = [
            "--set " + shlex.quote(f"{key}={json.dumps(lqconfig.get_key(config, key))}")
            for key in self.params
        ]
        return " ".join([self.command(params_file), *sets])

    def dvc_params(self, raw_params: Mapping) -> list[str]:
        """Keys DVC tracks: the declared ones, plus every preset override of them.

        A preset changes a key's effective value, so DVC must see both the switch (`preset`) and
        each preset's value of the key to rerun exactly the stages the switch affects.
        """
        tracked = list(self.params)
        presets = raw_params.get("presets") or {}
        preset_keys = [
            f"presets.{name}.{key}"
            for name in presets
            for key in self.params
            if lqconfig.has_key(presets[name] or {}, key)
        ]
        if preset_keys:
            tracked += ["preset", *preset_keys]
        return tracked


def _as_tuple(value: Any, what: str, stage: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise LqError(f"workflow/stages.yaml: stage '{stage}': '{what}' must be a list of strings")
    return tuple(value)


def load_table(path: Path = TABLE_PATH) -> tuple[str, list[Stage]]:
    """Parse the stage table: (params file name, stages in order)."""
    data = lqconfig.read_yaml(path)
    stages = []
    for name, row in (data.get("stages") or {}).items():
        unknown = set(row) - {"doc", "cmd", "code", "deps", "outs", "params", "metrics", "plots", "resources"}
        if unknown:
            raise LqError(f"{path}: stage '{name}' has unknown fields {sorted(unknown)}")
        stage = Stage(
            name=name,
            doc=row.get("doc", ""),
            cmd_template=row["cmd"],
            code=_as_tuple(row.get("code"), "code", name),
            deps=dict(row.get("deps") or {}),
            outs=dict(row.get("outs") or {}),
            params=_as_tuple(row.get("params"), "params", name),
            metrics=_as_tuple(row.get("metrics"), "metrics", name),
            plots=_as_tuple(row.get("plots"), "plots", name),
            resources=dict(row.get("resources") or {}),
        )
        for extra in (*stage.metrics, *stage.plots):
            if extra not in stage.outs.values():
                raise LqError(f"{path}: stage '{name}': metric/plot '{extra}' is not one of its outs")
        stages.append(stage)
    _check_graph(stages, path)
    return data.get("params_file", "params.yaml"), stages


def _check_graph(stages: list[Stage], path: Path) -> None:
    """Every data dependency is produced by an earlier stage, and no path has two producers."""
    produced: dict[str, str] = {}
    for stage in stages:
        for dep in stage.deps.values():
            if dep not in produced:
                raise LqError(f"{path}: stage '{stage.name}' needs '{dep}', which no earlier stage makes")
        for out in stage.outs.values():
            if out in produced:
                raise LqError(f"{path}: '{out}' is made by both '{produced[out]}' and '{stage.name}'")
            produced[out] = stage.name


def stage_by_name(name: str, path: Path = TABLE_PATH) -> Stage:
    for stage in load_table(path)[1]:
        if stage.name == name:
            return stage
    raise LqError(f"no stage named '{name}' in {path}")


def render_dvc_yaml(stages: list[Stage], params_file: str, raw_params: Mapping,
                    plot_specs: Mapping[str, Any] | None = None) -> str:
    """dvc.yaml for the table: per-key params, code deps, metrics and plots kept in git.

    Metrics and plots are ordinary outputs with `cache: false` (small, diffable, versioned by
    git so `dvc metrics diff main branch` needs no remote), declared again at top level where
    `dvc metrics` and `dvc plots` look for them.
    """
    doc: dict[str, Any] = {"stages": {}}
    for stage in stages:
        special = {*stage.metrics, *stage.plots}
        entry: dict[str, Any] = {
            "desc": stage.doc,
            "cmd": stage.command(params_file),
            "deps": [*stage.code, *stage.inputs().values()],
        }
        params = stage.dvc_params(raw_params)
        if params:
            entry["params"] = params
        entry["outs"] = [{path: {"cache": False}} if raw in special else path
                         for raw, (path, _) in zip(stage.outs.values(), stage.outputs().values())]
        doc["stages"][stage.name] = entry
    metrics = [m for stage in stages for m in stage.metrics]
    if metrics:
        doc["metrics"] = metrics
    plots = [p for stage in stages for p in stage.plots]
    if plots:
        specs = plot_specs or {}
        doc["plots"] = [{p: specs[p]} if specs.get(p) else p for p in plots]
    return DVC_HEADER + yaml.safe_dump(doc, sort_keys=False, width=100)


def generate(root: Path = REPO_ROOT) -> str:
    table = root / "workflow" / "stages.yaml"
    params_file, stages = load_table(table)
    raw = lqconfig.read_yaml(root / params_file)
    return render_dvc_yaml(stages, params_file, raw, lqconfig.read_yaml(table).get("plots"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lq.pipeline", description=__doc__.splitlines()[0])
    parser.add_argument("action", choices=["write", "check"], help="write dvc.yaml, or check it is current")
    parser.add_argument("--root", type=Path, default=Path.cwd(), help="project root (default: here)")
    args = parser.parse_args(argv)
    try:
        fresh = generate(args.root)
    except LqError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    target = args.root / "dvc.yaml"
    if args.action == "write":
        write_text(target, fresh)
        return 0
    if not target.exists() or target.read_text(encoding="utf-8") != fresh:
        print("dvc.yaml is out of date with workflow/stages.yaml: run `python -m lq.pipeline write`", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
