"""bench/run.py's report bookkeeping: a subset run keeps the other sections and the notes."""

import importlib.util
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def bench_run():
    spec = importlib.util.spec_from_file_location("bench_run", REPO / "bench" / "run.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_a_peers_run_keeps_the_other_sections_and_their_date():
    run = bench_run()
    old = {"machine": {"cpu": "old"}, "when": "then", "data": {"ratio": 12.5}, "step": {"ratio": 1.29},
           "peers": {"stale": True}}
    new = {"machine": {"cpu": "new"}, "when": "now", "peers": {"fresh": True}}
    out = run.merged(new, ["peers"], old)
    assert out["data"] == {"ratio": 12.5, "when": "then"} and out["step"] == {"ratio": 1.29, "when": "then"}
    assert out["peers"] == {"fresh": True}
    assert (out["machine"], out["when"]) == ({"cpu": "old"}, "then")  # the main table's own date


def test_a_full_run_replaces_everything():
    run = bench_run()
    old = {"machine": {"cpu": "old"}, "when": "then", "data": {"ratio": 1.0}}
    new = {"machine": {"cpu": "new"}, "when": "now", "data": {"ratio": 2.0}, "peers": {}}
    out = run.merged(new, list(run.SECTIONS), old)
    assert out == {**new, "data": {"ratio": 2.0, "when": "now"}}
    assert run.measured_line(out) == "Measured now with `python bench/run.py` (all figures from one run)."


def test_a_subset_run_dates_each_row_of_the_main_table():
    run = bench_run()
    old = {"machine": {"cpu": "m"}, "when": "monday", "data": {"ratio": 12.5}, "step": {"ratio": 1.29, "when": "sunday"}}
    new = {"machine": {"cpu": "m"}, "when": "tuesday", "step": {"ratio": 1.23}}
    out = run.merged(new, ["step"], old)
    assert out["step"] == {"ratio": 1.23, "when": "tuesday"} and out["data"]["when"] == "monday"
    line = run.measured_line(out)
    assert "all figures from one run" not in line and "data monday" in line and "step tuesday" in line


def test_notes_are_kept_up_to_the_next_section():
    run = bench_run()
    text = "# t\n\n| a |\n\nNotes (same machine):\n- one\n- two\n\n## Peers\n\nold peers table\n"
    assert run.notes(text) == ["", "Notes (same machine):", "- one", "- two", ""]
    assert run.notes("# t\n| a |\n") == []
