"""Multi-process data-parallel training of one stage (DistributedDataParallel under torchrun).

Every rank builds the same `Batches` and so draws the same global batch at each step (they
depend only on (seed, task, epoch)); each rank trains on its own contiguous slice of it and DDP
averages the gradients. With an evenly divisible batch one step therefore equals a step of one
process on the whole batch, up to float error. Outside torchrun (no WORLD_SIZE) nothing here
does anything: `World.single()` and the model itself.

Where N processes differ from one (beyond float error):
- CPU BatchNorm is per rank (SyncBatchNorm runs on GPUs only), see `wrap`;
- an uneven last batch weights its slices equally (`shard`); a last batch smaller than N is
  skipped on every rank (`fit`), since a rank with no sample cannot take part in the step;
- LSQ scales a learned step's gradient by 1/sqrt(numel of its input), and an activation's
  input is the rank's slice, so activation steps get sqrt(N) times one process's gradient.

Launch a stage on N processes with `torchrun --standalone --nproc_per_node=N -m lq <step> ...`
(or `relaunch_under_torchrun`, which runs that command for a plain `python -m lq <step>`).
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

log = logging.getLogger("lq")


@dataclass(frozen=True)
class World:
    """Where this process stands among the training processes (torchrun's RANK, WORLD_SIZE, LOCAL_RANK)."""

    rank: int
    world_size: int
    local_rank: int

    @property
    def is_main(self) -> bool:
        """Rank 0 alone writes files (checkpoints, curves, TensorBoard), so ranks never race on them."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @classmethod
    def single(cls) -> World:
        """The usual case: one process, which is its own main rank."""
        return cls(rank=0, world_size=1, local_rank=0)


def init_world(device: torch.device) -> tuple[World, torch.device]:
    """Join the process group torchrun set up, if any; return the world and this rank's device.

    On CUDA each rank takes the GPU of its local rank (`cuda:LOCAL_RANK`) and talks NCCL;
    on CPU the ranks talk gloo. Without torchrun (WORLD_SIZE unset or 1) the device is returned
    unchanged and no process group is created.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return World.single(), device
    world = World(rank=int(os.environ["RANK"]), world_size=world_size, local_rank=int(os.environ.get("LOCAL_RANK", "0")))
    if device.type == "cuda":
        device = torch.device("cuda", world.local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    log.info("rank %d of %d (local rank %d) on %s", world.rank, world.world_size, world.local_rank, device)
    return world, device


def shard(x: torch.Tensor, y: torch.Tensor, world: World | None) -> tuple[torch.Tensor, torch.Tensor]:
    """This rank's contiguous slice of a global batch (equal sizes when the batch divides evenly).

    DDP averages the per-rank gradients with equal weights, so only equal slices make the
    average of the per-rank mean losses the mean loss of the whole batch; an uneven last batch
    of an epoch gives the samples of the smaller slices slightly more weight.
    """
    if world is None or not world.distributed:
        return x, y
    return x.tensor_split(world.world_size)[world.rank], y.tensor_split(world.world_size)[world.rank]


def sync_batchnorm_supported(device: torch.device) -> bool:
    """SyncBatchNorm's training forward refuses CPU tensors (torch 2.15: GPU, XPU, HPU, PrivateUse1 only)."""
    return device.type in ("cuda", "xpu", "hpu", torch._C._get_privateuse1_backend_name())


def wrap(model: nn.Module, world: World | None) -> nn.Module:
    """The module to call in the training loop: the model itself for one process, else DDP over it.

    BatchNorm becomes SyncBatchNorm (in place, keeping the same parameters and buffers, so state
    dict keys are unchanged) where the device supports it, so batch statistics are those of the
    whole global batch as in one process. On CPU it stays plain BatchNorm: each rank normalises
    with its own slice's statistics and the running statistics follow rank 0 (DDP broadcasts
    buffers from rank 0 at each forward), so multi-process CPU training differs slightly from
    one process for models with BatchNorm.
    Checkpoints must store `model.state_dict()`, never the wrapper's (its keys gain "module.").
    """
    if world is None or not world.distributed:
        return model
    device = next(model.parameters()).device
    if sync_batchnorm_supported(device) and not any(isinstance(m, nn.SyncBatchNorm) for m in model.modules()):
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    device_ids = [device] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=device_ids)


def unwrap(model: nn.Module) -> nn.Module:
    """The trained module inside a DDP wrapper (or the model itself)."""
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


@torch.no_grad()
def init_lazy_steps(model: nn.Module, x: torch.Tensor) -> None:
    """Initialise learned quantizer steps (LSQ) from the whole global batch `x`.

    An LSQ step initialises itself from the first input it sees; under DDP each rank would see
    only its slice and the ranks' models would silently drift apart. One forward of the whole
    batch (which every rank has) initialises them exactly as one process would; BatchNorm's
    running statistics are put back, so that forward leaves no other trace.
    """
    if not any(name.endswith("step_initialized") and not bool(flag) for name, flag in model.named_buffers()):
        return
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    saved = [(m.running_mean.clone(), m.running_var.clone(), m.num_batches_tracked.clone()) for m in norms]
    model(x)
    for m, (mean, var, count) in zip(norms, saved):
        m.running_mean.copy_(mean)
        m.running_var.copy_(var)
        m.num_batches_tracked.copy_(count)


def all_reduce_sum(tensor: torch.Tensor, world: World | None) -> torch.Tensor:
    """The sum of `tensor` over all ranks (for epoch statistics); the tensor itself for one process."""
    if world is None or not world.distributed:
        return tensor
    total = tensor.clone()
    dist.all_reduce(total, op=dist.ReduceOp.SUM)
    return total


def sync_buffers(model: nn.Module, world: World | None) -> None:
    """Give every rank the main rank's buffers (BatchNorm running statistics) after training.

    Parameters stay identical across ranks under DDP, but plain (CPU) BatchNorm updates its
    running statistics from each rank's own slice after DDP's per-forward broadcast; this makes
    every rank hold exactly the model the main rank saves, e.g. for a method's next importance.
    """
    if world is not None and world.distributed:
        for buffer in model.buffers():
            dist.broadcast(buffer, src=0)


def barrier(world: World | None) -> None:
    """Wait for every rank, e.g. until the main rank has finished writing a file the others read."""
    if world is not None and world.distributed:
        dist.barrier()


def close(world: World | None) -> None:
    """Leave the process group (at the end of a stage) so the process exits cleanly."""
    if world is not None and world.distributed and dist.is_initialized():
        dist.destroy_process_group()


def torchrun_command(step: str, argv: list[str], nproc: int) -> list[str] | None:
    """The torchrun command that reruns `python -m lq <step> <argv>` on `nproc` processes, or
    None when there is nothing to relaunch: one process asked for, or already under torchrun."""
    if nproc <= 1 or "WORLD_SIZE" in os.environ:
        return None
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
            "-m", "lq", step, *argv]


def relaunch_under_torchrun(step: str, argv: list[str], nproc: int) -> int | None:
    """Run this step on `nproc` processes under torchrun and return its exit code; None means
    "run here": nproc <= 1, or this process is already one of torchrun's workers."""
    command = torchrun_command(step, argv, nproc)
    if command is None:
        return None
    log.info("relaunching on %d processes: %s", nproc, " ".join(command))
    return subprocess.run(command, check=False).returncode
