"""The stage table is the one description: Snakemake and DVC, run on a copy, see the same graph."""

from __future__ import annotations

import re

import pytest

from lq import config as lqconfig
from lq.pipeline import TABLE_PATH, load_table
from tests.conftest import run, set_param

pytestmark = pytest.mark.integration

PARAMS_FILE, STAGES = load_table(TABLE_PATH)
DEFAULT_CELL = {"method": "lifequant", "bits": "w4a4", "quantizer": "proxq", "seed": "0"}


def _snakemake_edges(dot: str) -> set[tuple[str, str]]:
    labels = dict(re.findall(r'^\s*(\d+)\[label = "([^"]+)"', dot, flags=re.M))
    edges = {(labels[a], labels[b]) for a, b in re.findall(r"^\s*(\d+) -> (\d+)", dot, flags=re.M)}
    return {e for e in edges if "all" not in e}


def _dvc_edges(dot: str) -> set[tuple[str, str]]:
    """Edges between stages; a grid stage's cells (`lifelong@ewc-w4a4-proxq-0`) count as the stage."""
    return {(a.split("@")[0], b.split("@")[0]) for a, b in re.findall(r'"([^"]+)" -> "([^"]+)"', dot)}


def test_rulegraph_edges_equal_dvc_dag_edges(project):
    # the default grid runs no self-supervised stage (grid.ssl: []), in either tool
    for ssl in ([], ["ssql"]):
        set_param(project, "grid.ssl", ssl)
        snake = run(["snakemake", "--rulegraph", "--quiet", "all"], project).stdout
        dvc = run(["dvc", "dag", "--dot"], project).stdout
        edges = _snakemake_edges(snake)
        assert edges, "the rule graph has no edges"
        assert edges == _dvc_edges(dvc)
        off = set() if ssl else {"ssl", "ssl_linear"}
        assert {s.name for s in STAGES} - off == {n for e in edges for n in e}


def test_snakemake_lint_is_clean(project):
    out = run(["snakemake", "--lint"], project)
    assert "Congratulations" in out.stdout + out.stderr


def test_each_rule_passes_exactly_its_declared_keys(project):
    """The command of each job carries `--set key=value` for its keys and no others."""
    set_param(project, "grid.ssl", ["ssql"])
    set_param(project, "pretrain.init", "ssql")  # pretrain then tracks ssl.methods.ssql, not .scratch
    config = lqconfig.load(project / "params.yaml")
    out = run(["snakemake", "-n", "-p", "--forceall", "all"], project).stdout
    for stage in STAGES:
        line = next(row for row in out.splitlines() if f"python -m lq {stage.name} " in row)
        assert re.findall(r"--set '?([\w.]+)=", line) == stage.declared_params({**DEFAULT_CELL, "ssl": "ssql"}, config=config)
    assert "ssl.methods.ssql=" in next(row for row in out.splitlines() if "python -m lq pretrain " in row)
