"""Load, resolve and validate `params.yaml`.

Parameters live in one file. A preset (`preset: paper`) overlays `presets.<name>` on the top-level
values, so the paper configuration is one switch away. Command-line overrides (`--set key=value`,
used by the Snakefile to pass each rule exactly its resolved keys) come next, and a grid cell's axis
values (`--axis seed=0`, see `lq.grid`) last. The result is checked
against `workflow/schemas/params.schema.yaml`, and a rejected value is reported with its key, its
value and what is allowed, before any work starts.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterable, Mapping
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from lq import checks, grid
from lq.errors import LqError

# libyaml's loader where PyYAML has it (its wheels do): the same documents, several times faster,
# and every Snakemake start reads params.yaml, the schema and the stage table.
SafeLoader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

REPO_ROOT = Path(__file__).resolve().parent.parent
SCHEMA_PATH = REPO_ROOT / "workflow" / "schemas" / "params.schema.yaml"


@cache
def load_schema(path: Path = SCHEMA_PATH) -> dict:
    """The params JSON schema (YAML on disk)."""
    return yaml.load(path.read_text(encoding="utf-8"), Loader=SafeLoader)


def read_yaml(path: str | Path) -> dict:
    """Read a YAML mapping, turning syntax errors into messages with the file name."""
    path = Path(path)
    try:
        data = yaml.load(path.read_text(encoding="utf-8"), Loader=SafeLoader)
    except FileNotFoundError:
        raise LqError(f"{path}: parameter file not found") from None
    except yaml.YAMLError as exc:
        raise LqError(yaml_error_message(path, exc)) from None
    if not isinstance(data, dict):
        raise LqError(f"{path}: expected a mapping of parameters, got {type(data).__name__}")
    return data


def check_params_file(path: str | Path, error: type[Exception] = LqError) -> None:
    """Read `path` once so a YAML mistake is reported as file:line:column, raised as `error`.

    The Snakefile calls this (with Snakemake's WorkflowError) before Snakemake's own loader,
    whose message names neither the line nor the column.
    """
    try:
        read_yaml(path)
    except LqError as exc:
        raise error(str(exc)) from None


def yaml_error_message(path: str | Path, exc: yaml.YAMLError) -> str:
    """'file:line:column: not valid YAML: what' (1-based, where the parser stopped), as compilers say it."""
    mark, opened = getattr(exc, "problem_mark", None), getattr(exc, "context_mark", None)
    mark = mark or opened
    where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark is not None else str(path)
    context, problem = getattr(exc, "context", None), getattr(exc, "problem", None)
    if context and opened is not None and opened is not mark:
        context = f"{context} (opened at {opened.line + 1}:{opened.column + 1})"
    what = ", ".join(filter(None, [context, problem])) or str(exc)
    return f"{where}: not valid YAML: {what}"


def typed_cli_values(cli_config: Mapping, prefix: str = "") -> list[tuple[str, Any]]:
    """Snakemake `--config` values as 'a.b' keys with YAML types: ('lifelong.epochs', 1), ...

    Snakemake parses a nested `--config 'lifelong={epochs: 1}'` with YAML's BaseLoader, which
    keeps every scalar a string ('1'); this re-reads each string the way `--set` does, so the
    nested form works. (A dotted key, `--config lifelong.epochs=1`, never gets here: Snakemake's
    command line refuses it before reading the workflow.)
    """
    pairs: list[tuple[str, Any]] = []
    for key, value in cli_config.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            pairs.extend(typed_cli_values(value, f"{name}."))
        else:
            pairs.append((name, _typed(value)))
    return pairs


def _typed(value: Any) -> Any:
    if isinstance(value, list):
        return [_typed(v) for v in value]
    if not isinstance(value, str):
        return value
    try:
        return yaml.safe_load(value)
    except yaml.YAMLError:
        return value


def get_key(config: Mapping, key: str) -> Any:
    """`config['a']['b']` for key 'a.b'."""
    node: Any = config
    for part in key.split("."):
        if not isinstance(node, Mapping) or part not in node:
            raise LqError(f"parameter '{key}' is missing from params.yaml")
        node = node[part]
    return node


def has_key(config: Mapping, key: str) -> bool:
    try:
        get_key(config, key)
    except LqError:
        return False
    return True


def set_key(config: dict, key: str, value: Any) -> None:
    """Set 'a.b' in a nested dict, creating intermediate mappings."""
    *parents, last = key.split(".")
    node = config
    for part in parents:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise LqError(f"cannot set '{key}': '{part}' is not a section")
    node[last] = value


def deep_merge(base: dict, override: Mapping) -> dict:
    """A copy of `base` with `override` merged in; nested mappings merge, everything else replaces."""
    merged = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def parse_override(text: str) -> tuple[str, Any]:
    """'a.b=VALUE' with VALUE in YAML syntax (so 3, 0.25, true, [10, 20] and strings all work)."""
    key, sep, raw = text.partition("=")
    if not sep or not key:
        raise LqError(f"override '{text}' must look like key=value, e.g. split.num_tasks=3")
    try:
        return key.strip(), yaml.safe_load(raw)
    except yaml.YAMLError as exc:
        raise LqError(f"override '{text}': value is not valid YAML: {exc}") from None


def resolve(raw: Mapping, overrides: Iterable[tuple[str, Any]] = (), axes: Mapping[str, str] | None = None) -> dict:
    """Apply the selected preset, then the overrides, then one grid cell's axis values; validate."""
    config = dict(raw)
    overrides = list(overrides)
    preset = dict(overrides).get("preset", config.get("preset"))
    presets = config.get("presets") or {}
    if preset not in presets:
        raise LqError(
            f"params.yaml: preset = {preset!r} is not defined; allowed: {sorted(presets)} "
            "(add it under `presets:`)"
        )
    config = deep_merge(config, presets[preset] or {})
    for key, value in overrides:
        set_key(config, key, value)
    for key, value in grid.apply(axes or {}):
        set_key(config, key, value)
    validate(config)
    checks.check_config(config)
    return config


def _describe(error: jsonschema.ValidationError) -> str:
    key = ".".join(str(p) for p in error.absolute_path) or "(top level)"
    path = list(error.absolute_path)
    if path[:2] == ["grid", "quantizer"] and len(path) == 3 and error.validator == "anyOf":
        if "+" in str(error.instance):
            # a coreset suffix: name the bad part (the quantizer or the coreset) and the allowed forms
            problem = grid.quantizer_problem(error.instance, load_schema()["$defs"]["quantizer"]["enum"])
            if problem:
                return problem
        plain = [e for e in error.context if e.relative_schema_path and e.relative_schema_path[0] == 0]
        if plain:  # a plain name: the quantizer list's own message
            return _describe(plain[0])
    hint = error.schema.get("description") if isinstance(error.schema, dict) else None
    if _is_float_for_integer(error):
        allowed = f"; allowed: {hint}" if hint else ""
        return (f"{key} = {error.instance!r} is invalid: write a whole number without a decimal point "
                f"({int(error.instance)}, not {error.instance!r}){allowed}")
    if error.validator == "required":
        return f"{key}: {error.message} (params.yaml must set every parameter)"
    if error.validator == "additionalProperties":
        allowed = sorted((error.schema.get("properties") or {}) if isinstance(error.schema, dict) else {})
        extra = sorted(set(error.instance) - set(allowed)) if isinstance(error.instance, dict) else []
        names = ", ".join(f"{key}.{name}" if key != "(top level)" else name for name in extra)
        return (f"{names or key}: unknown key (check the spelling against params.yaml); "
                f"allowed here: {', '.join(allowed) or 'nothing'}")
    value = json.dumps(error.instance) if not isinstance(error.instance, dict) else "a mapping"
    allowed = f"; allowed: {hint}" if hint else ""
    return f"{key} = {value} is invalid: {error.message}{allowed}"


def _strict_integer(checker: Any, instance: Any) -> bool:
    """JSON Schema counts 2.0 as an integer; lq does not: the steps need an int (range(2.0) fails)."""
    return isinstance(instance, int) and not isinstance(instance, bool)


# The schema's validator with `type: integer` refusing floats such as `epochs: 2.0`.
StrictValidator = jsonschema.validators.extend(
    jsonschema.Draft202012Validator,
    type_checker=jsonschema.Draft202012Validator.TYPE_CHECKER.redefine("integer", _strict_integer),
)


def _is_float_for_integer(error: jsonschema.ValidationError) -> bool:
    wanted = error.validator_value if error.validator == "type" else None
    wanted = wanted if isinstance(wanted, list) else [wanted]
    return "integer" in wanted and isinstance(error.instance, float) and error.instance.is_integer()


def validate(config: Mapping, schema: Mapping | None = None) -> None:
    """Raise LqError listing every invalid key (all of them, not just the first)."""
    validator = StrictValidator(schema or load_schema())
    errors = sorted(validator.iter_errors(config), key=lambda e: list(map(str, e.absolute_path)))
    if errors:
        raise LqError("invalid parameters:\n  " + "\n  ".join(_describe(e) for e in errors))


def validate_all_presets(raw: Mapping) -> None:
    """Check every preset resolves to a valid configuration, so a typo in `paper` fails early."""
    for name in raw.get("presets") or {}:
        try:
            resolve(raw, [("preset", name)])
        except LqError as exc:
            raise LqError(f"preset '{name}': {exc}") from None


def load(path: str | Path = "params.yaml", overrides: Iterable[str] = (), axes: Mapping[str, str] | None = None) -> dict:
    """Read, resolve and validate a params file; `overrides` are 'key=value' strings."""
    return resolve(read_yaml(path), [parse_override(o) for o in overrides], axes)


class StageParams(Mapping):
    """The read-only view of the parameters one stage declared in the stage table.

    Reading an undeclared key raises, so a stage cannot depend on a parameter that Snakemake and
    DVC do not track for it (which would make them skip a rerun that is needed).
    """

    def __init__(self, config: Mapping, keys: Iterable[str], stage: str, cell: Mapping[str, str] | None = None):
        self._stage = stage
        self.cell = dict(cell or {})
        cell_keys = [key for key, _ in grid.apply(self.cell)]
        self._values = {key: copy.deepcopy(get_key(config, key)) for key in (*keys, *cell_keys)}

    def __getitem__(self, key: str) -> Any:
        if key not in self._values:
            raise KeyError(
                f"stage '{self._stage}' read '{key}' but does not declare it in "
                "workflow/stages.yaml; add it to the stage's params"
            )
        return self._values[key]

    def __iter__(self):
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    @property
    def run_name(self) -> str:
        """The stage and its grid cell, e.g. 'lifelong-lifequant-w4a4-proxq-seed0' (logs, resume)."""
        return "-".join(filter(None, [self._stage, grid.cell_name(self.cell)]))

    def section(self, prefix: str) -> dict[str, Any]:
        """The declared keys under 'prefix.' as a flat dict without the prefix."""
        return {k[len(prefix) + 1 :]: v for k, v in self._values.items() if k.startswith(prefix + ".")}
