"""The stage table is the one description: dvc.yaml and the Snakefile must agree with it."""

from __future__ import annotations

import re

import pytest
import yaml

from lq import config as lqconfig
from lq.pipeline import TABLE_PATH, generate, load_table
from tests.conftest import REPO, run

PARAMS_FILE, STAGES = load_table(TABLE_PATH)
DEFAULT_CELL = {"method": "lifequant", "bits": "w4a4", "quantizer": "proxq", "seed": "0"}


def test_committed_dvc_yaml_is_a_fresh_generation():
    committed = (REPO / "dvc.yaml").read_text()
    assert committed == generate(REPO), "dvc.yaml is stale: run `python -m lq.pipeline write`"


def test_dvc_params_are_exactly_the_declared_keys_plus_their_preset_overrides():
    dvc = yaml.safe_load((REPO / "dvc.yaml").read_text())
    raw = lqconfig.read_yaml(REPO / "params.yaml")
    methods = lqconfig.resolve(raw)["grid"]["method"]
    for stage in STAGES:
        tracked = dvc["stages"][stage.name].get("params", [])
        base = [k for k in tracked if k != "preset" and not k.startswith("presets.")]
        assert base == stage.declared_params(item="${{item.{}}}".format)
        for key in tracked:
            for method in methods:  # a per-method key is tracked per cell: lifelong.methods.${item.method}
                filled = key.replace("${item.method}", method)
                assert lqconfig.has_key(raw, filled), f"dvc.yaml tracks {filled}, which params.yaml lacks"


def _snakemake_edges(dot: str) -> set[tuple[str, str]]:
    labels = dict(re.findall(r'^\s*(\d+)\[label = "([^"]+)"', dot, flags=re.M))
    edges = {(labels[a], labels[b]) for a, b in re.findall(r"^\s*(\d+) -> (\d+)", dot, flags=re.M)}
    return {e for e in edges if "all" not in e}


def _dvc_edges(dot: str) -> set[tuple[str, str]]:
    """Edges between stages; a grid stage's cells (`lifelong@ewc-w4a4-proxq-0`) count as the stage."""
    return {(a.split("@")[0], b.split("@")[0]) for a, b in re.findall(r'"([^"]+)" -> "([^"]+)"', dot)}


@pytest.mark.integration
def test_rulegraph_edges_equal_dvc_dag_edges(project):
    snake = run(["snakemake", "--rulegraph", "--quiet", "all"], project).stdout
    dvc = run(["dvc", "dag", "--dot"], project).stdout
    edges = _snakemake_edges(snake)
    assert edges, "the rule graph has no edges"
    assert edges == _dvc_edges(dvc)
    assert {s.name for s in STAGES} == {n for e in edges for n in e}


@pytest.mark.integration
def test_snakemake_lint_is_clean(project):
    out = run(["snakemake", "--lint"], project)
    assert "Congratulations" in out.stdout + out.stderr


@pytest.mark.integration
def test_each_rule_passes_exactly_its_declared_keys(project):
    """The command of each job carries `--set key=value` for its keys and no others."""
    out = run(["snakemake", "-n", "-p", "--forceall", "all"], project).stdout
    for stage in STAGES:
        line = next(l for l in out.splitlines() if f"python -m lq {stage.name} " in l)
        assert re.findall(r"--set '?([\w.]+)=", line) == stage.declared_params(DEFAULT_CELL)
