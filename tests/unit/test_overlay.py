"""Overlays written through to params.yaml (lq/overlay.py): which keys differ, and a rewrite that
changes those values and nothing else."""

from __future__ import annotations

import shutil

import yaml

from lq.overlay import MISSING, describe, differences, write_through
from tests.conftest import REPO


def test_differences_are_leaves_with_their_dotted_keys():
    written = {"seed": 1, "lifelong": {"epochs": 10, "milestones": [7], "lr": 0.01}, "grid": {"seed": [0]}}
    effective = {"seed": 1, "lifelong": {"epochs": 1, "milestones": [7], "lr": 0.01}, "grid": {"seed": [0, 1]},
                 "new": {"x": 2}}
    assert differences(written, effective) == [
        ("lifelong.epochs", 10, 1), ("grid.seed", [0], [0, 1]), ("new", MISSING, {"x": 2})]
    assert differences(written, written) == []


def test_a_value_of_another_type_is_a_difference():
    # 2 and 2.0 are different parameters to the schema (an integer key refuses 2.0)
    assert differences({"a": 2, "b": [1], "c": True}, {"a": 2.0, "b": [1.0], "c": 1}) == [
        ("a", 2, 2.0), ("b", [1], [1.0]), ("c", True, 1)]


def test_describe_names_each_key_old_and_new():
    assert describe([("lifelong.epochs", 10, 1), ("data.source", "digits", "folder"), ("x", MISSING, [1])]) == (
        "lifelong.epochs: 10 -> 1, data.source: digits -> folder, x: (unset) -> [1]")


def test_write_through_changes_only_the_overlaid_values_of_the_real_params_file(tmp_path):
    path = tmp_path / "params.yaml"
    shutil.copy(REPO / "params.yaml", path)
    before = path.read_text().splitlines()
    original = yaml.safe_load(path.read_text())
    changes = [("lifelong.epochs", 10, 1), ("lifelong.milestones", [7], [1]),
               ("grid.method", ["lifequant"], ["lifequant", "ewc"]), ("data.source", "digits", "folder")]
    write_through(path, changes)

    after_text = path.read_text()
    after = yaml.safe_load(after_text)
    expected = yaml.safe_load((REPO / "params.yaml").read_text())
    expected["lifelong"]["epochs"], expected["lifelong"]["milestones"] = 1, [1]
    expected["grid"]["method"], expected["data"]["source"] = ["lifequant", "ewc"], "folder"
    assert after == expected and after != original
    # every other line (comments included) is kept byte for byte; lists stay on one line
    changed = [(a, b) for a, b in zip(before, after_text.splitlines()) if a != b]
    assert len(after_text.splitlines()) == len(before)
    assert len(changed) == 4, changed
    assert any(b.strip().startswith("method: [lifequant, ewc]") for _, b in changed), changed
    assert differences(after, expected) == []


def test_write_through_adds_a_missing_section(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text("# top\na: 1  # kept\n")
    write_through(path, [("b.c", MISSING, 2), ("a", 1, 3)])
    assert yaml.safe_load(path.read_text()) == {"a": 3, "b": {"c": 2}}
    assert "# top" in path.read_text() and "# kept" in path.read_text()
