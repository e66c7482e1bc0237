"""The time table beside the comparison (issue 13 item 2): the engine counts what a full-data run
would have trained on; the aggregate's table of seconds, images and shares, on hand-made timing
files; the aggregate step writes it without touching the summary's bytes."""

from __future__ import annotations

import json
import math

import pytest
import torch

from lq import timings
from lq.errors import LqError
from lq.train.coreset import CoresetSettings
from tests.unit.test_coreset import pool, store, train  # noqa: F401 (store: the fixture)


def test_the_engine_counts_the_full_pool_beside_the_images_seen(store, tmp_path, monkeypatch):  # noqa: F811
    monkeypatch.chdir(tmp_path)
    torch.set_num_threads(1)
    engine, _, plugin = train(store, CoresetSettings(selector="random", fraction=0.3, every=2))
    # 5 epochs over a pool of 80: full data would have seen 400 images; the coreset saw its rounds'
    assert engine.timing["pool_images"] == 5 * 80
    assert engine.timing["images_seen"] == 5 * plugin.rounds[0]["selected"] < 0.35 * 400


def timing(seconds: float, selection: float, seen: int, pool_images: int, selector: str = "acs",
           rounds: list[dict] | None = None, **extra) -> dict:
    record = {"train_seconds": seconds, "selection_seconds": selection, "images_seen": seen,
              "pool_images": pool_images, "epochs": 20, "coreset": selector,
              "fraction": 1.0 if selector == "full" else 0.1, "label_noise": 0.2, **extra}
    if selector != "full":
        record.update(every=10, schedule="paper", rounds=rounds or [])
    return record


# 20 epochs over a pool of 100 images, rounds at epochs 0 and 10 keeping 10 (1 and 3 flipped)
ROUNDS = [{"task": 0, "phase": 0, "epoch": 0, "selected": 10, "pool": 100, "flipped": 1},
          {"task": 0, "phase": 0, "epoch": 10, "selected": 10, "pool": 100, "flipped": 3}]


def test_shares_of_full_data_training_and_seconds_over_seeds():
    qat8 = [{**timing(10.0, 2.0, 200, 2000, rounds=ROUNDS), "seed": 0, "quantizer": "proxq"},
            {**timing(14.0, 4.0, 200, 2000, rounds=ROUNDS), "seed": 1, "quantizer": "proxq"}]
    lifelong = [{**timing(30.0, 3.0, 600, 6000, "random", ROUNDS * 3), "seed": s, "method": "finetune",
                 "bits": "w4a4", "quantizer": "proxq", "accuracy": a} for s, a in ((0, 0.5), (1, 0.7))]
    table = timings.timing_table(qat8, lifelong)
    assert list(table["stage"]) == ["qat8", "lifelong"] and list(table.columns) == timings.COLUMNS
    q, ll = table.iloc[0], table.iloc[1]
    assert q["seeds"] == "0 1" and q["train_seconds_mean"] == 12.0 and q["train_seconds_std"] == pytest.approx(2 ** 0.5 * 2)
    assert q["seconds_mean"] == 15.0 and q["selection_seconds_mean"] == 3.0 and math.isnan(q["accuracy_mean"])
    # 200 of 2000 images; ACS scores the pool of 100 twice per round (two passes, 1/3 of a step each):
    # (200 + 2/3 * 200) / 2000 = 1/6 = f + 2/(3R) at f = 0.1, R = 10
    assert q["image_share"] == pytest.approx(0.1) and q["model_share"] == pytest.approx(0.1 + 2 / 30)
    assert q["flipped_share"] == pytest.approx(4 / 20)
    # random scores nothing: its model time is the image share
    assert ll["model_share"] == pytest.approx(0.1) and ll["accuracy_mean"] == pytest.approx(0.6)
    md = timings.markdown_table(table)
    assert "| qat8 | — | — | proxq | 2 | acs f=0.1 R=10 | — | 12.0 ± 2.8 | 3.0 ± 1.4 | 200 | 0.100 | 0.167 | 20.0 |" in md
    assert "| lifelong | finetune | w4a4 | proxq | 2 | random f=0.1 R=10 | 60.00 ± 14.14 |" in md


