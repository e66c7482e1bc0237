"""The stage table: dependencies name stage outputs, steps' options and code come from it."""

from __future__ import annotations

from pathlib import Path

import pytest

from lq.errors import LqError
from lq.pipeline import code_files, load_table
from lq.steps import parser_for

_, STAGES = load_table()
BY_NAME = {s.name: s for s in STAGES}


def test_a_dependency_is_the_path_of_the_stage_output_it_names():
    lifelong = BY_NAME["lifelong"]
    assert lifelong.sources["init"] == "qat8.model"
    assert lifelong.deps["init"] == BY_NAME["qat8"].outs["model"]
    assert lifelong.deps["counts"] == BY_NAME["count"].outs["counts"]
    assert BY_NAME["aggregate"].deps["metrics"] == BY_NAME["evaluate"].outs["metrics"]


def test_a_dependency_on_an_unknown_output_is_refused(tmp_path: Path):
    table = tmp_path / "stages.yaml"
    table.write_text("stages:\n  a:\n    outs: {x: a.txt}\n  b:\n    deps: {x: a.y}\n    outs: {z: b.txt}\n")
    with pytest.raises(LqError, match="'b' depends on 'a.y', which is not an output of an earlier stage"):
        load_table(table)


@pytest.mark.parametrize("stage", [s.name for s in STAGES])
def test_each_step_takes_exactly_its_table_rows_paths(stage):
    row = BY_NAME[stage]
    options = {a.dest for a in parser_for(row, None)._actions} - {"help", "params", "overrides", "axes"}
    assert options == set(row.deps) | set(row.outs)


def test_code_dependencies_follow_the_imports():
    lifelong = code_files("lifelong")
    # the engine, the data path and every registered method run in the lifelong stage
    for path in ("lq/steps/lifelong.py", "lq/train/engine.py", "lq/train/data.py", "lq/data/store.py",
                 "lq/methods/ewc.py", "lq/quant/functions.py", "lq/lifelong/ball.py", "lq/methods/__init__.py"):
        assert path in lifelong, path
    split = code_files("split")
    assert "lq/tasks.py" in split and "lq/train/engine.py" not in split and "lq/methods/base.py" not in split
    assert "lq/train/engine.py" not in code_files("evaluate")  # evaluation never trains


def test_code_dependencies_see_a_new_import(tmp_path: Path):
    """A step that starts importing a module depends on it at once (no hand-kept list)."""
    root = tmp_path / "lq"
    (root / "steps").mkdir(parents=True)
    for init in (root / "__init__.py", root / "steps" / "__init__.py", root / "__main__.py"):
        init.write_text("")
    (root / "steps" / "x.py").write_text("from lq import helper\n")
    (root / "helper.py").write_text("def f():\n    import lq.lazy\n")
    (root / "lazy.py").write_text("")
    (root / "other.py").write_text("")
    assert code_files("x", root) == ["lq/__init__.py", "lq/__main__.py", "lq/helper.py", "lq/lazy.py",
                                     "lq/steps/__init__.py", "lq/steps/x.py"]
