"""One training loop for every stage: SGD + MultiStep decay, method events, resumable epochs.

After every epoch the full state (model, optimizer, scheduler, method, history, RNG) is saved
atomically to the stage's resume folder; a rerun after a kill continues from the last finished
epoch. Batches depend only on (seed, task, epoch), so on CPU the resumed run ends bit-identical
to an uninterrupted one. Under torchrun (`world`) each rank trains on its slice of every global
batch through DDP, epoch statistics are summed over ranks, and only the main rank writes files.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from tqdm import tqdm

from lq.errors import LqError
from lq.methods.base import Method
from lq.train import checkpoint
from lq.train.checkpoint import ResumeDir
from lq.train.data import Batches
from lq.train.distributed import World, all_reduce_sum, barrier, init_lazy_steps, shard, sync_buffers, unwrap

log = logging.getLogger("lq")


@dataclass(frozen=True)
class Schedule:
    """One phase's optimisation settings (params.yaml: `train.*` and the phase's section)."""

    epochs: int
    lr: float
    milestones: tuple[int, ...]
    gamma: float
    momentum: float
    weight_decay: float


def make_optimizer(model: nn.Module, schedule: Schedule) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.MultiStepLR]:
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=schedule.lr, momentum=schedule.momentum, weight_decay=schedule.weight_decay)
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=list(schedule.milestones), gamma=schedule.gamma)
    return optimizer, scheduler


# A test hook: `LQ_TEST_KILL_AFTER=task:epoch:step` makes the process kill itself with SIGKILL at
# that point, so the resume tests interrupt training at a known place instead of by timing.
def _kill_hook() -> Callable[[int, int, int], None]:
    import os
    import signal

    spec = os.environ.get("LQ_TEST_KILL_AFTER")
    if not spec:
        return lambda *_: None
    target = tuple(int(v) for v in spec.split(":"))

    def hook(task: int, epoch: int, step: int) -> None:
        if (task, epoch, step) == target:
            os.kill(os.getpid(), signal.SIGKILL)

    return hook


def fit(model: nn.Module, batches: Batches, schedule: Schedule, method: Method, *, task: int, seed: int,
        resume: ResumeDir | None, config: dict[str, Any], history: list[dict[str, Any]],
        forward: Callable[[torch.Tensor], torch.Tensor] | None = None,
        on_epoch: Callable[[dict[str, Any]], None] | None = None,
        bf16: bool = False, channels_last: bool = False, world: World | None = None) -> None:
    """Train `model` on `batches` for `schedule.epochs` epochs, resuming if a checkpoint allows.

    `history` gets one row per epoch (step, task, epoch, loss, accuracy, lr); `forward` may be
    a compiled version of the model. `bf16` runs forward and loss under bfloat16 autocast and
    `channels_last` feeds NHWC batches (both for CUDA; the stages enable them there only).
    With a multi-process `world`, `forward` is the DDP wrapper of `model` (`distributed.wrap`);
    `model` itself is the unwrapped module, whose state dict is saved.
    """
    forward = model if forward is None else forward  # (a compiled module has no truth value)
    model = unwrap(model)
    distributed = world is not None and world.distributed
    optimizer, scheduler = make_optimizer(model, schedule)
    start_epoch = 0
    last = resume.latest() if resume else None
    if last is not None:
        state = checkpoint.load(last)
        if state["task"] == task:
            model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            checkpoint.load_scheduler_state(scheduler, state["scheduler"])
            method.load_state_dict(state["method"])
            torch.set_rng_state(state["rng"])
            history[:] = state["history"]
            start_epoch = state["epoch"] + 1
            log.info("task %d: resuming after epoch %d from %s", task, state["epoch"] + 1, last)

    kill_hook = _kill_hook()
    device = next(model.parameters()).device
    for epoch in range(start_epoch, schedule.epochs):
        model.train()
        started = time.perf_counter()
        total_loss = torch.zeros((), device=device)
        correct = torch.zeros((), dtype=torch.int64, device=device)
        seen = 0
        bar = tqdm(batches.epoch((seed, task, epoch)), total=len(batches), leave=False, disable=None,
                   desc=f"task {task} epoch {epoch + 1}/{schedule.epochs}")
        for step, (x, y) in enumerate(bar):
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            if distributed:
                if len(y) < world.world_size:  # some rank would get no sample: skip it on all ranks
                    log.warning("task %d epoch %d: skipping a last batch of %d images on %d processes",
                                task, epoch + 1, len(y), world.world_size)
                    continue
                if epoch == start_epoch and step == 0:
                    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                        init_lazy_steps(model, x)
                x, y = shard(x, y, world)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                logits = forward(x)
                loss = method.loss(logits, y)
            penalty = method.penalty(model)
            objective = loss if penalty is None else loss + penalty
            if not torch.isfinite(objective):
                raise LqError(
                    f"task {task}, epoch {epoch + 1}, step {step + 1}: the loss is {objective.item()} "
                    f"(task loss {loss.item()}); training stopped. Lower the learning rate "
                    "or the method's penalty weight (lifelong.ll_lambda.<method>), or check the input data"
                )
            optimizer.zero_grad(set_to_none=True)
            objective.backward()
            # Under DDP `.grad` now holds the gradient averaged over ranks, the same on every
            # rank (the penalty is computed on the full parameters, identically everywhere), so
            # methods reading gradients here (SI, RWalk path integrals) keep identical state.
            method.after_backward(model)
            optimizer.step()
            method.after_step(model)
            total_loss += objective.detach() * len(y)
            correct += (logits.argmax(1) == y).sum()
            seen += len(y)
            kill_hook(task, epoch, step)
        total_loss, correct = all_reduce_sum(total_loss, world), all_reduce_sum(correct, world)
        seen = int(all_reduce_sum(torch.tensor(seen, device=device), world).item())
        row = {
            "step": len(history) + 1, "task": task, "epoch": epoch + 1,
            "loss": round(total_loss.item() / max(seen, 1), 6),
            "accuracy": round(correct.item() / max(seen, 1), 6),
            "lr": optimizer.param_groups[0]["lr"],
        }
        scheduler.step()
        history.append(row)
        log.info("task %d epoch %d/%d: loss %.4f, train accuracy %.4f, lr %g, %d images (%.1fs)", task,
                 epoch + 1, schedule.epochs, row["loss"], row["accuracy"], row["lr"], seen,
                 time.perf_counter() - started)
        if on_epoch:
            on_epoch(row)
        if resume is not None and (world is None or world.is_main):
            checkpoint.save(resume.file("last.pt"), {
                "task": task, "epoch": epoch, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                "scheduler": checkpoint.scheduler_state(scheduler), "method": method.state_dict(),
                "rng": torch.get_rng_state(), "history": list(history), "config": config,
            })
        if resume is not None:
            barrier(world)  # ranks move on together, none while the main rank still writes
    sync_buffers(model, world)
