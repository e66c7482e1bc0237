"""The comparison grid: the axes a study varies, and how an axis value becomes parameters.

`params.yaml: grid` lists the values of each axis (methods, bit widths, quantizers, seeds). A
stage in `workflow/stages.yaml` names the axes it depends on; Snakemake turns them into
wildcards and DVC into `matrix` entries, so a stage runs once per combination of *its* axes
(the FP32 model once per seed, never once per method). A stage learns its cell's values as
`--axis name=value`, and `apply` writes them into the parameter keys the axis stands for.

Coreset training (ACS, SPEC 10) is a suffix of a quantizer value, not an axis of its own, so that
the default paths and stage names stay as they are: `proxq+acs10` is ProxQ trained on a 10 %
ACS coreset in qat8 and every lifelong task, `proxq+full` on all data; a bare `proxq` takes
`coreset.selector` and `coreset.fraction` from params.yaml (default: full).
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Callable

from lq.errors import LqError


def _bits(value: str) -> dict[str, Any]:
    weight, act = value[1:].split("a")  # 'w4a8' (Axis.parse has checked the pattern)
    return {"lifelong.weight_bits": int(weight), "lifelong.act_bits": int(act)}


# Axis values that are a training procedure on top of a registered weight quantizer.
PROCEDURES = {"inq": "pow2"}  # INQ: incremental quantize-and-freeze onto power-of-two levels


# The coreset suffix: `+full`, or `+<selector><percent>` with percent an integer 1..100 (f = percent / 100).
# The selectors of lq.train.coreset.SELECTORS (a test keeps the two equal; this module imports no torch).
CORESET_SELECTORS = ("full", "acs", "evs", "ds", "random")
CORESET_SUFFIX = re.compile(r"(full)|(acs|evs|ds|random)(100|[1-9][0-9]?)")
CORESET_FORMS = ("'full', or acs|evs|ds|random followed by a whole percent 1..100 without leading zeros "
                 "(acs10: the top 10 % by ACS score)")


def split_quantizer(value: str) -> tuple[str, str | None]:
    """'proxq+acs10' -> ('proxq', 'acs10'); 'proxq' -> ('proxq', None)."""
    base, sep, suffix = str(value).partition("+")
    return base, (suffix if sep else None)


def base_quantizer(value: str) -> str:
    """The quantizer of an axis value without its coreset suffix: 'proxq+acs10' -> 'proxq'."""
    return split_quantizer(value)[0]


def coreset_of(suffix: str) -> tuple[str, float]:
    """(selector, fraction) of a coreset suffix: 'acs10' -> ('acs', 0.1), 'full' -> ('full', 1.0)."""
    match = CORESET_SUFFIX.fullmatch(suffix)
    if not match:
        raise LqError(f"coreset suffix '{suffix}' is not valid; write {CORESET_FORMS}")
    if match[1]:
        return "full", 1.0
    return match[2], int(match[3]) / 100


def quantizer_problem(value: Any, known: Iterable[str] | None = None) -> str | None:
    """What is wrong with a quantizer axis value, naming the bad part (None: nothing). `known`: the
    quantizer names to accept (the schema's list); without it only the name's form is checked."""
    text = str(value)
    base, suffix = split_quantizer(text)
    where = f"grid.quantizer: '{text}'"
    forms = "write a quantizer, or a quantizer, '+' and a coreset: proxq, proxq+acs10, proxq+random30, proxq+full"
    known = list(known) if known is not None else None
    if not re.fullmatch(r"[a-z][a-z0-9_]*", base) or (known is not None and base not in known):
        names = f" (known: {', '.join(known)})" if known is not None else ""
        return f"{where}: the quantizer part '{base}' is not a quantizer{names}; {forms}"
    if suffix is not None and not CORESET_SUFFIX.fullmatch(suffix):
        return f"{where}: the coreset part '{suffix}' after '+' is not valid; write {CORESET_FORMS}"
    return None


def _quantizer(value: str) -> dict[str, Any]:
    """A quantizer axis value's parameters; a coreset suffix also sets coreset.selector and .fraction."""
    value, suffix = split_quantizer(value)
    coreset = {}
    if suffix is not None:
        selector, fraction = coreset_of(suffix)
        coreset = {"coreset.selector": selector, "coreset.fraction": fraction}
    # A QAT method quantizes weights and activations its own way: LSQ learns both step sizes;
    # ProxQ, DoReFa and pow2 pair their weight quantizer with the uniform clipped activation grid.
    # INQ reaches pow2 levels by its own procedure (lq.train.inq), not straight-through QAT.
    return {"quant.weight_quantizer": PROCEDURES.get(value, value),
            "quant.act_quantizer": "lsq" if value == "lsq" else "uniform",
            "quant.procedure": "inq" if value in PROCEDURES else "qat", **coreset}


@dataclass(frozen=True)
class Axis:
    """One axis: its `grid` key, the wildcard's regex and how a value becomes parameters."""

    name: str
    pattern: str
    example: str
    to_params: Callable[[str], dict[str, Any]]

    def parse(self, value: Any) -> dict[str, Any]:
        text = str(value)
        if self.name == "quantizer" and quantizer_problem(text):
            raise LqError(quantizer_problem(text))
        if not re.fullmatch(self.pattern, text):
            raise LqError(f"grid.{self.name}: '{text}' is not a valid value; expected one like '{self.example}'")
        return self.to_params(text)


# In the order stage names and paths list them: `lifelong@lifequant-w4a4-proxq-0` in DVC.
AXES: dict[str, Axis] = {
    axis.name: axis
    for axis in (
        Axis("method", r"[a-z][a-z0-9_]*", "lifequant", lambda v: {"lifelong.method": v}),
        Axis("bits", r"w\d+a\d+", "w4a4", _bits),
        # A quantizer, optionally '+' and a coreset (the wildcard accepts any suffix of lower-case
        # letters and digits; `quantizer_problem` names what is wrong with a bad one).
        Axis("quantizer", r"[a-z][a-z0-9_]*(?:\+[a-z0-9]+)?", "proxq", _quantizer),
        # Self-supervised pretraining (stages ssl, ssl_linear): scratch | simsiam | ssql. Off by
        # default (`grid.ssl: []`): an empty axis makes no job in Snakemake and no stage in DVC.
        Axis("ssl", r"[a-z][a-z0-9_]*", "ssql", lambda v: {"ssl.method": v}),
        Axis("seed", r"\d+", "0", lambda v: {"train.seed": int(v)}),
    )
}
# The axes of one lifelong run (the cells `evaluate` and `aggregate` go over).
LIFELONG_AXES = ("method", "bits", "quantizer", "seed")


def axis(name: str) -> Axis:
    if name not in AXES:
        raise LqError(f"unknown grid axis '{name}'; known: {', '.join(AXES)}")
    return AXES[name]


def parse_assignments(texts: Iterable[str]) -> dict[str, str]:
    """`['seed=0', 'bits=w4a4']` (the `--axis` options) as {'seed': '0', 'bits': 'w4a4'}."""
    values = {}
    for text in texts:
        name, sep, value = text.partition("=")
        if not sep:
            raise LqError(f"--axis '{text}' must look like name=value, e.g. seed=0")
        axis(name)
        values[name] = value
    return values


def apply(values: Mapping[str, str]) -> list[tuple[str, Any]]:
    """The parameter overrides for one cell's axis values."""
    return [item for name, value in values.items() for item in axis(name).parse(value).items()]


def cells(grid: Mapping[str, list], axes: Iterable[str]) -> list[dict[str, str]]:
    """Every combination of the listed axes' grid values, in grid order."""
    axes = [a for a in AXES if a in set(axes)]
    return [dict(zip(axes, map(str, combo))) for combo in itertools.product(*(grid[a] for a in axes))]


def cell_name(values: Mapping[str, str]) -> str:
    """A file-name-safe label of a cell, axes in canonical order: 'lifequant-w4a4-proxq-seed0'."""
    return "-".join(("seed" if name == "seed" else "") + str(values[name]) for name in AXES if name in values)
