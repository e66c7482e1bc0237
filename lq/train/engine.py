"""The training engine: everything between a stage's typed recipe and the files it writes.

One `Engine` per training stage owns the device, the image bank, the resume folder, the history
and the TensorBoard writer. `Engine.train` runs the task loop (per-task resume), the phases of a
task, the epoch loop and the plugins' events (`lq.train.plugin`). After every epoch the full
state (model, optimizer, scheduler, plugins, history, RNG) is saved atomically to the resume
folder, and after every task a task checkpoint: a rerun after a kill continues from the last
finished epoch. Batches depend only on (seed, task, phase, epoch), so on CPU the resumed run ends
bit-identical to an uninterrupted one. Under torchrun each rank trains on its slice of every
global batch through DDP, epoch statistics are summed over ranks, and only the main rank writes.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from torch import nn
from tqdm import tqdm

from lq.atomic import write_text
from lq.errors import LqError
from lq.quant.config import QuantConfig
from lq.io import read_table
from lq.manifest import output_dir
from lq.train import checkpoint, spec
from lq.train.board import CURVE_COLUMNS, Board, write_curve
from lq.train.checkpoint import ResumeDir
from lq.train.compiled import FullBatchCompile, compiles
from lq.train.data import Augment, Batches, load_bank, train_rows, with_label_noise
from lq.train.device import describe, resolve_device, use_deterministic_kernels
from lq.train.distributed import (World, all_reduce_sum, barrier, close, init_lazy_steps, init_world, shard,
                                  sync_buffers, unwrap, wrap)
from lq.train.pause import pause_hook
from lq.train.plugin import Batch, CrossEntropy, Phase, Plugin, StepLoss, TaskContext, make_optimizer
from lq.train.progress import Progress
from lq.train.settings import Runtime, Schedule

log = logging.getLogger("lq")
ENGINE_VERSION = 2  # in the resume fingerprint: state written by another layout is never resumed


@dataclass
class TaskPlan:
    """One task of a stage: its training table, phases and what its plugins may read.

    `record` is stored in the task's checkpoint (e.g. the replay memory the task needed).
    """

    index: int
    table: pd.DataFrame
    phases: tuple[Phase, ...]
    replay: Sequence[pd.DataFrame] = ()
    class_weights: torch.Tensor | None = None
    record: dict[str, Any] = field(default_factory=dict)


# A test hook: `LQ_TEST_KILL_AFTER=task:epoch:step` (phase 0) or `task:phase:epoch:step` makes the
# process kill itself with SIGKILL there, so resume tests interrupt training at a known place.
def _kill_hook() -> Callable[[int, int, int, int], None]:
    spec_ = os.environ.get("LQ_TEST_KILL_AFTER")
    if not spec_:
        return pause_hook()  # LQ_TEST_PAUSE_AT: hold the step until the job is cancelled (lq/train/pause.py)
    parts = tuple(int(v) for v in spec_.split(":"))
    target = (parts[0], 0, *parts[1:]) if len(parts) == 3 else parts

    def hook(task: int, phase: int, epoch: int, step: int) -> None:
        if (task, phase, epoch, step) == target:
            os.kill(os.getpid(), signal.SIGKILL)

    return hook


class Engine:
    """One training stage's run: device, data, resume state, history; see the module doc."""

    def __init__(self, run: str, runtime: Runtime, store: Path, *, identity: Mapping[str, Any], inputs: Sequence[Path]):
        self.run, self.runtime = run, runtime
        self.started = time.perf_counter()
        use_deterministic_kernels(runtime.deterministic)
        self.world, self.device = init_world(resolve_device(runtime.device))
        if not self.world.is_main:
            log.setLevel(logging.WARNING)  # each epoch is logged once, by the main rank
        self.bank = load_bank(store, self.device)
        # Named by stage and grid cell: runs of other cells may train beside this one.
        self.resume = ResumeDir(run, checkpoint.fingerprint({"engine": ENGINE_VERSION, **identity}, inputs))
        self.history: list[dict[str, Any]] = []
        # Seconds and images of the finished epochs (this process's and an interrupted run's): kept
        # beside the resume state, never in a checkpoint, since seconds differ between runs.
        self.timing = _read_timing(self.resume.file("timing.json"))
        self.board = Board(run)
        self.config: dict[str, Any] = {}
        # What a stage may change about training data and the curve: self-supervised training
        # draws its own views (lq.ssl.views) and has no accuracy to plot.
        self.view_augment: Callable[[torch.Tensor, torch.Generator], torch.Tensor] | None = None
        self.curve_columns: Sequence[str] = CURVE_COLUMNS
        log.info("device %s; %d images of shape %s in %d classes", describe(self.device),
                 len(self.bank.labels), self.bank.shape, len(self.bank.classes))

    # --- data -------------------------------------------------------------------------------------
    def table(self, path: Path) -> pd.DataFrame:
        return read_table(path, len(self.bank.classes))

    def eval_batches(self, table: pd.DataFrame, source: str = "table") -> Batches:
        return Batches(self.bank, self.bank.rows(table, source), self.runtime.eval_batch_size, shuffle=False)

    def eval_batches_of(self, rows: torch.Tensor) -> Batches:
        """Un-augmented batches of store rows, in order (scoring, e.g. coreset selection)."""
        return Batches(self.bank, rows, self.runtime.eval_batch_size, shuffle=False)

    def training_batches(self, rows: torch.Tensor) -> Batches:
        """Shuffled, augmented batches (pad = image size / 8: 4 pixels on CIFAR, 1 on 8x8 digits)."""
        augment = Augment(pad=max(1, self.bank.shape[1] // 8), hflip=self.runtime.hflip) if self.runtime.augment else None
        augment = self.view_augment or augment
        return Batches(self.bank, rows, self.runtime.batch_size, shuffle=True, augment=augment)

    def add_label_noise(self, share: float, seed: int) -> None:
        """Flip a seeded share of the training labels (data.label_noise); test labels never change."""
        self.bank = with_label_noise(self.bank, share, seed, train_rows(list(self.bank.row_of)))

    def flipped(self, rows: torch.Tensor) -> torch.Tensor:
        return self.bank.flipped(rows)

    # --- models -----------------------------------------------------------------------------------
    def model_spec(self, arch: str) -> spec.ModelSpec:
        channels, height, width = self.bank.shape
        return spec.ModelSpec(arch, len(self.bank.classes), channels, (height, width))

    def new_model(self, model_spec: spec.ModelSpec, quant: QuantConfig | None, **record: Any) -> nn.Module:
        """A freshly initialised model (seeded by the run's seed)."""
        torch.manual_seed(self.runtime.seed)
        self.config = spec.checkpoint_config(model_spec, quant, **record)
        return spec.build(model_spec, quant, self.device)

    def model_from(self, path: Path, model_spec: spec.ModelSpec, quant: QuantConfig | None,
                   expect: Mapping[str, Any] | None = None, **record: Any) -> nn.Module:
        """An earlier stage's model, checked against this data and model, converted to `quant`."""
        wanted = {"arch": model_spec.arch, "num_classes": model_spec.num_classes,
                  "in_channels": model_spec.in_channels, "image_size": tuple(model_spec.image_size), **(expect or {})}
        model, _ = spec.load(path, self.device, wanted)
        self.config = spec.checkpoint_config(model_spec, quant, **record)
        return spec.convert(model, quant).to(self.device)

    # --- the task loop ------------------------------------------------------------------------------
    def train(self, model: nn.Module, plans: Iterable[TaskPlan], plugins: Sequence[Plugin] = (),
              settings: Mapping[str, Any] | None = None, task_epochs: Mapping[int, int] | None = None) -> None:
        """Train `model` through `plans` in order, skipping tasks an earlier run finished.

        `plans` may be a generator: the next plan is asked for after the previous task's
        `after_task` (or after its checkpoint restored the plugins), so it may depend on them.
        A generator is never read ahead: the progress line then counts `task_epochs` (task ->
        epochs, as planned) until each task's phases are known."""
        plugins = list(plugins) or [CrossEntropy()]
        if isinstance(plans, Sequence):
            task_epochs = {plan.index: sum(p.schedule.epochs for p in plan.phases) for plan in plans}
        self.progress = Progress(task_epochs or {}, self.history)
        for plan in plans:
            done = self.resume.file(f"task{plan.index}.pt")
            if done.exists():
                state = checkpoint.load(done)
                model.load_state_dict(state["model"])
                _load_plugins(plugins, state["plugins"])
                self.history[:] = state["history"]
                log.info("task %d already finished in an earlier run: %s", plan.index, done)
                continue
            rows = self.bank.rows(plan.table, f"task {plan.index} pool")
            weights = None if plan.class_weights is None else plan.class_weights.to(self.device)
            replay = [self.eval_batches(r, f"replay of task {k}") for k, r in enumerate(plan.replay)]
            ctx = TaskContext(task=plan.index, model=model, device=self.device, replay=replay,
                              class_weights=weights, rows=rows, settings=dict(settings or {}))
            for plugin in plugins:
                plugin.before_task(ctx)
            log.info("%s task %d: %d training images", self.run, plan.index, len(rows))
            phases = list(plan.phases)
            for plugin in plugins:
                phases = list(plugin.phases(ctx, phases))
            self.progress.task(plan.index, [phase.schedule.epochs for phase in phases])
            for index, phase in enumerate(phases):
                self._train_phase(model, ctx, plugins, phase, index, len(phases))
            # Under torchrun every rank runs the events on identical parameters and DDP-averaged
            # gradients, so plugin state is the same everywhere; rank 0 writes it.
            for plugin in plugins:
                plugin.after_task(ctx)
            if self.world.is_main:
                checkpoint.save(done, self.payload(model, plugins=_plugin_states(plugins), task=plan.index, **plan.record))
            barrier(self.world)

    def _train_phase(self, model: nn.Module, ctx: TaskContext, plugins: list[Plugin], phase: Phase,
                     index: int, count: int) -> None:
        task, schedule = ctx.task, phase.schedule
        last = self.resume.latest()
        state = checkpoint.load(last) if last is not None else None
        resuming = state is not None and state["task"] == task and state.get("phase", 0) == index
        if state is not None and state["task"] == task and state.get("phase", 0) > index:
            return  # an earlier run finished this phase; the model and plugins come with the later one
        if resuming:
            model.load_state_dict(state["model"])
            _load_plugins(plugins, state["plugins"])
        optimization = None
        for plugin in plugins:
            optimization = plugin.before_phase(ctx, phase, index) or optimization
        optimization = optimization or make_optimizer(model, schedule)
        optimizer, scheduler = optimization.optimizer, optimization.scheduler
        start_epoch = 0
        if resuming:
            optimizer.load_state_dict(state["optimizer"])
            checkpoint.load_scheduler_state(scheduler, state["scheduler"])
            torch.set_rng_state(state["rng"])
            self.history[:] = state["history"]
            start_epoch = state["epoch"] + 1
            log.info("task %d: resuming after epoch %d from %s", task, start_epoch, last)

        # On a GPU: NHWC convolutions everywhere, bfloat16 autocast for a full-precision model
        # (quantized models keep fp32 so the k-bit grids are exact). On CPU both measured slower.
        cuda = self.device.type == "cuda"
        if cuda:
            model.to(memory_format=torch.channels_last)
        bf16 = cuda and self.config.get("quant") is None
        forward = wrap(model, self.world)  # DDP under torchrun
        # decided on the whole phase, so a resumed run decides as the run it resumes did
        _, height, width = self.bank.shape
        if compiles(self.runtime.compile, schedule.epochs, len(ctx.rows), height * width):
            # Under torchrun an uneven last batch can leave one rank's slice at the full slice's
            # size and another's smaller: there every shape compiles, so all ranks run one kind of graph.
            forward = torch.compile(forward) if self.world.distributed else FullBatchCompile(forward, model)
        loop = Loop(model, forward, plugins, optimizer, self.history, self.world, bf16=bf16, channels_last=cuda,
                    label=f"task {task}" + (f" {phase.name} ({index + 1}/{count})" if count > 1 else ""),
                    progress=self.progress.epoch_done)
        for epoch in range(start_epoch, schedule.epochs):
            rows, selecting = ctx.rows, time.perf_counter()
            for plugin in plugins:
                chosen = plugin.before_epoch(ctx, epoch, rows)
                rows = rows if chosen is None else chosen
            training = time.perf_counter()
            batches = self.training_batches(rows)
            key = (self.runtime.seed, task, epoch) if index == 0 else (self.runtime.seed, task, index, epoch)
            row = loop.epoch(batches.indexed_epoch(key), len(batches), (task, index, epoch), schedule.epochs,
                             first=epoch == start_epoch, draw=lambda rows_, step, k: batches.view(rows_, (*key, step, k)))
            scheduler.step()
            self._time_epoch(training - selecting, time.perf_counter() - training, len(rows), len(ctx.rows))
            for plugin in plugins:
                plugin.after_epoch(ctx, row)
            if self.world.is_main:
                self.board.epoch(row)
                checkpoint.save(self.resume.file("last.pt"), {
                    "task": task, "phase": index, "epoch": epoch, "model": unwrap(model).state_dict(),
                    "optimizer": optimizer.state_dict(), "scheduler": checkpoint.scheduler_state(scheduler),
                    "plugins": _plugin_states(plugins), "rng": torch.get_rng_state(), "history": list(self.history),
                    "config": self.config,
                })
                write_text(self.resume.file("timing.json"), json.dumps(self.timing))
            barrier(self.world)  # ranks move on together, none while the main rank still writes
        sync_buffers(model, self.world)

    def _time_epoch(self, selection: float, training: float, images: int, pool: int) -> None:
        self.timing["selection_seconds"] += selection
        self.timing["train_seconds"] += training
        self.timing["images_seen"] += images
        self.timing["pool_images"] += pool  # what the epoch would have seen on the whole pool (full data)
        self.timing["epochs"] += 1

    # --- outputs ------------------------------------------------------------------------------------
    def payload(self, model: nn.Module, **extra: Any) -> dict[str, Any]:
        return {"model": unwrap(model).state_dict(), "config": self.config, "history": list(self.history), **extra}

    def finish(self, model: nn.Module, curve: Path, *, out: Path | None = None, task_dir: Path | None = None,
               tasks: int = 0, made_by: tuple[str, Mapping[str, str]] = ("", {}), timing: Path | None = None,
               record: Mapping[str, Any] | None = None) -> None:
        """Write the checkpoint (`out`) or the per-task checkpoints (`task_dir`, whose manifest
        names `made_by`: the stage and grid cell) and the curve; drop the resume state. Only the
        main rank writes; every rank then leaves the group. `timing`: a JSON file of the training
        and selection seconds and the images seen (plus `record`), not deterministic."""
        if self.world.is_main:
            if timing is not None:
                timing.parent.mkdir(parents=True, exist_ok=True)
                summary = {k: round(v, 3) if isinstance(v, float) else v for k, v in self.timing.items()}
                write_text(timing, json.dumps({**summary, **(record or {})}, indent=2) + "\n")
            if out is not None:
                checkpoint.save(out, self.payload(model))
            if task_dir is not None:
                with output_dir(task_dir, *made_by) as tmp:
                    for t in range(tasks):
                        shutil.copyfile(self.resume.file(f"task{t}.pt"), tmp / f"task{t}.pt")
            write_curve(curve, self.history, self.curve_columns)
            self.resume.clear()
        self.board.close()
        barrier(self.world)
        close(self.world)
        log.info("%s done in %.1fs", self.run, time.perf_counter() - self.started)


class Loop:
    """The epoch loop of one phase: batches through the plugins' events, one optimizer step each.

    `Engine` drives it with resume and files around it; `fit` drives it alone (tests, notebooks).
    """

    def __init__(self, model: nn.Module, forward: Callable, plugins: Sequence[Plugin], optimizer: torch.optim.Optimizer,
                 history: list[dict[str, Any]], world: World, *, bf16: bool = False, channels_last: bool = False,
                 label: str = "task 0", progress: Callable[[], str] | None = None):
        self.model, self.forward, self.plugins, self.optimizer = unwrap(model), forward, list(plugins), optimizer
        self.history, self.world, self.bf16, self.channels_last, self.label = history, world, bf16, channels_last, label
        self.device = next(self.model.parameters()).device
        self.kill_hook = _kill_hook()
        self.progress = progress  # the stage's epochs done, elapsed time and ETA, for the log line

    def _layout(self, x: torch.Tensor) -> torch.Tensor:
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def epoch(self, batches: Iterable[tuple[Any, torch.Tensor, torch.Tensor]], total: int, where: tuple[int, int, int],
              epochs: int, *, first: bool = False, draw: Callable[[Any, int, int], torch.Tensor] | None = None) -> dict[str, Any]:
        """Train one epoch over `batches` of (store rows, x, y); `draw(rows, step, k)` makes further views."""
        task, phase, epoch = where
        model, world, device = self.model, self.world, self.device
        model.train()
        started = time.perf_counter()
        total_loss = torch.zeros((), device=device)
        correct = torch.zeros((), dtype=torch.int64, device=device)
        seen = counted = 0  # images, and images with logits (a self-supervised loss has none)
        bar = tqdm(batches, total=total, leave=False, disable=None, desc=f"{self.label} epoch {epoch + 1}/{epochs}")
        for step, (rows, x, y) in enumerate(bar):
            x = self._layout(x)
            if world.distributed:
                if len(y) < world.world_size:  # some rank would get no sample: skip it on all ranks
                    log.warning("task %d epoch %d: skipping a last batch of %d images on %d processes",
                                task, epoch + 1, len(y), world.world_size)
                    continue
                if first and step == 0:
                    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=self.bf16):
                        init_lazy_steps(model, x)
                x, y = shard(x, y, world)
            view = None
            if draw is not None:
                view = lambda k, rows=rows, step=step: self._shard(self._layout(draw(rows, step, k)))  # noqa: E731
            batch = Batch(x, y, view)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=self.bf16):
                out = _first_loss(self.plugins, batch, self.forward)
            loss = out.loss
            penalties = [p for p in (plugin.penalty(model) for plugin in self.plugins) if p is not None]
            objective = loss if not penalties else loss + sum(penalties[1:], penalties[0])
            if not torch.isfinite(objective):
                raise LqError(
                    f"task {task}, epoch {epoch + 1}, step {step + 1}: the loss is {objective.item()} "
                    f"(task loss {loss.item()}); training stopped. Lower the learning rate "
                    "or the method's penalty weight (lifelong.methods.<method>.ll_lambda), or check the input data"
                )
            self.optimizer.zero_grad(set_to_none=True)
            objective.backward()
            # Under DDP `.grad` now holds the gradient averaged over ranks, the same on every
            # rank, so plugins reading gradients here (SI, RWalk path integrals) keep identical state.
            for plugin in self.plugins:
                plugin.after_backward(model)
            self.optimizer.step()
            for plugin in self.plugins:
                plugin.after_step(model)
            total_loss += objective.detach() * len(y)
            if out.logits is not None:
                correct += (out.logits.argmax(1) == y).sum()
                counted += len(y)
            seen += len(y)
            self.kill_hook(task, phase, epoch, step)
        total_loss, correct = all_reduce_sum(total_loss, world), all_reduce_sum(correct, world)
        seen = int(all_reduce_sum(torch.tensor(seen, device=device), world).item())
        counted = int(all_reduce_sum(torch.tensor(counted, device=device), world).item())
        row = {
            "step": len(self.history) + 1, "task": task, "epoch": epoch + 1,
            "loss": round(total_loss.item() / max(seen, 1), 6),
            "accuracy": round(correct.item() / max(seen, 1), 6) if counted else None,
            "lr": self.optimizer.param_groups[0]["lr"],
        }
        self.history.append(row)
        accuracy = f", train accuracy {row['accuracy']:.4f}" if counted else ""
        log.info("%s epoch %d/%d: loss %.4f%s, lr %g, %d images (%.1fs)%s", self.label,
                 epoch + 1, epochs, row["loss"], accuracy, row["lr"], seen, time.perf_counter() - started,
                 self.progress() if self.progress else "")
        return row

    def _shard(self, x: torch.Tensor) -> torch.Tensor:
        return shard(x, x.new_zeros(len(x)), self.world)[0] if self.world.distributed else x


