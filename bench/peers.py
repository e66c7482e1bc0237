"""The peer comparison: lq vs Avalanche (avalanche-lib 0.6.0, the `bench` extra) side by side.

Both sides train the *same* model object, lq's w4a4 ProxQ ResNet-20 (the pipeline's w8a8 qat8
checkpoint of seed 0, rebuilt and converted to w4a4 with `lq.train.spec`, exactly as lq's
lifelong stage does), on the *same* digits lifelong stream (the store, split, replay and counts
the pipeline's own stages make in a scratch copy of the project), with the same schedule, seed,
optimizer and loss:

- lq `finetune`       vs Avalanche `Naive`     (plain cross-entropy on each task's pool)
- lq `ewc`            vs Avalanche `EWCPlugin` (online, decay 1: Σ_k F_k; λ the same)

lq runs its real lifelong stage (`lq.train.lifelong.run`: engine, per-epoch resume state, task
checkpoints); Avalanche runs its stock strategy on tensor datasets with per-sample torchvision
transforms through a DataLoader, the way a researcher would use it. Runs alternate (lq, Avalanche,
then Avalanche, lq, ...) so machine load falls on both alike; times are medians over rounds.
Both sides' task models are scored by the same function on each task's test split (R[t][j]).
Plus one FP32 ResNet-20 epoch at 32x32 on random CIFAR-shaped data (synthetic) on both sides.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any
from unittest import mock

import numpy as np
import pandas as pd
import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from lq.evaluation import accuracy as lq_accuracy  # noqa: E402
from lq.quant.config import QuantConfig  # noqa: E402
from lq.train import engine as lq_engine  # noqa: E402
from lq.train import checkpoint, spec  # noqa: E402
from lq.train.data import Augment, Batches, ImageBank, load_bank  # noqa: E402
from lq.train.lifelong import LifelongRecipe  # noqa: E402
from lq.train.lifelong import run as lq_lifelong  # noqa: E402
from lq.train.settings import Runtime, Schedule  # noqa: E402

SEED = 0
TASKS_TARGETS = ["data/store/MANIFEST.json", "data/split/MANIFEST.json", "data/replay/MANIFEST.json",
                 "data/counts/finetune/MANIFEST.json", "models/seed0/proxq/qat8.pt"]


# --- the shared setting ---------------------------------------------------------------------------
def make_stream(workdir: Path, preset: str = "digits") -> Path:
    """A scratch copy of the project at the shipped params.yaml (ResNet-20, 3 tasks) with `preset`;
    its own stages make the store, split, replay sets, class counts and the w8a8 init model."""
    sys.path.insert(0, str(REPO / "tests"))
    from conftest import IGNORE, PROJECT_FILES, tool_env  # the tests' notion of the project's files

    from lq.overlay import write_through

    env = tool_env()
    root = workdir / "repo"
    for name in PROJECT_FILES:
        src = REPO / name
        if src.is_dir():
            shutil.copytree(src, root / name, ignore=IGNORE)
        elif src.exists():
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, root / name)
    write_through(root / "params.yaml", [("preset", None, preset)])
    for cmd in (["git", "init", "-q"], ["dvc", "init", "-q"], ["snakemake", "--cores", "1", *TASKS_TARGETS]):
        subprocess.run(cmd, cwd=root, env=env, check=True, capture_output=True)
    return root


def settings(root: Path, epochs: int) -> dict[str, Any]:
    from lq.config import read_yaml, resolve

    p = resolve(read_yaml(root / "params.yaml"), [])  # the preset applied
    t, ll = p["train"], p["lifelong"]
    init = root / "models/seed0/proxq/qat8.pt"
    q8 = QuantConfig.from_dict(checkpoint.load(init)["config"]["quant"])
    quant = QuantConfig(weight_bits=4, act_bits=4, weight_quantizer=q8.weight_quantizer,
                        act_quantizer=q8.act_quantizer, act_range=q8.act_range)
    # lq's lifelong schedule, shortened: the milestone keeps its place relative to the epochs (7 of 10).
    milestone = max(1, round(epochs * ll["milestones"][0] / ll["epochs"]))
    schedule = Schedule(epochs=epochs, lr=ll["lr"], milestones=(milestone,), gamma=t["lr_gamma"],
                        momentum=t["momentum"], weight_decay=t["weight_decay"])
    runtime = Runtime(device="cpu", seed=SEED, batch_size=t["batch_size"], eval_batch_size=t["eval_batch_size"],
                      augment=t["augment"], hflip=t["hflip"])
    ewc = dict(ll["methods"]["ewc"], balanced=False)  # Avalanche has no BaLL: both sides plain cross-entropy
    return {"root": root, "init": init, "quant": quant, "schedule": schedule, "runtime": runtime,
            "ewc": ewc, "arch": p["model"]["arch"], "tasks": p["split"]["num_tasks"]}


def accuracy(model: torch.nn.Module, bank: ImageBank, rows: torch.Tensor, batch: int = 100) -> float:
    """The one scoring function both sides' models go through: lq's evaluate stage's top-1."""
    return lq_accuracy(model, Batches(bank, rows, batch, shuffle=False))[0]


