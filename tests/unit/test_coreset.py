"""ACS coreset selection (SPEC 10): the scores on hand-computed cases, the per-class budget, the
selection rounds inside the engine, label noise, and a SIGKILL inside a round resuming bit-identically."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from lq.data.sources import load_digits_store
from lq.data.store import write_store
from lq.errors import LqError
from lq.train.coreset import (Coreset, CoresetSettings, beta, class_budget, combined_score, disagreement_score,
                              error_vector_score, parse_selector, random_per_class, top_per_class)
from lq.train.data import noisy_labels
from lq.train.engine import Engine, TaskPlan
from lq.train.plugin import Phase
from lq.train.settings import Runtime, Schedule

P_Q = torch.tensor([[0.7, 0.2, 0.1], [0.5, 0.25, 0.25]], dtype=torch.float64)
P_F = torch.tensor([[0.6, 0.3, 0.1], [0.1, 0.8, 0.1]], dtype=torch.float64)
Y = torch.tensor([0, 1])


# --- scores ---------------------------------------------------------------------------------------
def test_spec_hand_cases_for_evs_and_ds():
    assert error_vector_score(P_Q, Y).tolist() == pytest.approx([0.374166, 0.935414], abs=1e-6)
    assert disagreement_score(P_Q, P_F).tolist() == pytest.approx([0.141421, 0.696419], abs=1e-6)


def test_identical_models_give_ds_zero_and_a_correct_one_hot_evs_zero():
    assert disagreement_score(P_Q, P_Q.clone()).tolist() == [0.0, 0.0]
    assert error_vector_score(torch.eye(3, dtype=torch.float64), torch.tensor([0, 1, 2])).tolist() == [0, 0, 0]


def test_combined_score_at_several_epochs():
    evs, ds = error_vector_score(P_Q, Y), disagreement_score(P_Q, P_F)
    # paper: beta(t) = cos(pi t / 2E): all EVS at t = 0, all DS at t = E, cos(pi/4) between
    assert beta("paper", 0, 10) == 1.0 and beta("paper", 10, 10) == pytest.approx(0.0, abs=1e-12)
    assert combined_score(evs, ds, "acs", beta("paper", 0, 10)).tolist() == pytest.approx(evs.tolist())
    assert combined_score(evs, ds, "acs", beta("paper", 10, 10)).tolist() == pytest.approx(ds.tolist())
    assert combined_score(evs, ds, "acs", beta("paper", 5, 10))[0].item() == pytest.approx(0.305996, abs=1e-6)
    # the release's schedules: linear 1 - t/E (0.75 at t = 2 of 8), cosine (1 + cos(pi t/E)) / 2
    assert combined_score(evs, ds, "acs", beta("linear", 2, 8))[1].item() == pytest.approx(0.875665, abs=1e-6)
    assert beta("cosine", 5, 10) == pytest.approx(0.5) and beta("quadratic", 5, 10) == pytest.approx(0.75)
    assert beta("sqrt", 4, 16) == pytest.approx(0.5)
    assert combined_score(evs, ds, "evs", 0.0).tolist() == evs.tolist()
    assert combined_score(evs, ds, "ds", 1.0).tolist() == ds.tolist()
    with pytest.raises(LqError, match="allowed: paper, linear"):
        beta("exp", 1, 2)


# --- budgets and choices --------------------------------------------------------------------------
def test_the_per_class_budget_uses_pythons_rounding_half_to_even():
    assert [class_budget(n, 0.5) for n in (5, 7, 1, 3, 4)] == [2, 4, 0, 2, 2]
    assert class_budget(70, 0.1) == 7 and class_budget(10, 1.0) == 10


def test_top_per_class_keeps_the_highest_scores_of_each_class_ties_to_the_earlier_row():
    scores = torch.tensor([0.1, 0.9, 0.5, 0.5, 0.7, 0.2, 0.8, 0.3])
    labels = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])
    # class 0: 4 rows, budget round(0.5 * 4) = 2: 0.9 (row 1), then the tie 0.5 goes to row 2
    assert top_per_class(scores, labels, 0.5).tolist() == [1, 2, 4, 6]
    assert top_per_class(scores, labels, 0.5, lowest=True).tolist() == [0, 2, 5, 7]
    assert top_per_class(scores, labels, 0.75).tolist() == [1, 2, 3, 4, 6, 7]  # round(3.0) = 3 each


def test_random_keeps_the_same_budget_per_class_and_changes_with_the_seed():
    labels = torch.tensor([0] * 10 + [1] * 5 + [2] * 7)
    picks = [random_per_class(labels, 0.5, torch.Generator().manual_seed(s)) for s in range(4)]
    for pick in picks:
        assert torch.bincount(labels[pick], minlength=3).tolist() == [5, 2, 4]  # round(2.5) = 2, round(3.5) = 4
        assert pick.tolist() == sorted(set(pick.tolist()))
    assert len({tuple(p.tolist()) for p in picks}) > 1


def test_grid_short_forms_parse_and_bad_ones_are_refused():
    assert parse_selector("acs10") == ("acs", 0.1) and parse_selector("full") == ("full", 1.0)
    assert parse_selector("random50") == ("random", 0.5)
    for bad in ("acs", "acs0", "acs101", "kmeans10"):
        with pytest.raises(LqError, match="not valid"):
            parse_selector(bad)
    with pytest.raises(LqError, match="coreset.selector"):
        CoresetSettings(selector="kmeans")
    with pytest.raises(LqError, match="coreset.every"):
        CoresetSettings(selector="acs", every=0)


# --- label noise ----------------------------------------------------------------------------------
def test_label_noise_flips_a_seeded_share_of_training_labels_and_never_test_labels():
    labels = np.arange(40) % 4
    train = np.arange(40) < 30  # rows 30..39 are test rows
    noisy = noisy_labels(labels, train, 4, 0.2, seed=7)
    changed = np.flatnonzero(noisy != labels)
    assert len(changed) == 6 and changed.max() < 30  # round(0.2 * 30), training rows only
    assert np.array_equal(noisy[30:], labels[30:])
    assert np.array_equal(noisy, noisy_labels(labels, train, 4, 0.2, seed=7))  # seeded
    assert not np.array_equal(noisy, noisy_labels(labels, train, 4, 0.2, seed=8))
    assert np.array_equal(noisy_labels(labels, train, 4, 0.0, seed=7), labels)


# --- in the engine --------------------------------------------------------------------------------
RUNTIME = Runtime(device="cpu", seed=3, batch_size=16)
SCHEDULE = Schedule(epochs=5, lr=0.05, milestones=(3,), gamma=0.1, momentum=0.9, weight_decay=1e-4)


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    return write_store(load_digits_store(seed=123, test_fraction=0.2), tmp_path_factory.mktemp("d") / "store")


def pool(store: Path, n: int = 80) -> pd.DataFrame:
    index = pd.read_csv(store / "index.csv", dtype={"image": str, "split": str})
    return index[index["split"] == "train"].head(n)[["image", "label"]].reset_index(drop=True)


def train(store: Path, settings: CoresetSettings, noise: float = 0.0):
    engine = Engine("coreset-test", RUNTIME, store, identity={"k": settings.selector}, inputs=[store])
    engine.add_label_noise(noise, 5)
    model = engine.new_model(engine.model_spec("resnet8"), None, stage="test")
    bank = engine.bank
    plugin = Coreset(settings, seed=RUNTIME.seed, labels=lambda rows: bank.training_labels[rows],
                     batches=lambda rows: engine.eval_batches_of(rows), flipped=engine.flipped)
    engine.train(model, [TaskPlan(0, pool(store), (Phase("train", SCHEDULE),))], [plugin])
    return engine, model, plugin


@pytest.mark.parametrize("selector", ["acs", "random"])
def test_selection_rounds_fall_every_r_epochs_with_the_per_class_budget(store, tmp_path, monkeypatch, selector):
    monkeypatch.chdir(tmp_path)
    torch.set_num_threads(1)
    engine, _, plugin = train(store, CoresetSettings(selector=selector, fraction=0.3, every=2), noise=0.25)
    assert [r["epoch"] for r in plugin.rounds] == [0, 2, 4]
    # classes as training sees them: the (partly flipped) labels, as the release's dataset targets
    labels = engine.bank.training_labels[engine.bank.rows(pool(store))].numpy()
    assert (labels != pool(store)["label"].to_numpy()).any()
    budget = sum(class_budget(int((labels == c).sum()), 0.3) for c in np.unique(labels))
    assert all(r["selected"] == budget and r["pool"] == 80 for r in plugin.rounds)
    assert engine.timing["images_seen"] == 5 * budget and engine.timing["epochs"] == 5
    assert all(0 <= r["flipped"] <= budget for r in plugin.rounds) and any(r["flipped"] for r in plugin.rounds)


def test_a_share_that_keeps_nothing_is_an_error(store, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(LqError, match="keeps no sample of task 0"):
        train(store, CoresetSettings(selector="random", fraction=0.01, every=2))  # round(0.01 * ~8) = 0


KILL_SCRIPT = textwrap.dedent("""
    import sys, torch
    sys.path.insert(0, {root!r})
    from tests.unit.test_coreset import train, CoresetSettings
    from pathlib import Path
    torch.set_num_threads(1)
    _, model, plugin = train(Path(sys.argv[1]), CoresetSettings(selector="acs", fraction=0.3, every=2))
    torch.save({{"model": model.state_dict(), "rounds": plugin.rounds}}, sys.argv[2])
