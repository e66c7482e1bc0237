"""ACS through Snakemake: a coreset in qat8 and every lifelong task, and scored replay (issue 13).

One run on a clone of `trained_upstream` (FP32 and w8a8 made, the short lifelong setting): ACS at
f = 0.3 with a round every epoch and ACS-scored replay reruns qat8 (it tracks coreset.*) and the
lifelong chain, never pretrain; the timing files, the aggregate's time table and the replay sets the
run used are checked.
"""

from __future__ import annotations

import json

import pandas as pd
import pytest

from tests.conftest import job_stats, run, set_param
from tests.integration.conftest import LONG, clone, in_background

pytestmark = pytest.mark.integration

CELL = "seed0/proxq/lifequant-w4a4"


@in_background
def test_acs_coreset_and_scored_replay_run_through_snakemake(tmp_path, trained_upstream):
    root = clone(trained_upstream, tmp_path / "repo")
    for key, value in {"coreset.selector": "acs", "coreset.fraction": 0.3, "coreset.every": 1,
                       "replay.selection": "acs", "qat8.epochs": 2, "qat8.milestones": []}.items():
        set_param(root, key, value)
    out = run(["snakemake", "--cores", "1", "all"], root, timeout=LONG)
    assert job_stats(out.stdout + out.stderr) == {"qat8": 1, "lifelong": 1, "evaluate": 1, "aggregate": 1, "ptq": 1, "ptq_lifelong": 1, "all": 1}

    qat8 = json.loads((root / "timings/seed0/proxq/qat8.json").read_text())
    assert qat8["coreset"] == "acs" and qat8["epochs"] == 2 and [r["epoch"] for r in qat8["rounds"]] == [0, 1]
    rounds = qat8["rounds"]
    assert qat8["images_seen"] == sum(r["selected"] for r in rounds) and rounds[0]["selected"] < 0.35 * rounds[0]["pool"]
    assert qat8["train_seconds"] > 0 and qat8["selection_seconds"] > 0
    lifelong = json.loads((root / f"timings/{CELL}.json").read_text())
    assert lifelong["replay_selection"] == "acs" and {r["task"] for r in lifelong["rounds"]} == {0, 1, 2}
    assert lifelong["pool_images"] == sum(r["pool"] for r in lifelong["rounds"])  # a round every epoch

    # the aggregate's time table: both stages, their seconds and shares of full-data training
    table = pd.read_csv(root / "results/timings.csv").set_index("stage")
    assert table.loc["qat8", "coreset"] == "acs" and table.loc["qat8", "images_seen"] == qat8["images_seen"]
    assert table.loc["qat8", "image_share"] == pytest.approx(qat8["images_seen"] / qat8["pool_images"], abs=1e-5)
    assert table.loc["lifelong", "train_seconds_mean"] == pytest.approx(lifelong["train_seconds"], rel=1e-5)
    assert 0 < table.loc["lifelong", "image_share"] < 0.35 < table.loc["lifelong", "model_share"] < 1
    assert "| lifelong | lifequant | w4a4 | proxq | 1 | acs f=0.3 R=1 |" in (root / "results/timings.md").read_text()

    # the replay sets the run used: per class round(0.2 * n_c) of train_t, chosen by score, not the
    # replay stage's random sample; the BaLL weights of task 1 describe the pool they made
    used = root / f"data/replay_used/{CELL}"
    for t in range(3):
        train = pd.read_csv(root / f"data/split/train{t}.csv")
        chosen = pd.read_csv(used / f"replay{t}.csv")
        assert set(chosen["image"]) <= set(train["image"])
        want = {c: int(round(0.2 * n)) for c, n in train["label"].value_counts().items()}
        assert chosen["label"].value_counts().to_dict() == want
    assert set(pd.read_csv(used / "replay0.csv")["image"]) != set(pd.read_csv(root / "data/replay/replay0.csv")["image"])
    weights = json.loads((used / "reweight1.json").read_text())
    assert weights != json.loads((root / "data/counts/lifequant/reweight1.json").read_text())
    assert json.loads((root / f"metrics/{CELL}.json").read_text())["average_accuracy"] > 0
