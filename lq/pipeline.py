"""The stage table (`workflow/stages.yaml`) and the two views of it: Snakemake rules and dvc.yaml.

Both tools must agree on what each stage runs, reads and writes, so neither file is written by
hand: the Snakefile builds its rules from `Stage` while loading, and `dvc.yaml` is rendered by
`render_dvc_yaml` (`python -m lq.pipeline write`; `check` fails on drift).

Grid axes (`lq.grid`) appear in paths as `{axis}` placeholders. A placeholder of one of the
stage's own axes is a Snakemake wildcard and a DVC `${item.axis}`; a placeholder of another
axis in a dependency *gathers* over the grid (the aggregate stage reads every run's metrics).
"""

from __future__ import annotations

import argparse
import ast
import copy
import json
import re
import shlex
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import yaml

from lq import config as lqconfig
from lq import grid
from lq.atomic import write_text
from lq.errors import LqError
from lq.manifest import MANIFEST

REPO_ROOT = Path(__file__).resolve().parent.parent
TABLE_PATH = REPO_ROOT / "workflow" / "stages.yaml"
DVC_HEADER = (
    "# GENERATED from workflow/stages.yaml by `python -m lq.pipeline write`: do not edit.\n"
    "# tests/integration/test_pipeline.py fails when this file differs from a fresh generation.\n"
)
LQ_ROOT = REPO_ROOT / "lq"
FIELDS = {"doc", "axes", "deps", "outs", "files", "params", "metrics", "plots", "uncached", "report", "resources"}
# The placeholder of a directory output's file names that runs over the tasks 0..split.num_tasks-1.
TASK = "{task}"


def placeholders(path: str) -> list[str]:
    """The grid axes a path varies over: 'models/seed{seed}/{quantizer}/qat8.pt' -> [seed, quantizer]."""
    return re.findall(r"\{(\w+)\}", path)


# A declared parameter key may name another parameter's value: `ssl.methods.{pretrain.init}` is the
# settings block of the method `pretrain.init` names, so a stage tracks exactly the block it reads
# (Snakemake fills it from the resolved parameters, DVC interpolates `${pretrain.init}`).
PARAM_REF = re.compile(r"(?<!\$)\{([a-z_][a-z0-9_]*(?:\.[a-z_][a-z0-9_]*)+)\}")


def param_refs(key: str) -> list[str]:
    """The parameters a declared key names by value: 'ssl.methods.{pretrain.init}' -> ['pretrain.init']."""
    return PARAM_REF.findall(key)


def fill_refs(key: str, value_of: Callable[[str], Any]) -> str:
    """Replace each `{a.b}` in a declared key by `value_of('a.b')`."""
    return PARAM_REF.sub(lambda m: str(value_of(m[1])), key)


def fill(path: str, values: Mapping[str, str]) -> str:
    """Replace the placeholders named in `values`; leave the others as they are."""
    return re.sub(r"\{(\w+)\}", lambda m: values.get(m[1], m[0]), path)


def fixed_prefix(path: str) -> str:
    """The folder above a path's first placeholder: how DVC depends on a gathered pattern."""
    head = path.split("{", 1)[0]
    return head.rsplit("/", 1)[0] if "/" in head else "."


def module_files(root: Path = LQ_ROOT) -> dict[str, Path]:
    """Every `lq` module's source file ('lq.train.engine' -> lq/train/engine.py), from one walk of
    the package: each stage's closure looks modules up here instead of probing the disk."""
    files: dict[str, Path] = {}
    for path in sorted(root.rglob("*.py")):
        parts = path.relative_to(root.parent).with_suffix("").parts
        package = parts[-1] == "__init__"
        name = ".".join(parts[:-1] if package else parts)
        if not package or name not in files:  # lq/a.py wins over a package lq/a/ of the same name
            files[name] = path
    return files


def _imports(path: Path) -> frozenset[str]:
    """`lq` modules a source file imports, at any depth of the file (lazy imports count)."""
    stat = path.stat()
    return _parsed_imports(path, stat.st_mtime_ns, stat.st_size)