""")


def test_a_sigkill_inside_a_round_resumes_bit_identical(store, tmp_path):
    script = tmp_path / "run.py"
    script.write_text(KILL_SCRIPT.format(root=str(Path(__file__).resolve().parents[2])))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}

    def run(folder: str, kill: str | None) -> subprocess.CompletedProcess:
        (tmp_path / folder).mkdir(exist_ok=True)
        extra = {"LQ_TEST_KILL_AFTER": kill} if kill else {}
        return subprocess.run([sys.executable, str(script), str(store), str(tmp_path / f"{folder}.pt")],
                              cwd=tmp_path / folder, env={**env, **extra}, capture_output=True, text=True)

    assert run("reference", None).returncode == 0
    killed = run("resumed", "0:3:1")  # task 0, epoch 3 (inside the round chosen at epoch 2), step 1
    assert killed.returncode == -9, killed.stderr[-2000:]
    assert run("resumed", None).returncode == 0
    reference, resumed = (torch.load(tmp_path / f"{n}.pt", weights_only=True) for n in ("reference", "resumed"))
    assert resumed["rounds"] == reference["rounds"]
    assert all(torch.equal(reference["model"][k], v) for k, v in resumed["model"].items())


# --- scored replay --------------------------------------------------------------------------------
class Logits:
    """Eval 'batches' whose images are the logits themselves (the model is the identity)."""

    def __init__(self, logits: torch.Tensor):
        self.logits = logits

    def epoch(self, seed=0):
        yield self.logits, torch.zeros(len(self.logits), dtype=torch.int64)


class Fixed(torch.nn.Module):
    def __init__(self, out: torch.Tensor):
        super().__init__()
        self.out = out

    def forward(self, x):
        return self.out


def scored(selection: str, logits: torch.Tensor, labels: list[int], reference: torch.Tensor | None = None):
    from lq.train.plugin import TaskContext
    from lq.train.replay_selection import ScoredReplay

    table = pd.DataFrame({"image": [f"train/c/{i}" for i in range(len(labels))], "label": labels})
    plugin = ScoredReplay(selection, 0.5, [table], rows=lambda t: torch.arange(len(t)),
                          labels=lambda rows: torch.tensor(labels)[rows], batches=lambda rows: Logits(logits))
    ctx = TaskContext(task=0, model=torch.nn.Identity(), device=torch.device("cpu"))
    plugin.before_task(ctx)
    if reference is not None:  # the model the task started from gave these logits
        plugin.reference = Fixed(reference)
    plugin.after_task(ctx)
    return plugin


def test_scored_replay_keeps_the_top_and_the_control_the_bottom_per_class():
    big = 20.0  # logits this far apart give near one-hot softmax outputs
    logits = torch.tensor([[big, 0, 0], [0, big, 0], [big, 0, 0], [0, 0, big],    # class 0: rows 0..3
                           [0, big, 0], [big, 0, 0], [0, big, 0], [0, big, 0]])   # class 1: rows 4..7
    labels = [0, 0, 0, 0, 1, 1, 1, 1]
    plugin = scored("evs", logits, labels)
    # EVS ~ sqrt(2) for the wrong predictions (rows 1, 3 of class 0; row 5 of class 1), ~0 otherwise;
    # budget round(0.5 * 4) = 2 per class, ties to the earlier row
    assert plugin.positions["0"].tolist() == [1, 3, 4, 5]
    assert plugin.chosen(0)["image"].tolist() == ["train/c/1", "train/c/3", "train/c/4", "train/c/5"]
    low = scored("acs_low", logits, labels)  # identical reference at the task start: DS = 0, EVS decides
    assert low.positions["0"].tolist() == [0, 2, 4, 6]  # the two right ones per class, earlier rows first
    state = plugin.state_dict()
    again = scored("evs", torch.zeros(8, 3), labels)
    again.load_state_dict(state)
    assert again.positions["0"].tolist() == [1, 3, 4, 5]


def test_scored_replay_ds_compares_with_the_model_the_task_started_from():
    logits = torch.zeros(4, 2)
    reference = torch.tensor([[0.0, 0], [9, 0], [0, 9], [0, 0]])  # rows 1, 2 disagree with the uniform output
    plugin = scored("ds", logits, [0, 0, 1, 1], reference=reference)
    assert plugin.positions["0"].tolist() == [1, 2]
    with pytest.raises(LqError, match="not a scored selection"):
        scored("random", logits, [0, 0, 1, 1])