def matrix(models: list[torch.nn.Module], bank: ImageBank, tests: list[torch.Tensor]) -> list[list[float]]:
    """R[t][j]: accuracy on task j's test split of the model after task t."""
    return [[round(accuracy(m, bank, rows), 4) for rows in tests] for m in models]


class EpochClock:
    """Seconds of every training epoch of lq's engine (its `Loop.epoch`, batches included)."""

    def __init__(self):
        self.seconds: list[float] = []
        self._original = lq_engine.Loop.epoch

    def __enter__(self):
        clock, original = self, self._original

        def timed(loop, *args, **kwargs):
            start = time.perf_counter()
            row = original(loop, *args, **kwargs)
            clock.seconds.append(time.perf_counter() - start)
            return row

        lq_engine.Loop.epoch = timed
        return self

    def __exit__(self, *exc):
        lq_engine.Loop.epoch = self._original


# --- lq -----------------------------------------------------------------------------------------
def run_lq(s: dict, method: str, workdir: Path, tag: str) -> dict:
    root = s["root"]
    out = workdir / f"lq-{method}-{tag}"
    recipe = LifelongRecipe(f"bench-{method}-{tag}", s["runtime"], s["arch"], s["schedule"], {"bench": tag},
                            quant=s["quant"], method=method, method_settings=s["ewc"] if method == "ewc" else {})
    # In the scratch folder: the engine keeps its resume state and TensorBoard runs under the cwd.
    with contextlib.chdir(workdir), EpochClock() as clock:
        start = time.perf_counter()
        lq_lifelong(recipe, store=root / "data/store", split=root / "data/split", replay=root / "data/replay",
                    counts=root / "data/counts/finetune", init=s["init"], out=out / "models", curve=out / "curve.csv")
        stage = time.perf_counter() - start
    models = [spec.load(out / "models" / f"task{t}.pt", torch.device("cpu"))[0] for t in range(s["tasks"])]
    return {"stage_s": stage, "epoch_s": clock.seconds, "models": models}