def fit(model: nn.Module, batches: Any, schedule: Schedule, plugins: Sequence[Plugin] = (), *, task: int = 0,
        seed: int = 0, history: list[dict[str, Any]] | None = None, forward: Callable | None = None,
        world: World | None = None) -> list[dict[str, Any]]:
    """Train one phase on `batches` (anything with `epoch(seed)` -> (x, y) and `len`), without
    resume state or files: the engine's loop alone, for tests and notebooks. `forward` may be a
    compiled or DDP-wrapped `model`. Returns the history."""
    history = [] if history is None else history
    plugins = list(plugins) or [CrossEntropy()]
    optimization = make_optimizer(unwrap(model), schedule)
    loop = Loop(model, model if forward is None else forward, plugins, optimization.optimizer, history,
                world or World.single())
    for epoch in range(schedule.epochs):
        loop.epoch(((None, x, y) for x, y in batches.epoch((seed, task, epoch))), len(batches), (task, 0, epoch),
                   schedule.epochs, first=epoch == 0)
        optimization.scheduler.step()
    sync_buffers(unwrap(model), world)
    return history

def _read_timing(path: Path) -> dict[str, Any]:
    timing = {"train_seconds": 0.0, "selection_seconds": 0.0, "images_seen": 0, "pool_images": 0, "epochs": 0}
    if path.exists():
        timing.update(json.loads(path.read_text()))
    return timing


def _first_loss(plugins: Sequence[Plugin], batch: Batch, forward: Callable) -> StepLoss:
    for plugin in plugins:
        out = plugin.loss(batch, forward)
        if out is not None:
            return out
    return CrossEntropy().loss(batch, forward)


def _plugin_states(plugins: Sequence[Plugin]) -> dict[str, Any]:
    return {plugin.name: plugin.state_dict() for plugin in plugins}


def _load_plugins(plugins: Sequence[Plugin], states: Mapping[str, Any]) -> None:
    for plugin in plugins:
        plugin.load_state_dict(states.get(plugin.name, {}))
