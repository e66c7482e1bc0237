"""`train.compile` compiles a stage once: the smaller last batch and eval-mode calls run eagerly.

Dynamo's `CompileCounter` backend counts graphs without generating kernels, so these take
seconds; what Inductor would do with each graph is the slow suite's (tests/integration/test_compile.py).
"""

from __future__ import annotations

import pandas as pd
import pytest
import torch
from torch._dynamo.testing import CompileCounter

from lq.methods import create_method
from lq.models import create_model
from lq.data.sources import load_digits_store
from lq.data.store import write_store
from lq.train.compiled import FullBatchCompile
from lq.train.engine import Engine, TaskPlan, fit
from lq.train.plugin import Phase
from lq.train.settings import Runtime, Schedule
from tests.conftest import TEST_SCALE

SCHEDULE = Schedule(epochs=2, lr=0.05, milestones=(), gamma=0.1, momentum=0.9, weight_decay=0.0)


class UnevenBatches:
    """Random 8x8 images in batches of 16 and a last batch of 6 (the `Batches` interface)."""

    def __init__(self, n: int = 38, batch: int = 16):
        g = torch.Generator().manual_seed(0)
        self.x, self.y, self.batch = torch.randn(n, 1, 8, 8, generator=g), torch.randint(0, 4, (n,), generator=g), batch

    def __len__(self):
        return -(-len(self.x) // self.batch)

    def epoch(self, seed):
        for i in range(0, len(self.x), self.batch):
            yield self.x[i : i + self.batch], self.y[i : i + self.batch]


def net() -> torch.nn.Module:
    torch.manual_seed(0)
    return create_model(TEST_SCALE["model.arch"], num_classes=4, in_channels=1, image_size=8)


@pytest.fixture(autouse=True)
def fresh_dynamo_cache():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def test_two_phases_with_a_smaller_last_batch_compile_once():
    model, counter = net(), CompileCounter()
    for task in range(2):  # the engine makes a new wrapper per phase
        fit(model, UnevenBatches(), SCHEDULE, [create_method("finetune")], task=task,
            forward=FullBatchCompile(model, model, backend=counter))
    assert counter.frame_count == 1


def test_plain_torch_compile_compiles_again_for_the_last_batch():
    """What FullBatchCompile avoids: the count above is not 1 by accident."""
    model, counter = net(), CompileCounter()
    fit(model, UnevenBatches(), SCHEDULE, [create_method("finetune")],
        forward=torch.compile(model, dynamic=False, backend=counter))
    assert counter.frame_count == 2


def test_only_full_training_batches_take_the_compiled_graph():
    model = net()
    calls: list[tuple[int, bool]] = []

    def backend(gm, inputs):
        def run(*args):
            calls.append((len(args), model.training))
            return gm.forward(*args)
        return run

    forward = FullBatchCompile(model, model, backend=backend)
    x = torch.randn(16, 1, 8, 8)
    forward(x)                    # the first training call fixes the shape and compiles
    forward(x[:6])                # the last batch: eager
    with torch.no_grad():
        forward(x)                # no gradient wanted: eager
    model.eval()
    forward(x)                    # eval mode: eager
    model.train()
    forward(x)
    assert len(calls) == 2 and all(training for _, training in calls)


def test_eager_and_full_batch_compiled_training_match_with_an_eager_backend():
    """The wrapper only routes calls: with a backend that runs the captured graph as is, training
    is bit-identical to eager training."""
    eager, compiled = net(), net()
    h1 = fit(eager, UnevenBatches(), SCHEDULE, [create_method("finetune")])
    h2 = fit(compiled, UnevenBatches(), SCHEDULE, [create_method("finetune")],
             forward=FullBatchCompile(compiled, compiled, backend="eager"))
    assert [r["loss"] for r in h1] == [r["loss"] for r in h2]
    for (name, a), b in zip(eager.state_dict().items(), compiled.state_dict().values()):
        assert torch.equal(a, b), name


def engine_run(store, tmp_path, monkeypatch, compile_: bool) -> torch.nn.Module:
    """Two digits tasks of 40 images in batches of 16 (a last batch of 8), the engine's own loop."""
    monkeypatch.chdir(tmp_path / ("compiled" if compile_ else "eager"))
    engine = Engine("compile-run", Runtime(device="cpu", seed=3, batch_size=16, compile=compile_), store,
                    identity={}, inputs=[store])
    model = engine.new_model(engine.model_spec("resnet8"), None, stage="test")
    index = pd.read_csv(store / "index.csv", dtype={"image": str, "split": str})
    rows = index[index["split"] == "train"][["image", "label"]].reset_index(drop=True)
    plans = [TaskPlan(t, rows.iloc[40 * t : 40 * (t + 1)].reset_index(drop=True), (Phase("train", SCHEDULE),))
             for t in range(2)]
    engine.train(model, plans)
    return model


def test_the_engine_compiles_a_two_task_stage_once(tmp_path, monkeypatch):
    store = write_store(load_digits_store(seed=123, test_fraction=0.2), tmp_path / "store")
    (tmp_path / "eager").mkdir(), (tmp_path / "compiled").mkdir()
    counter, real = CompileCounter(), torch.compile
    monkeypatch.setattr(torch, "compile", lambda f, **kw: real(f, **{**kw, "backend": counter}))
    eager = engine_run(store, tmp_path, monkeypatch, False)
    assert counter.frame_count == 0
    compiled = engine_run(store, tmp_path, monkeypatch, True)
    assert counter.frame_count == 1
    # the counting backend runs the captured graph as is: the same weights as eager training
    for (name, a), b in zip(eager.state_dict().items(), compiled.state_dict().values()):
        assert torch.equal(a, b), name


# --------------------------------------------------------------------------- train.compile: auto


def test_auto_compiles_only_phases_whose_work_reaches_the_crossover() -> None:
    from lq.train.compiled import AUTO_COMPILE_PIXELS, compiles

    # the digits default's largest phase: 15 FP32 epochs over task 0's ~830 8x8 images
    assert not compiles("auto", 15, 1437, 8 * 8)
    # the fashion preset's FP32 phase: 15 epochs over task 0's 24,000 28x28 images; fashion-cpu's
    # lifelong tasks (6 epochs over ~1,600-2,200 images) stay eager
    assert compiles("auto", 15, 24_000, 28 * 28)
    assert not compiles("auto", 6, 2_200, 28 * 28)
    assert compiles("auto", 1, AUTO_COMPILE_PIXELS, 1) and not compiles("auto", 1, AUTO_COMPILE_PIXELS - 1, 1)
    assert compiles(True, 1, 1, 1) and not compiles(False, 10**6, 10**6, 784)


def test_the_workspace_shares_one_compile_cache(monkeypatch, tmp_path) -> None:
    import lq.__main__ as entry

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)
    entry.share_compile_cache()
    assert entry.os.environ["TORCHINDUCTOR_CACHE_DIR"] == str(tmp_path / ".lq-cache" / "inductor")
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", "/elsewhere")  # a user's own choice wins
    entry.share_compile_cache()
    assert entry.os.environ["TORCHINDUCTOR_CACHE_DIR"] == "/elsewhere"