@cache
def _parsed_imports(path: Path, mtime_ns: int, size: int) -> frozenset[str]:
    """`_imports`, parsed once per version of the file: every Snakemake start derives the code
    dependencies of all stages, which share most modules (parsing each anew took 2.7 s)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] == "lq"}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "lq" and not node.level:
            found.add(node.module)
            found |= {f"{node.module}.{a.name}" for a in node.names}  # `from lq.methods import ewc`
    return frozenset(found)


def code_files(step: str, root: Path = LQ_ROOT) -> list[str]:
    """Every `lq` source file the step `lq.steps.<step>` runs: the closure of its imports,
    parent packages included (importing `lq.a.b` runs `lq/a/__init__.py`), relative to the repo."""
    files = module_files(root)
    seen: set[Path] = set()
    todo = [f"lq.steps.{step}", "lq.__main__"]
    while todo:
        module = todo.pop()
        parts = module.split(".")
        for depth in range(1, len(parts) + 1):
            path = files.get(".".join(parts[:depth]))
            if path is None or path in seen:
                continue
            seen.add(path)
            todo += sorted(_imports(path))
    return sorted(str(p.relative_to(root.parent)) for p in seen)


@dataclass(frozen=True)
class Stage:
    """One row of the stage table; `deps` maps a name to the path `sources[name]` produces."""

    name: str
    doc: str
    deps: dict[str, str]
    outs: dict[str, str]
    params: tuple[str, ...]
    sources: dict[str, str] = field(default_factory=dict)  # dep name -> 'stage.output'
    axes: tuple[str, ...] = ()
    metrics: tuple[str, ...] = ()
    plots: tuple[str, ...] = ()
    uncached: tuple[str, ...] = ()  # other outputs kept in git, not in DVC's cache
    report: dict[str, dict[str, str]] = field(default_factory=dict)
    resources: dict[str, Any] = field(default_factory=dict)
    files: dict[str, tuple[str, ...]] = field(default_factory=dict)

    @property
    def code(self) -> tuple[str, ...]:
        return tuple(code_files(self.name))

    def producer(self, dep: str) -> str:
        return self.sources.get(dep, "?").split(".")[0]

    def declared_params(self, cell: Mapping[str, str] | None = None,
                        item: Callable[[str], str] | None = None, config: Mapping | None = None) -> list[str]:
        """The declared keys, with the stage's axes in them filled from `cell` (or by `item`, DVC's
        view, where a parameter reference `{a.b}` becomes `${a.b}`) and parameter references from
        `config` (the resolved parameters)."""
        values = dict(cell or {}) if item is None else {a: item(a) for a in self.axes}
        keys = [fill(key, values) for key in self.params]
        if item is not None:
            return [fill_refs(key, "${{{}}}".format) for key in keys]
        if config is not None:
            return [fill_refs(key, lambda ref: lqconfig.get_key(config, ref)) for key in keys]
        return keys

    def gathered(self, path: str) -> list[str]:
        """Axes a dependency collects over (not the stage's own)."""
        return [a for a in placeholders(path) if a not in self.axes]

    def outputs(self) -> dict[str, tuple[str, bool]]:
        """Named outputs as (path, is_directory); a trailing '/' in the table marks a directory."""
        return {name: (path.rstrip("/"), path.endswith("/")) for name, path in self.outs.items()}

    def inputs(self) -> dict[str, str]:
        """Named data inputs, without the directory marker."""
        return {name: path.rstrip("/") for name, path in self.deps.items()}

    def dir_files(self, name: str, num_tasks: int) -> list[str]:
        """The files a directory output holds, its manifest included: `{task}` runs over the tasks.

        Snakemake declares these files instead of the directory, so it sees a missing one; DVC
        keeps the directory (it hashes what is inside).
        """
        names = [n.replace(TASK, str(t)) for n in self.files[name] for t in (range(num_tasks) if TASK in n else [0])]
        return [*names, MANIFEST]

    @property
    def out_paths(self) -> list[str]:
        """Output paths without the directory marker."""
        return [p.rstrip("/") for p in self.outs.values()]

    def command(self, params_file: str = "params.yaml", item: Callable[[str], str] = "{{{}}}".format) -> str:
        """`python -m lq <stage> --<dep> PATH ... --<out> PATH ...`, paths quoted; `item(axis)` is
        how the tool writes an axis value. Gathered placeholders stay literal (`{seed}`): the step
        expands them over the grid."""
        own = {a: item(a) for a in self.axes}
        paths = [f"--{name} {shlex.quote(fill(path.rstrip('/'), own))}" for name, path in (*self.deps.items(), *self.outs.items())]
        cell = [f"--axis {a}={own[a]}" for a in self.axes]
        return " ".join(["python -m lq", self.name, *paths, "--params", shlex.quote(params_file), *cell])

    def set_options(self, config: Mapping, cell: Mapping[str, str]) -> str:
        """`--set key=value` for each declared key of one cell (Snakemake's view).

        Snakemake may run with `--config` overrides that params.yaml does not hold; passing the
        resolved values makes the step see exactly what Snakemake's params trigger compared.
        """
        return " ".join("--set " + shlex.quote(f"{key}={json.dumps(lqconfig.get_key(config, key))}")
                        for key in self.declared_params(cell, config=config))

    def dvc_params(self, raw_params: Mapping) -> list[str]:
        """Keys DVC tracks: the declared ones, plus every preset override of them.

        A preset changes a key's effective value, so DVC must see both the switch (`preset`) and
        each preset's value of the key to rerun exactly the stages the switch affects.
        """
        tracked = self.declared_params(item=_dvc_item)
        presets = raw_params.get("presets") or {}
        preset_keys = [
            f"presets.{name}.{key}"
            for name in presets
            for key in self.params
            if not placeholders(key) and not param_refs(key) and lqconfig.has_key(presets[name] or {}, key)
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
        unknown = set(row) - FIELDS
        if unknown:
            raise LqError(f"{path}: stage '{name}' has unknown fields {sorted(unknown)}")
        sources = dict(row.get("deps") or {})
        stage = Stage(
            name=name,
            doc=row.get("doc", ""),
            deps={dep: _resolve(source, stages, path, name) for dep, source in sources.items()},
            sources=sources,
            outs=dict(row.get("outs") or {}),
            params=_as_tuple(row.get("params"), "params", name),
            axes=tuple(grid.axis(a).name for a in _as_tuple(row.get("axes"), "axes", name)),
            metrics=_as_tuple(row.get("metrics"), "metrics", name),
            plots=_as_tuple(row.get("plots"), "plots", name),
            uncached=_as_tuple(row.get("uncached"), "uncached", name),
            report=dict(row.get("report") or {}),
            resources=dict(row.get("resources") or {}),
            files={out: _as_tuple(names, f"files.{out}", name) for out, names in (row.get("files") or {}).items()},
        )
        _check_files(stage, path)
        for key in stage.params:
            for ref in param_refs(key):
                if ref not in stage.params:
                    raise LqError(f"{path}: stage '{name}': parameter '{key}' names '{ref}', which the stage must "
                                  "declare too (so a change of it reruns the stage)")
        for extra in (*stage.metrics, *stage.plots, *stage.uncached):
            if extra not in stage.outs.values():
                raise LqError(f"{path}: stage '{name}': metric/plot/uncached '{extra}' is not one of its outs")
        for out_name in stage.report:
            if out_name not in stage.outs:
                raise LqError(f"{path}: stage '{name}': report entry '{out_name}' is not one of its outs")
        stages.append(stage)
    _check_graph(stages, path)
    return data.get("params_file", "params.yaml"), stages


def _resolve(source: str, earlier: list[Stage], path: Path, stage: str) -> str:
    """'pretrain.model' -> the path that stage's output `model` names."""
    producer, _, output = str(source).partition(".")
    for candidate in earlier:
        if candidate.name == producer and output in candidate.outs:
            return candidate.outs[output]
    raise LqError(f"{path}: stage '{stage}' depends on '{source}', which is not an output of an earlier stage "
                  "(write it as <stage>.<output>)")


def _check_files(stage: Stage, path: Path) -> None:
    """Every directory output lists its files (plain names; `{task}` the only placeholder), and
    only directory outputs do."""
    dirs = {name for name, (_, is_dir) in stage.outputs().items() if is_dir}
    if set(stage.files) != dirs:
        raise LqError(f"{path}: stage '{stage.name}': 'files' must list the files of exactly its directory "
                      f"outputs {sorted(dirs)}, got {sorted(stage.files)}")
    for out, names in stage.files.items():
        for file in names:
            if not file or "/" in file or file == MANIFEST or any(c in file.replace(TASK, "") for c in "{}"):
                raise LqError(f"{path}: stage '{stage.name}': file '{file}' of '{out}' must be a plain name "
                              f"(not {MANIFEST}, which every directory output holds) with at most a {TASK} placeholder")


def _check_graph(stages: list[Stage], path: Path) -> None:
    """Every dependency is made by an earlier stage, no path has two producers, and every output
    names all its stage's axes (else two grid cells would write the same file)."""
    produced: dict[str, str] = {}
    for stage in stages:
        for dep in stage.deps.values():
            if dep not in produced:
                raise LqError(f"{path}: stage '{stage.name}' needs '{dep}', which no earlier stage makes")
        for out in stage.outs.values():
            if out in produced:
                raise LqError(f"{path}: '{out}' is made by both '{produced[out]}' and '{stage.name}'")
            if sorted(placeholders(out)) != sorted(stage.axes):
                raise LqError(f"{path}: stage '{stage.name}' runs per {list(stage.axes)}, so its output "
                              f"'{out}' must name exactly those placeholders")
            produced[out] = stage.name


def stage_by_name(name: str, path: Path = TABLE_PATH) -> Stage:
    for stage in load_table(path)[1]:
        if stage.name == name:
            return stage
    raise LqError(f"no stage named '{name}' in {path}")


def _dvc_item(axis: str) -> str:
    return "${item.%s}" % axis


def render_dvc_yaml(stages: list[Stage], params_file: str, raw_params: Mapping,
                    plot_specs: Mapping[str, Any] | None = None) -> str:
    """dvc.yaml for the table: `matrix` stages over grid axes, per-key params, code deps.

    A stage over axes gets `matrix: {axis: ${grid.axis}}`, interpolated by DVC from params.yaml,
    so editing the grid needs no new dvc.yaml. Metrics and plots are stage outputs with
    `cache: false` (small, diffable, versioned by git so `dvc metrics diff main branch` needs no
    remote), and so are `uncached` outputs (plain outs). A gathered dependency is the folder above its pattern (DVC has no globs).
    """
    specs = plot_specs or {}
    doc: dict[str, Any] = {"stages": {}}
    for stage in stages:
        own = {a: _dvc_item(a) for a in stage.axes}
        entry: dict[str, Any] = {"desc": stage.doc}
        if stage.axes:
            entry["matrix"] = {a: "${grid.%s}" % a for a in stage.axes}
        entry["cmd"] = stage.command(params_file, _dvc_item)
        deps = [fixed_prefix(d) if stage.gathered(d) else fill(d, own) for d in stage.inputs().values()]
        entry["deps"] = [*stage.code, *dict.fromkeys(deps)]
        params = stage.dvc_params(raw_params)
        if params:
            entry["params"] = params
        sections: dict[str, list] = {"outs": [], "metrics": [], "plots": []}
        for raw in stage.outs.values():
            path = fill(raw.rstrip("/"), own)
            if raw in stage.metrics or raw in stage.plots:
                spec = copy.deepcopy(specs.get(raw) or {})
                sections["metrics" if raw in stage.metrics else "plots"].append({path: {"cache": False, **spec}})
            elif raw in stage.uncached:
                sections["outs"].append({path: {"cache": False}})
            else:
                sections["outs"].append(path)
        entry.update({name: items for name, items in sections.items() if items})
        doc["stages"][stage.name] = entry
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
