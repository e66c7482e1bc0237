"""INQ (SPEC 9): the partition's hand cases, exact freezing under SGD, resume and the lifelong rule.

The engine tests train a small power-of-two ResNet on a few real digits with momentum and weight
decay, so a frozen weight that is merely masked from the gradient would move.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd
import pytest
import torch

from lq.data.sources import load_digits_store
from lq.data.store import write_store
from lq.errors import LqError
from lq.quant.config import QuantConfig
from lq.quant.functions import pow2_exponent_range
from lq.quant.inq import frozen_count, grow_frozen
from lq.train import checkpoint, spec
from lq.train.engine import Engine, TaskPlan
from lq.train.inq import Inq, InqSettings, pow2_layers
from lq.train.plugin import Phase, Plugin
from lq.train.settings import Runtime, Schedule

W = torch.tensor([0.9, -0.6, 0.3, -0.2, 0.11, -0.05, 0.02, 0.003])
SCHEDULE = Schedule(epochs=9, lr=0.05, milestones=(), gamma=0.1, momentum=0.9, weight_decay=1e-3)
RUNTIME = Runtime(device="cpu", seed=5, batch_size=16)
SETTINGS = InqSettings(portions=(0.5, 0.75, 1.0), epochs_per_phase=2, milestones=(1,))
W4 = QuantConfig(weight_bits=4, act_bits=32, weight_quantizer="pow2")


# --- the partition ------------------------------------------------------------------------------

def test_hand_case_portions_freeze_4_6_7_8_largest_first():
    frozen, sets = torch.zeros(8, dtype=torch.bool), []
    for portion in (0.5, 0.75, 0.875, 1.0):
        frozen = grow_frozen(W, frozen, frozen_count(portion, 8))
        sets.append(W[frozen].tolist())
    assert [len(s) for s in sets] == [4, 6, 7, 8]
    assert sets[0] == W[:4].tolist() and sets[1] == W[:6].tolist() and sets[2] == W[:7].tolist()


def test_counts_round_half_up():
    assert [frozen_count(p, 10) for p in (0.25, 0.35, 0.5, 1.0)] == [3, 4, 5, 10]
    assert frozen_count(0.3, 7) == 2 and frozen_count(1.0, 7) == 7


def test_magnitude_ties_go_to_the_lower_flat_index():
    w = torch.tensor([0.1, 0.5, -0.5, 0.5, 0.2])
    assert grow_frozen(w, torch.zeros(5, dtype=torch.bool), 2).tolist() == [False, True, True, False, False]


def test_random_partition_is_seeded_keeps_the_frozen_and_differs_from_magnitude():
    w = torch.randn(1000, generator=torch.Generator().manual_seed(0))
    start = grow_frozen(w, torch.zeros(1000, dtype=torch.bool), 300)
    draws = [grow_frozen(w, start, 600, "random", torch.Generator().manual_seed(s)) for s in (1, 1, 2)]
    assert torch.equal(draws[0], draws[1]) and not torch.equal(draws[0], draws[2])
    for mask in draws:
        assert int(mask.sum()) == 600 and bool(mask[start].all())
    assert not torch.equal(draws[0], grow_frozen(w, start, 600))


def test_the_frozen_set_never_shrinks():
    with pytest.raises(LqError, match="already holds 4 frozen"):
        grow_frozen(W, grow_frozen(W, torch.zeros(8, dtype=torch.bool), 4), 3)


@pytest.mark.parametrize("settings, words", [
    (dict(portions=(0.5, 0.4, 1.0)), "increase strictly"),
    (dict(portions=(0.5, 0.9)), "end at 1"),
    (dict(portions=(0.0, 1.0)), "within (0, 1]"),
    (dict(partition="smallest"), "allowed: magnitude, random"),
    (dict(epochs_per_phase=2, milestones=(3,)), "within 1..2"),
    (dict(epochs_per_phase=0), ">= 1"),
])
def test_bad_settings_are_named(settings, words):
    with pytest.raises(LqError) as err:
        InqSettings(**settings)
    assert words in str(err.value)


# --- through the engine -------------------------------------------------------------------------

@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    return write_store(load_digits_store(seed=123, test_fraction=0.2), tmp_path_factory.mktemp("d") / "store")


@pytest.fixture(autouse=True)
def one_thread(tmp_path, monkeypatch):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    monkeypatch.chdir(tmp_path)
    yield
    torch.set_num_threads(threads)


def rows(store: Path, n: int = 64) -> pd.DataFrame:
    index = pd.read_csv(store / "index.csv", dtype={"image": str, "split": str})
    return index[index["split"] == "train"].head(n)[["image", "label"]].reset_index(drop=True)


def level_set(layer) -> set[float]:
    n2, n1 = pow2_exponent_range(int(layer.weight_quantizer.top_exponent), layer.weight_quantizer.bits)
    return {0.0, *(s * 2.0**n for n in range(n2, n1 + 1) for s in (1, -1))}


class Watcher(Plugin):
    """Runs after INQ: checks after every step that frozen weights sit bit-identical on their levels."""

    name = "watcher"

    def __init__(self, inq: Inq, stop_at: tuple[int, int, int] | None = None):
        self.inq, self.stop_at = inq, stop_at
        self.snapshot: dict[str, torch.Tensor] = {}
        self.previous: dict[str, torch.Tensor] = {}
        self.steps = self.moved_free = 0
        self.task_starts: list[dict[str, int]] = []
        self.phase = 0

    def before_task(self, ctx):
        self.task_starts.append({name: int(m.sum()) for name, m in self.inq.frozen.items()})
        self.previous = {}

    def before_phase(self, ctx, phase, index):
        self.phase = index
        for name, layer in pow2_layers(ctx.model).items():
            frozen = self.inq.frozen[name]
            if name in self.previous:
                assert bool(frozen[self.previous[name]].all()), "a frozen weight thawed"
            self.previous[name] = frozen.clone()
            self.snapshot[name] = layer.weight.detach().clone()
            assert set(layer.weight[frozen].tolist()) <= level_set(layer)

    def before_epoch(self, ctx, epoch, rows):
        if self.stop_at == (ctx.task, self.phase, epoch):
            raise KeyboardInterrupt("stopped on purpose")

    def after_step(self, model):
        self.steps += 1
        for name, layer in pow2_layers(model).items():
            frozen = self.inq.frozen[name]
            assert torch.equal(layer.weight[frozen], self.snapshot[name][frozen])
            self.moved_free += int((layer.weight[~frozen] != self.snapshot[name][~frozen]).sum())


def train(store: Path, tasks: int = 1, settings: InqSettings = SETTINGS, stop_at=None):
    engine = Engine("inq-test", RUNTIME, store, identity={"k": 1}, inputs=[store])
    model = engine.new_model(engine.model_spec("resnet8"), W4, stage="test")
    inq = Inq(settings, seed=RUNTIME.seed)
    watcher = Watcher(inq, stop_at)
    plans = [TaskPlan(t, rows(store), (Phase("train", SCHEDULE),)) for t in range(tasks)]
    engine.train(model, plans, [inq, watcher])
    return engine, model, inq, watcher


def test_frozen_weights_hold_their_levels_exactly_and_the_model_ends_on_p(store):
    engine, model, inq, watcher = train(store)
    assert watcher.steps == 2 * 2 * 4 and watcher.moved_free > 0  # 2 phases x 2 epochs x 64/16 steps
    assert [r["lr"] for r in engine.history] == pytest.approx([0.05, 0.005, 0.05, 0.005])  # a fresh schedule per phase
    layers = pow2_layers(model)
    assert layers and all(bool(m.all()) for m in inq.frozen.values())
    for layer in layers.values():
        values = set(layer.weight.detach().flatten().tolist())
        assert values <= level_set(layer) and len(values) <= 2 ** (4 - 1) + 1
        assert layer.weight_quantizer.only is None
        assert torch.equal(layer.quantized_weight(), layer.weight)  # an ordinary pow2 model now


def test_an_inq_checkpoint_rebuilds_the_same_model(store, tmp_path):
    engine, model, _, _ = train(store)
    path = tmp_path / "inq.pt"
    checkpoint.save(path, engine.payload(model))
    again, _ = spec.load(path, torch.device("cpu"), {"weight_bits": 4})
    x = torch.rand(5, 1, 8, 8)
    model.eval(), again.eval()
    assert torch.equal(model(x), again(x))


def test_a_run_stopped_mid_phase_resumes_bit_identical(store):
    _, reference, ref_inq, _ = train(store, tasks=2)
    expected = {k: v.clone() for k, v in reference.state_dict().items()}
    shutil.rmtree(".lq-resume")
    with pytest.raises(KeyboardInterrupt):
        train(store, tasks=2, stop_at=(1, 1, 1))  # task 1, second phase, before its second epoch
    _, model, inq, watcher = train(store, tasks=2)
    assert all(torch.equal(expected[k], v) for k, v in model.state_dict().items())
    assert all(torch.equal(ref_inq.frozen[k], inq.frozen[k]) for k in ref_inq.frozen)
    assert watcher.steps == 4  # only the last epoch ran again


def test_each_lifelong_task_unfreezes_keeps_n1_and_runs_the_portions_again(store):
    engine, model, inq, watcher = train(store, tasks=2)
    assert all(count == 0 for count in watcher.task_starts[1].values())  # task 1 starts unfrozen
    assert [r["task"] for r in engine.history] == [0, 0, 0, 0, 1, 1, 1, 1]
    first = checkpoint.load(engine.resume.file("task0.pt"))["model"]
    last = model.state_dict()
    exponents = [k for k in last if k.endswith("top_exponent")]
    assert exponents and all(torch.equal(first[k], last[k]) for k in exponents)


def test_inq_refuses_a_model_without_power_of_two_layers(store):
    engine = Engine("inq-none", RUNTIME, store, identity={}, inputs=[store])
    model = engine.new_model(engine.model_spec("resnet8"), QuantConfig(4, 4), stage="test")  # ProxQ
    with pytest.raises(LqError, match="power-of-two"):
        engine.train(model, [TaskPlan(0, rows(store), (Phase("train", SCHEDULE),))], [Inq(SETTINGS)])