# --- Avalanche ----------------------------------------------------------------------------------
def run_avalanche(s: dict, method: str, workdir: Path, tag: str) -> dict:
    """Avalanche's stock Naive strategy (plus its EWC plugin for `ewc`) on the same stream."""
    import torchvision.transforms.v2 as T
    from avalanche.benchmarks.scenarios.dataset_scenario import benchmark_from_datasets
    from avalanche.benchmarks.utils.classification_dataset import _make_taskaware_tensor_classification_dataset
    from avalanche.evaluation.metrics import accuracy_metrics, loss_metrics
    from avalanche.training import Naive
    from avalanche.training.plugins import EvaluationPlugin, LRSchedulerPlugin, SupervisedPlugin

    root, sched, rt = s["root"], s["schedule"], s["runtime"]
    out = workdir / f"avalanche-{method}-{tag}"
    out.mkdir(parents=True, exist_ok=True)
    epochs: list[float] = []

    class Clock(SupervisedPlugin):
        def before_training_epoch(self, strategy, **kw):
            self.start = time.perf_counter()

        def after_training_epoch(self, strategy, **kw):
            epochs.append(time.perf_counter() - self.start)

    start = time.perf_counter()
    # The data as an Avalanche user holds it: uint8 images, per-sample transforms in the DataLoader.
    from lq.data.store import read_store

    store = read_store(root / "data/store")
    images = torch.tensor(store.images).permute(0, 3, 1, 2).contiguous()
    row_of = {str(i): r for r, i in enumerate(store.ids)}
    train = np.char.startswith(store.ids.astype(str), "train/")
    pixels = images[torch.from_numpy(train)].float().div(255)
    mean, std = pixels.mean(dim=(0, 2, 3)).tolist(), pixels.std(dim=(0, 2, 3)).clamp_min(1e-3).tolist()
    size = images.shape[-1]
    augment = [T.RandomCrop(size, padding=max(1, size // 8))] if rt.augment else []
    augment += [T.RandomHorizontalFlip()] if rt.hflip else []
    to_float = [T.ToDtype(torch.float32, scale=True)]
    train_tf = T.Compose([*to_float, *augment, T.Normalize(mean, std)])
    eval_tf = T.Compose([*to_float, T.Normalize(mean, std)])

    def dataset(table: pd.DataFrame, transform) -> Any:
        rows = torch.tensor([row_of[i] for i in table["image"]])
        return _make_taskaware_tensor_classification_dataset(
            images[rows], torch.tensor(table["label"].to_numpy()), transform=transform, task_labels=0)

    split, replay_dir = root / "data/split", root / "data/replay"
    trains = [pd.read_csv(split / f"train{t}.csv") for t in range(s["tasks"])]
    replays = [pd.read_csv(replay_dir / f"replay{t}.csv") for t in range(s["tasks"])]
    # lq's pool of task t (replay_in_pool: true): train_t and the replay sets of the earlier tasks.
    pools = [pd.concat([trains[t], *replays[:t]], ignore_index=True) for t in range(s["tasks"])]
    bench = benchmark_from_datasets(train=[dataset(p, train_tf) for p in pools])

    model, _ = spec.load(s["init"], torch.device("cpu"))
    model = spec.convert(model, s["quant"])
    optimizer = torch.optim.SGD(model.parameters(), lr=sched.lr, momentum=sched.momentum,
                                weight_decay=sched.weight_decay)
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, list(sched.milestones), sched.gamma)
    plugins = [LRSchedulerPlugin(scheduler, reset_scheduler=True, reset_lr=True, step_granularity="epoch"), Clock()]
    if method == "ewc":
        plugins.append(replay_ewc(s["ewc"]["ll_lambda"], [dataset(r, eval_tf) for r in replays], rt.eval_batch_size))
    evaluator = EvaluationPlugin(accuracy_metrics(epoch=True), loss_metrics(epoch=True), loggers=[])
    strategy = Naive(model=model, optimizer=optimizer, criterion=torch.nn.CrossEntropyLoss(),
                     train_mb_size=rt.batch_size, train_epochs=sched.epochs, eval_mb_size=rt.eval_batch_size,
                     device="cpu", plugins=plugins, evaluator=evaluator)
    torch.manual_seed(SEED)
    models = []
    for t, experience in enumerate(bench.train_stream):
        strategy.train(experience)
        torch.save(model.state_dict(), out / f"task{t}.pt")  # as lq keeps every task's model
        models.append(copy.deepcopy(model))
    stage = time.perf_counter() - start
    return {"stage_s": stage, "epoch_s": epochs, "models": models}


def replay_ewc(lam: float, replay_sets: list, batch: int):
    """Avalanche's EWCPlugin, online with decay 1 (F = Σ_k F_k, anchor θ^{t−1}, λ Σ F (θ − θ*)²),
    the importance of task k taken on its replay set (lq's choice: the only data of task k the
    stream keeps) instead of Avalanche's default, the experience's whole training set."""
    from avalanche.training.plugins import EWCPlugin
    from avalanche.training.utils import copy_params_dict

    class ReplayEWC(EWCPlugin):
        def after_training_exp(self, strategy, **kwargs):
            t = strategy.clock.train_exp_counter
            importances = self.compute_importances(strategy.model, strategy._criterion, strategy.optimizer,
                                                   replay_sets[t].eval(), strategy.device, batch)
            self.update_importances(importances, t)
            self.saved_params[t] = copy_params_dict(strategy.model)
            if t > 0 and not self.keep_importance_data:
                del self.saved_params[t - 1]

    return ReplayEWC(lam, mode="online", decay_factor=1.0)


# --- the FP32 32x32 epoch ---------------------------------------------------------------------------
def fp32_epoch(images: int = 2560, batch: int = 128, rounds: int = 2) -> dict:
    """One FP32 ResNet-20 epoch on random CIFAR-shaped uint8 data (synthetic), 100 classes,
    random crop (pad 4) + flip on both sides: lq's `fit` over its in-memory batches vs Avalanche's
    Naive over a tensor dataset with torchvision transforms."""
    import torchvision.transforms.v2 as T
    from avalanche.benchmarks.scenarios.dataset_scenario import benchmark_from_datasets
    from avalanche.benchmarks.utils.classification_dataset import _make_taskaware_tensor_classification_dataset
    from avalanche.training import Naive
    from avalanche.training.plugins import EvaluationPlugin
    from avalanche.evaluation.metrics import accuracy_metrics, loss_metrics

    from lq.models import create_model

    g = torch.Generator().manual_seed(SEED)
    x = torch.randint(0, 256, (images, 3, 32, 32), dtype=torch.uint8, generator=g)
    y = torch.randint(0, 100, (images,), generator=g)
    mean, std = [0.5] * 3, [0.25] * 3
    bank = ImageBank(images=x, labels=y, row_of={}, classes=tuple(map(str, range(100))),
                     mean=torch.tensor(mean), std=torch.tensor(std))
    schedule = Schedule(epochs=1, lr=0.01, milestones=(), gamma=0.1, momentum=0.9, weight_decay=1e-4)
    tf = T.Compose([T.ToDtype(torch.float32, scale=True), T.RandomCrop(32, padding=4), T.RandomHorizontalFlip(),
                    T.Normalize(mean, std)])
    data = benchmark_from_datasets(train=[_make_taskaware_tensor_classification_dataset(x, y, transform=tf, task_labels=0)])

    def model():
        torch.manual_seed(SEED)
        return create_model("resnet20", num_classes=100, in_channels=3, image_size=(32, 32))

    def lq_side() -> float:
        m = model()
        batches = Batches(bank, torch.arange(images), batch, shuffle=True, augment=Augment(pad=4, hflip=True))
        start = time.perf_counter()
        lq_engine.fit(m, batches, schedule, seed=SEED)
        return time.perf_counter() - start

    def avalanche_side() -> float:
        m = model()
        opt = torch.optim.SGD(m.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
        strategy = Naive(model=m, optimizer=opt, criterion=torch.nn.CrossEntropyLoss(), train_mb_size=batch,
                         train_epochs=1, device="cpu",
                         evaluator=EvaluationPlugin(accuracy_metrics(epoch=True), loss_metrics(epoch=True), loggers=[]))
        start = time.perf_counter()
        strategy.train(data.train_stream[0])
        return time.perf_counter() - start

    lq_s, av_s = [], []
    for r in range(rounds):
        for side in ((lq_side, avalanche_side) if r % 2 == 0 else (avalanche_side, lq_side)):
            (lq_s if side is lq_side else av_s).append(side())
    lq_m, av_m = statistics.median(lq_s), statistics.median(av_s)
    return {"images": images, "batch": batch, "lq_epoch_s": lq_m, "avalanche_epoch_s": av_m, "ratio": av_m / lq_m,
            "data": "random uint8 32x32x3, 100 classes (synthetic)"}


def compiled_finetune(s: dict, workdir: Path, bank: ImageBank, tests: list[torch.Tensor], eager: dict | None) -> dict:
    """lq `finetune` with `train.compile: true` (torch.compile, opt-in), twice: first with an empty
    Inductor cache (a fresh machine), then with Dynamo's in-memory cache dropped but Inductor's disk
    cache kept (any later stage on the same machine). The first epoch pays the stage's one
    compilation; the later ones show the compiled step. Avalanche `Naive` and eager lq runs
    alternate with them (cold, Avalanche, warm, eager, eager, warm, Avalanche; medians), so the
    ratios compare runs made under the same machine load. Not exact: its accuracy matrix is
    compared with eager lq's."""
    runs: dict[str, list[dict]] = {"cold": [], "warm": [], "avalanche": [], "eager": []}
    compiled = {**s, "runtime": dataclasses.replace(s["runtime"], compile=True)}
    sides = {"cold": (run_lq, compiled), "warm": (run_lq, compiled), "avalanche": (run_avalanche, s), "eager": (run_lq, s)}
    order = ("cold", "avalanche", "warm", "eager", "eager", "warm", "avalanche")  # load falls on all alike
    # an Inductor cache of the bench's own, empty at first; the caller's setting comes back after
    with mock.patch.dict(os.environ, {"TORCHINDUCTOR_CACHE_DIR": str(workdir / "inductor-cache")}):
        try:
            for i, tag in enumerate(order):
                torch._dynamo.reset()
                fn, settings_ = sides[tag]
                runs[tag].append(fn(settings_, "finetune", workdir, f"beside-compiled-{i}"))
                print(f"peers finetune beside compiled ({tag}): {runs[tag][-1]['stage_s']:.1f} s", flush=True)
        finally:
            torch._dynamo.reset()
    epoch = statistics.median(e for tag in ("cold", "warm") for run in runs[tag] for e in run["epoch_s"][1:])
    av_epoch, eager_epoch = (statistics.median(e for run in runs[tag] for e in run["epoch_s"]) for tag in ("avalanche", "eager"))
    av_stage = statistics.median(run["stage_s"] for run in runs["avalanche"])
    first = {tag: statistics.median(run["epoch_s"][0] for run in runs[tag]) for tag in ("cold", "warm")}
    stage = {tag: statistics.median(run["stage_s"] for run in runs[tag]) for tag in ("cold", "warm")}
    R = matrix(runs["cold"][0]["models"], bank, tests)
    eager_R = eager["lq_R"] if eager else matrix(runs["eager"][0]["models"], bank, tests)
    av_R = matrix(runs["avalanche"][0]["models"], bank, tests)
    eager_stage = statistics.median(run["stage_s"] for run in runs["eager"])
    return {"epoch_s": epoch, "eager_R": eager_R, "avalanche_R": av_R, "eager_stage_ratio": av_stage / eager_stage,
            "avalanche_epoch_s": av_epoch, "avalanche_stage_s": av_stage, "eager_epoch_s": eager_epoch,
            "eager_stage_s": eager_stage,
            "epochs_s": {tag: [run["epoch_s"] for run in runs[tag]] for tag in ("cold", "warm")},
            "first_epoch_s": first, "compile_s": {tag: first[tag] - epoch for tag in first}, "stage_s": stage, "R": R,
            "repeatable": all(R == matrix(run["models"], bank, tests) for run in runs["warm"]),
            "max_R_diff": max(abs(a - b) for ra, rb in zip(R, eager_R) for a, b in zip(ra, rb)),
            "epoch_ratio": av_epoch / epoch, "speedup_over_eager": eager_epoch / epoch,
            "stage_ratio": {tag: av_stage / stage[tag] for tag in stage}}


# --- the whole comparison ---------------------------------------------------------------------------
def bench_peers(workdir: Path, epochs: int = 3, rounds: int = 2) -> dict:
    import avalanche

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # one thread per side (the caller also sets OMP_NUM_THREADS=1)
    try:
        made = time.perf_counter()
        root = make_stream(workdir)
        made = time.perf_counter() - made
        s = settings(root, epochs)
        bank = load_bank(root / "data/store", torch.device("cpu"))
        tests = [bank.rows(pd.read_csv(root / "data/split" / f"test{j}.csv")) for j in range(s["tasks"])]
        out: dict[str, Any] = {
            "avalanche": avalanche.__version__, "threads": torch.get_num_threads(), "tasks": s["tasks"],
            "epochs_per_task": epochs, "rounds": rounds, "setup_s": made,
            "schedule": {"lr": s["schedule"].lr, "milestones": list(s["schedule"].milestones),
                         "batch_size": s["runtime"].batch_size, "momentum": s["schedule"].momentum,
                         "weight_decay": s["schedule"].weight_decay},
            "ewc_lambda": s["ewc"]["ll_lambda"],
        }
        for lq_method, peer in (("finetune", "naive"), ("ewc", "ewc")):
            runs: dict[str, list[dict]] = {"lq": [], "avalanche": []}
            for r in range(rounds):
                order = (("lq", run_lq), ("avalanche", run_avalanche))
                for side, fn in (order if r % 2 == 0 else order[::-1]):
                    runs[side].append(fn(s, lq_method, workdir, f"r{r}"))
                    print(f"peers {lq_method}/{peer} round {r} {side}: {runs[side][-1]['stage_s']:.1f} s", flush=True)
            lq_epoch = statistics.median([e for run in runs["lq"] for e in run["epoch_s"]])
            av_epoch = statistics.median([e for run in runs["avalanche"] for e in run["epoch_s"]])
            lq_stage = statistics.median(run["stage_s"] for run in runs["lq"])
            av_stage = statistics.median(run["stage_s"] for run in runs["avalanche"])
            lq_R = matrix(runs["lq"][0]["models"], bank, tests)
            av_R = matrix(runs["avalanche"][0]["models"], bank, tests)
            out[f"{lq_method}_vs_{peer}"] = {
                "lq_epoch_s": lq_epoch, "avalanche_epoch_s": av_epoch, "epoch_ratio": av_epoch / lq_epoch,
                "lq_stage_s": lq_stage, "avalanche_stage_s": av_stage, "stage_ratio": av_stage / lq_stage,
                "lq_R": lq_R, "avalanche_R": av_R,
                "lq_repeatable": lq_R == matrix(runs["lq"][-1]["models"], bank, tests),
                "avalanche_repeatable": av_R == matrix(runs["avalanche"][-1]["models"], bank, tests),
            }
        out["finetune_compiled"] = compiled_finetune(s, workdir, bank, tests, out["finetune_vs_naive"])
        out["fp32_32x32"] = fp32_epoch()
        return out
    finally:
        torch.set_num_threads(threads)


def bench_fashion(workdir: Path, epochs: int = 2) -> dict:
    """The same comparison at Fashion-MNIST size (the `fashion-cpu` preset's stream: 28x28 images,
    ~1,600-2,200 per task, batch 128): lq `finetune` eager and with `train.compile: true` (cold and
    warm Inductor cache) against Avalanche `Naive`, alternating as in `compiled_finetune`; plus the
    peak memory of this process (one side at a time holds its data and model)."""
    import resource

    import avalanche

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        made = time.perf_counter()
        root = make_stream(workdir, preset="fashion-cpu")
        made = time.perf_counter() - made
        s = settings(root, epochs)
        bank = load_bank(root / "data/store", torch.device("cpu"))
        tests = [bank.rows(pd.read_csv(root / "data/split" / f"test{j}.csv")) for j in range(s["tasks"])]
        compiled = compiled_finetune(s, workdir, bank, tests, None)
        pools = [len(pd.read_csv(root / "data/split" / f"train{t}.csv")) for t in range(s["tasks"])]
        return {"avalanche": avalanche.__version__, "threads": torch.get_num_threads(), "tasks": s["tasks"],
                "epochs_per_task": epochs, "setup_s": made, "train_images_per_task": pools,
                "batch_size": s["runtime"].batch_size, "finetune": compiled,
                "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    finally:
        torch.set_num_threads(threads)


def fashion_lines(f: dict) -> list[str]:
    """The RESULTS.md section of the Fashion-size comparison."""
    c, m = f["finetune"], f["machine"]
    lines = ["", f"## Fashion-MNIST size: lq vs Avalanche {f['avalanche']} (`python bench/run.py fashion`)", "",
             f"Machine: {m['cpu']}, {m['cores']} cores, torch {m['torch']}; measured {f['when']} (one run). The "
             f"`fashion-cpu` stream ({f['tasks']} tasks of 28x28 images, {f['train_images_per_task']} training images "
             f"per task before replay), w4a4 ProxQ ResNet-20 from the pipeline's qat8 model, {f['epochs_per_task']} "
             f"epochs per task, batch {f['batch_size']}, lq `finetune` vs Avalanche `Naive`, {f['threads']} thread; "
             "runs alternate (compiled cold, Avalanche, compiled warm, eager, eager, compiled warm, Avalanche). "
             "Ratio = Avalanche / lq.", "", "| lq side | lq | Avalanche | ratio |", "|---|---|---|---|",
             f"| eager: per epoch | {c['eager_epoch_s']:.2f} s | {c['avalanche_epoch_s']:.2f} s | "
             f"{c['avalanche_epoch_s'] / c['eager_epoch_s']:.2f}x |",
             f"| eager: whole stage | {c['eager_stage_s']:.1f} s | {c['avalanche_stage_s']:.1f} s | {c['eager_stage_ratio']:.2f}x |",
             f"| compiled: per epoch after the first ({c['speedup_over_eager']:.2f}x eager lq's) | {c['epoch_s']:.2f} s | "
             f"{c['avalanche_epoch_s']:.2f} s | {c['epoch_ratio']:.2f}x |"]
    for cache in ("cold", "warm"):
        lines.append(f"| compiled, {cache} Inductor cache: whole stage, compilation ({c['compile_s'][cache]:.1f} s) included | "
                     f"{c['stage_s'][cache]:.1f} s | {c['avalanche_stage_s']:.1f} s | {c['stage_ratio'][cache]:.2f}x |")
    lines += ["", f"Peak memory of the bench process: {f['peak_rss_mb']:.0f} MB. Accuracy matrices (same scoring):", ""]
    for name, R in (("lq eager", c["eager_R"]), ("lq compiled", c["R"]), ("Avalanche Naive", c["avalanche_R"])):
        lines.append(f"- {name}: " + " / ".join("[" + ", ".join(f"{v:.3f}" for v in row) + "]" for row in R))
    return lines


def report_lines(p: dict) -> list[str]:
    """The RESULTS.md section of the peer comparison."""
    sc = p["schedule"]
    m = p["machine"]
    lines = ["", f"## Peers: lq vs Avalanche {p['avalanche']} (`python bench/run.py peers`)", "",
             f"Machine: {m['cpu']}, {m['cores']} cores, torch {m['torch']}, Python {m['python']}"
             + (f", GPU {m['gpu']}" if "gpu" in m else ", no GPU") + f"; measured {p['when']} (all figures from one run).", "",
             f"Same w4a4 ProxQ ResNet-20 object (the pipeline's seed-0 w8a8 qat8 model converted to w4a4), same "
             f"digits stream ({p['tasks']} tasks, the pipeline's own store/split/replay), {p['epochs_per_task']} "
             f"epochs per task, SGD lr {sc['lr']} (milestone {sc['milestones']}, reset per task), momentum "
             f"{sc['momentum']}, weight decay {sc['weight_decay']}, batch {sc['batch_size']}, seed 0, plain "
             f"cross-entropy, pool = train_t ∪ earlier replay; {p['threads']} thread per side; lq and Avalanche "
             f"runs alternate, times are medians over {p['rounds']} rounds. Ratio = Avalanche / lq (> 1: lq faster).",
             "", "| comparison | lq | Avalanche | ratio |", "|---|---|---|---|"]
    for key, label in (("finetune_vs_naive", "lq `finetune` vs Avalanche `Naive`"),
                       ("ewc_vs_ewc", f"lq `ewc` vs Avalanche EWC (online, decay 1, λ {p['ewc_lambda']:g})")):
        c = p[key]
        lines += [f"| {label}: per epoch | {c['lq_epoch_s']:.3f} s | {c['avalanche_epoch_s']:.3f} s | {c['epoch_ratio']:.2f}x |",
                  f"| {label}: whole stage | {c['lq_stage_s']:.2f} s | {c['avalanche_stage_s']:.2f} s | {c['stage_ratio']:.2f}x |"]
    c = p.get("finetune_compiled")
    if c:
        label = "lq `finetune` with `train.compile: true` (torch.compile, opt-in) vs Avalanche `Naive`"
        lines += [f"| {label}: per epoch, after the first (eager lq in the same "
                  f"rounds: {c['eager_epoch_s']:.3f} s, so compiling gives {c['speedup_over_eager']:.2f}x) | {c['epoch_s']:.3f} s | {c['avalanche_epoch_s']:.3f} s | "
                  f"{c['epoch_ratio']:.2f}x |"]
        for cache in ("cold", "warm"):
            lines += [f"| {label}, {cache} Inductor cache: first epoch (compiles once for the stage: "
                      f"{c['compile_s'][cache]:.1f} s more) | {c['first_epoch_s'][cache]:.2f} s | | |",
                      f"| {label}, {cache} Inductor cache: whole stage, compilation included | {c['stage_s'][cache]:.2f} s | "
                      f"{c['avalanche_stage_s']:.2f} s | {c['stage_ratio'][cache]:.2f}x |"]
    f = p["fp32_32x32"]
    lines.append(f"| FP32 ResNet-20 epoch, {f['images']} random 32x32 images (synthetic), batch {f['batch']} | "
                 f"{f['lq_epoch_s']:.2f} s | {f['avalanche_epoch_s']:.2f} s | {f['ratio']:.2f}x |")
    lines += ["", "Accuracy matrices R[t][j] (row t: after task t; column j: task j's test split), both scored by "
              "the same function:", ""]
    for key, label in (("finetune_vs_naive", ("lq finetune", "Avalanche Naive")), ("ewc_vs_ewc", ("lq ewc", "Avalanche EWC"))):
        pair = p[key]
        for name, R in ((label[0], pair["lq_R"]), (label[1], pair["avalanche_R"])):
            lines.append(f"- {name}: " + " / ".join("[" + ", ".join(f"{v:.3f}" for v in row) + "]" for row in R))
    if c:
        lines.append("- lq finetune, compiled: " + " / ".join("[" + ", ".join(f"{v:.3f}" for v in row) + "]" for row in c["R"])
                     + f" (not exact: up to {c['max_R_diff']:.3f} from eager lq finetune's; a 4-bit grid turns the "
                     "compiled kernels' float rounding into different levels, and training then diverges; "
                     + ("the same in the cold and warm runs)" if c["repeatable"] else "NOT the same in the cold and warm runs)"))
    return lines + ["", *MATCHING]


MATCHING = """What matches and what does not:
- Same on both sides: the model object (lq's w4a4 ProxQ ResNet-20 from the pipeline's seed-0 qat8
  checkpoint, converted by `lq.train.spec`), the store, split and replay sets the pipeline's stages
  wrote, each task's pool (train_t and the earlier replay sets), SGD (lr, momentum, weight decay)
  made fresh per task with its MultiStep decay per epoch, batch size, random crop with 1 zero pixel
  and no flip, normalisation by the training split's mean and std, plain cross-entropy, seed 0, one
  thread, every task's model kept on disk, and the scoring function.
- EWC: Avalanche's `EWCPlugin` in `online` mode with `decay_factor=1` is lq's online EWC without
  decay (F = Σ_k F_k, anchor θ^{t−1}, penalty λ Σ F (θ − θ*)², the same λ); its importance, like
  lq's, is the mean over batches of the squared gradient of cross-entropy in eval mode. Avalanche
  takes it on the experience's whole training set; the bench passes it task k's replay set with
  batches of 100 instead (a 10-line subclass), as lq does: on the same model and replay set the two
  importances agree to 2e-6 (relative, float rounding).
- lq's `ewc` defaults to the BaLL loss (`balanced: true`), which Avalanche does not have: both sides
  run it with plain cross-entropy here (`balanced: false`).
- Not the same: the batches. lq draws its shuffle and augmentation from its own seeded generators
  as whole-batch tensor ops; Avalanche's DataLoader shuffles with torch's global generator and
  transforms sample by sample. The accuracy matrices therefore differ by a few test images per cell
  (one seed, 180-215 test images per task). After task 0 all four models miss only one or two test
  images of task 0's classes, the ceiling of a task-0 model (0.597 on task 1, 0.163 on task 2, whose
  other classes it has not seen), so the first rows coincide. Avalanche also computes an importance after the last task,
  which lq skips (one replay pass). The schedule is the pipeline's, shortened (3 epochs per task,
  milestone at epoch 2, as 7 of 10). Times: per epoch, the training loop with its batches; per
  stage, from the files to every task's model on disk (lq's includes its per-epoch resume state).""".splitlines()
