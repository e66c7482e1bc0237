"""The training engine's events, phases and resume, on a few real digits and a small ResNet.

A recording plugin splits a task into two phases with its own optimizer in the second, replaces
the epoch's rows, draws a second view for its loss and projects weights after each step: the
hooks INQ, ACS and SSQL need. Resume is checked by stopping a run mid-phase (an exception, which
leaves the resume folder as a SIGKILL does) and training again with a new engine.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from lq.data.sources import load_digits_store
from lq.data.store import write_store
from lq.train import checkpoint, spec
from lq.train.engine import Engine, TaskPlan
from lq.train.plugin import Batch, Optimization, Phase, Plugin, StepLoss, TaskContext
from lq.train.settings import Runtime, Schedule

SCHEDULE = Schedule(epochs=2, lr=0.05, milestones=(1,), gamma=0.1, momentum=0.9, weight_decay=1e-4)
RUNTIME = Runtime(device="cpu", seed=3, batch_size=16)


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    return write_store(load_digits_store(seed=123, test_fraction=0.2), tmp_path_factory.mktemp("d") / "store")


@pytest.fixture(autouse=True)
def one_thread(tmp_path, monkeypatch):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    monkeypatch.chdir(tmp_path)  # the resume folder and TensorBoard runs land here
    yield
    torch.set_num_threads(threads)


def table(store: Path, n: int) -> pd.DataFrame:
    index = pd.read_csv(store / "index.csv", dtype={"image": str, "split": str})
    return index[index["split"] == "train"].head(n)[["image", "label"]].reset_index(drop=True)


class Recorder(Plugin):
    """Every hook a coming method needs, with its calls recorded (state survives a resume)."""

    name = "recorder"

    def __init__(self, stop_at: tuple[int, int, int] | None = None):
        self.calls: list[str] = []
        self.stop_at, self.steps = stop_at, 0
        self.prepared: list[int] = []

    def phases(self, ctx, default):
        half = Schedule(**{**default[0].schedule.__dict__, "epochs": 1})
        return [Phase("first", default[0].schedule), Phase("second", half)]

    def before_task(self, ctx: TaskContext) -> None:
        self.calls.append(f"task{ctx.task}")
        self.prepared = []

    def before_phase(self, ctx, phase, index):
        self.calls.append(f"phase{index}")
        if index in self.prepared:  # restored state: this phase was set up before the interruption
            self.calls.append("phase-already-prepared")
        self.prepared.append(index)
        if index == 1:  # a fresh optimizer without momentum, as INQ's portions need
            optimizer = torch.optim.SGD(ctx.model.parameters(), lr=0.01)
            return Optimization(optimizer, torch.optim.lr_scheduler.MultiStepLR(optimizer, [100]))
        return None

    def before_epoch(self, ctx, epoch, rows):
        if self.stop_at == (ctx.task, self.prepared[-1], epoch):
            raise KeyboardInterrupt("stopped on purpose")  # the epoch before it is saved
        return rows[: len(rows) // 2]  # a coreset: half of the pool

    def loss(self, batch: Batch, forward) -> StepLoss:
        logits = forward(batch.x)
        other = forward(batch.view(1))  # a second augmented view of the same images
        return StepLoss(F.cross_entropy(logits, batch.y) + F.cross_entropy(other, batch.y), logits)

    def after_step(self, model) -> None:
        self.steps += 1
        with torch.no_grad():
            model.head.bias.clamp_(-0.5, 0.5)  # a projection after every step

    def after_epoch(self, ctx, row) -> None:
        self.calls.append(f"epoch{row['step']}")

    def after_task(self, ctx) -> None:
        self.calls.append(f"done{ctx.task}")

    def state_dict(self):
        return {"calls": list(self.calls), "steps": self.steps, "prepared": list(self.prepared)}

    def load_state_dict(self, state):
        self.calls, self.steps, self.prepared = list(state["calls"]), state["steps"], list(state["prepared"])


def train(store: Path, plugin: Recorder, tasks: int = 2, lazy: bool = False) -> tuple[Engine, torch.nn.Module]:
    engine = Engine("test-run", RUNTIME, store, identity={"k": 1}, inputs=[store])
    model = engine.new_model(engine.model_spec("resnet8"), None, stage="test")
    rows = table(store, 64)
    plans = [TaskPlan(t, rows, (Phase("train", SCHEDULE),)) for t in range(tasks)]
    if lazy:  # a generator, as the lifelong stage's scored replay gives: each plan made when asked for
        engine.train(model, (plan for plan in plans), [plugin], task_epochs={t: 2 for t in range(tasks)})
    else:
        engine.train(model, plans, [plugin])
    return engine, model


def test_events_phases_rows_views_and_projection(store):
    recorder = Recorder()
    engine, model = train(store, recorder)
    assert recorder.calls == ["task0", "phase0", "epoch1", "epoch2", "phase1", "epoch3", "done0",
                              "task1", "phase0", "epoch4", "epoch5", "phase1", "epoch6", "done1"]
    assert recorder.steps == 2 * 3 * 2  # 32 of 64 rows per epoch in batches of 16, 3 epochs, 2 tasks
    assert [r["task"] for r in engine.history] == [0, 0, 0, 1, 1, 1]
    assert engine.history[2]["lr"] == 0.01  # the second phase's own optimizer
    assert model.head.bias.abs().max() <= 0.5
    task1 = checkpoint.load(engine.resume.file("task1.pt"))
    assert task1["plugins"]["recorder"]["steps"] == 12 and spec.describe(task1["config"])["stage"] == "test"


def test_plans_from_a_generator_are_all_trained_and_read_one_at_a_time(store):
    recorder = Recorder()
    engine, _ = train(store, recorder, lazy=True)
    assert [r["task"] for r in engine.history] == [0, 0, 0, 1, 1, 1]
    assert engine.progress.total == 6 and recorder.calls[-1] == "done1"


def test_a_run_stopped_mid_phase_resumes_to_the_identical_result(store):
    _, reference = train(store, Recorder())
    reference_state = {k: v.clone() for k, v in reference.state_dict().items()}
    shutil.rmtree(".lq-resume")
    with pytest.raises(KeyboardInterrupt):
        train(store, Recorder(stop_at=(1, 0, 1)))  # before the second epoch of task 1's first phase
    resumed = Recorder()
    _, model = train(store, resumed)
    assert all(torch.equal(reference_state[k], v) for k, v in model.state_dict().items())
    # task 0 came from its checkpoint; task 1 resumed inside phase 0 with the plugin's state back
    assert resumed.calls[-9:] == ["task1", "phase0", "epoch4", "phase0", "phase-already-prepared", "epoch5",
                                  "phase1", "epoch6", "done1"]
    assert resumed.steps == 12


def test_model_from_rebuilds_the_checkpoint_and_converts_to_new_bits(store, tmp_path):
    from lq.quant.config import QuantConfig

    engine = Engine("conv", RUNTIME, store, identity={}, inputs=[store])
    model_spec = engine.model_spec("resnet8")
    fp32 = engine.new_model(model_spec, None, stage="pretrain")
    path = tmp_path / "fp32.pt"
    checkpoint.save(path, engine.payload(fp32))
    w4 = engine.model_from(path, model_spec, QuantConfig(4, 4), {"weight_bits": 32}, stage="qat")
    assert spec.describe(engine.config)["weight_bits"] == 4
    assert any("QConv2d" in type(m).__name__ for m in w4.modules())
    from lq.errors import LqError

    with pytest.raises(LqError, match="weight_bits = 32, but this run needs weight_bits = 8"):
        engine.model_from(path, model_spec, QuantConfig(8, 8), {"weight_bits": 8})