def test_full_data_is_share_one_and_a_single_seed_has_no_std():
    table = timings.timing_table([{**timing(8.0, 0.0, 2000, 2000, "full"), "seed": 0, "quantizer": "lsq"}], [])
    row = table.iloc[0]
    assert row["image_share"] == 1.0 and row["model_share"] == 1.0 and math.isnan(row["flipped_share"])
    assert math.isnan(row["train_seconds_std"])
    assert "| qat8 | — | — | lsq | 1 | full | — | 8.0 | 0.0 | 2000 | 1.000 | 1.000 | — |" in timings.markdown_table(table)
    # a timing file from before pool_images: a coreset run's full-data count is unknown, not made up
    old = {k: v for k, v in timing(8.0, 1.0, 200, 2000, rounds=ROUNDS).items() if k != "pool_images"}
    assert math.isnan(timings.timing_table([{**old, "seed": 0, "quantizer": "lsq"}], []).iloc[0]["image_share"])


def test_a_missing_timing_file_names_the_run(tmp_path):
    record = {"method": "ewc", "bits": "w4a4", "quantizer": "proxq", "seed": 0, "average_accuracy": 0.5}
    (tmp_path / "seed0/proxq").mkdir(parents=True)
    (tmp_path / "seed0/proxq/qat8.json").write_text(json.dumps(timing(1.0, 0.0, 10, 10, "full")))
    with pytest.raises(LqError, match=r"ewc-w4a4-proxq-seed0 is missing; run its lifelong stage first"):
        timings.read_timings([record], str(tmp_path / "seed{seed}/{quantizer}/{method}-{bits}.json"),
                             str(tmp_path / "seed{seed}/{quantizer}/qat8.json"))


def test_the_aggregate_step_writes_the_time_table_and_keeps_the_summary_bytes(tmp_path, monkeypatch):
    """Seconds differ between runs: results/summary.csv must not move with them, the time table must."""
    from lq.steps import aggregate
    from tests.conftest import REPO
    from tests.unit.test_report import record

    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text((REPO / "params.yaml").read_text())
    cell = tmp_path / "metrics/seed0/proxq"
    cell.mkdir(parents=True)
    (cell / "lifequant-w4a4.json").write_text(json.dumps(record("lifequant", 0, 0.9, 0.02, [1.0, 0.9],
                                                                [[1.0, 0.2], [0.8, 1.0]])))
    (tmp_path / "timings/seed0/proxq").mkdir(parents=True)
    paths = ["--metrics", "metrics/seed{seed}/{quantizer}/{method}-{bits}.json",
             "--timings", "timings/seed{seed}/{quantizer}/{method}-{bits}.json",
             "--qat8_timings", "timings/seed{seed}/{quantizer}/qat8.json", "--params", "params.yaml"]
    outs = {"table": "summary.csv", "markdown": "summary.md", "curve": "average_accuracy.csv",
            "matrices": "accuracy_matrices.png", "accuracy_figure": "average_accuracy.png",
            "forgetting_figure": "forgetting.png", "timings_table": "timings.csv", "timings_markdown": "timings.md"}
    paths += [a for name, file in outs.items() for a in (f"--{name}", f"results/{file}")]
    written = []
    for seconds in (10.0, 11.5):  # two runs of the same training, different seconds
        (tmp_path / "timings/seed0/proxq/qat8.json").write_text(json.dumps(timing(seconds, 0.0, 500, 500, "full")))
        (tmp_path / "timings/seed0/proxq/lifequant-w4a4.json").write_text(
            json.dumps(timing(3 * seconds, 0.0, 900, 900, "full")))
        assert aggregate.main(paths) == 0
        written.append({f: (tmp_path / "results" / f).read_bytes() for f in ("summary.csv", "timings.csv", "timings.md")})
    assert written[0]["summary.csv"] == written[1]["summary.csv"]
    assert written[0]["timings.csv"] != written[1]["timings.csv"]
    md = written[1]["timings.md"].decode()
    assert "| qat8 | — | — | proxq | 1 | full | — | 11.5 |" in md
    assert "| lifelong | lifequant | w4a4 | proxq | 1 | full | 90.00 | 34.5 |" in md


def test_the_time_tables_are_uncached_outputs_of_aggregate_and_the_summary_stays_cached():
    import yaml

    from lq.pipeline import generate

    stage = yaml.safe_load(generate())["stages"]["aggregate"]
    assert {"results/timings.csv": {"cache": False}} in stage["outs"]
    assert {"results/timings.md": {"cache": False}} in stage["outs"]
    assert "results/summary.csv" in stage["outs"] and "timings" in stage["deps"]
