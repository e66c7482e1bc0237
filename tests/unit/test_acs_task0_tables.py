"""workflow/scripts/acs_task0.py (issue 13 item 6): its records file merges runs across invocations
and its tables compare each setting with `full` of the same seed and noise."""

from __future__ import annotations

import importlib.util

from tests.conftest import REPO

spec = importlib.util.spec_from_file_location("acs_task0", REPO / "workflow/scripts/acs_task0.py")
acs_task0 = importlib.util.module_from_spec(spec)
spec.loader.exec_module(acs_task0)


def rec(selector: str, seed: int, accuracy: float, seconds: float, seen: int, noise: float = 0.0,
        fraction: float = 0.1, flipped: int = 0) -> dict:
    rounds = [] if selector == "full" else [{"selected": 10, "pool": 100, "flipped": flipped}] * 2
    return {"selector": selector, "fraction": 1.0 if selector == "full" else fraction, "noise": noise, "epochs": 20,
            "every": 10, "schedule": "paper", "seed": seed, "accuracy": accuracy, "train_seconds": seconds - 1,
            "selection_seconds": 1.0, "images_seen": seen, "rounds": rounds}


def test_records_merge_across_invocations_and_a_rerun_replaces_its_own(tmp_path):
    path = tmp_path / "records.json"
    acs_task0.save(path, [], [rec("full", 0, 0.9, 100, 2000), rec("acs", 0, 0.8, 20, 200)])
    records = acs_task0.save(path, acs_task0.load(path), [rec("acs", 0, 0.7, 22, 200), rec("full", 1, 0.9, 80, 2000)])
    assert sorted((r["selector"], r["seed"], r["accuracy"]) for r in records) == [
        ("acs", 0, 0.7), ("full", 0, 0.9), ("full", 1, 0.9)]
    assert acs_task0.load(path) == records


def test_time_ratio_to_full_of_the_same_seed_and_the_flipped_share():
    records = [rec("full", 0, 0.90, 100, 2000), rec("full", 1, 0.80, 50, 2000),
               rec("acs", 0, 0.80, 20, 200, flipped=2), rec("acs", 1, 0.60, 20, 200, flipped=4),
               rec("random", 0, 0.5, 10, 200),  # seed 0 only
               rec("full", 0, 0.1, 1, 2000, noise=0.2)]  # another noise level: its own table
    text = acs_task0.tables(records, every=10, epochs=20, schedule="paper")
    # acs: ratios 20/100 and 20/50 -> 0.30 ± 0.14; f + 2/(3R) = 0.17 for both, f + k/(3R) 0.10 for
    # random; flipped 2 and 4 of 10 selected per round -> 30 ± 14.14 %
    assert "| acs | 0.1 | 2 | 70.00 ± 14.14 | 0.30 ± 0.14 | 0.17 | 0.17 | 0.10 ± 0.00 | 30.00 ± 14.14 |" in text
    assert "| random | 0.1 | 1 | 50.00 ± 0.00 | 0.10 ± 0.00 | 0.17 | 0.10 | 0.10 ± 0.00 | 0.00 ± 0.00 |" in text
    assert "label noise 0; full (2 seeds [0, 1]): 85.00 ± 7.07 % in 75.0 ± 35.4 s" in text
    assert "label noise 0.2; full (1 seeds [0])" in text
    assert text.count("| selector |") == 2
    # runs of another schedule are not mixed in
    assert "| acs |" not in acs_task0.tables([*records[:2], {**records[2], "schedule": "linear"}], 10, 20, "paper")
