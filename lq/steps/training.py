"""The shared flow of the training stages: data, model, resumable training, outputs.

Under torchrun every rank runs the whole stage on its own process and device; training is
data-parallel (`lq.train.distributed`), and only the main rank writes outputs, resume state and
TensorBoard scalars.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from torch import nn

from lq.errors import LqError
from lq.methods import Method
from lq.steps.io import read_table
from lq.train import checkpoint
from lq.train.checkpoint import ResumeDir
from lq.train.data import Batches, load_bank
from lq.train.device import describe, resolve_device, use_deterministic_kernels
from lq.train.distributed import barrier, close, init_world, relaunch_under_torchrun, wrap
from lq.train.loop import fit
from lq.train.session import Board, build_model, compiled, model_config, requantize, schedule, training_batches, write_curve

log = logging.getLogger("lq")


def relaunched(step: str, argv: list[str], params: Mapping[str, Any]) -> bool:
    """True when this step ran on `train.nproc` processes under torchrun (and succeeded)."""
    nproc = params["train.nproc"]
    code = relaunch_under_torchrun(step, argv, nproc)
    if code is None:
        return False
    if code != 0:
        raise LqError(f"{step} on {nproc} processes under torchrun failed (exit {code}); see the log above")
    return True


class TrainingRun:
    """One training stage: owns the device, the image bank, the resume folder and the history."""

    def __init__(self, stage: str, params: Mapping[str, Any], store: Path, inputs: list[Path]):
        self.stage, self.params = stage, params
        self.started = time.perf_counter()
        use_deterministic_kernels(params["train.deterministic"])
        self.device = resolve_device(params["train.device"])
        self.world, self.device = init_world(self.device)
        if not self.world.is_main:
            log.setLevel(logging.WARNING)  # each epoch is logged once, by the main rank
        self.bank = load_bank(store, self.device)
        # Named by stage and grid cell: runs of other cells may train beside this one.
        self.resume = ResumeDir(params.run_name, checkpoint.fingerprint(dict(params), inputs))
        self.history: list[dict[str, Any]] = []
        self.board = Board(params.run_name)
        log.info("device %s; %d images of shape %s in %d classes", describe(self.device),
                 len(self.bank.labels), self.bank.shape, len(self.bank.classes))

    def table(self, path: Path) -> pd.DataFrame:
        return read_table(path, len(self.bank.classes))

    def config(self, weight_bits: int, act_bits: int) -> dict[str, Any]:
        return {**model_config(self.params, self.bank, weight_bits=weight_bits, act_bits=act_bits), "stage": self.stage}

    def new_model(self, weight_bits: int, act_bits: int) -> nn.Module:
        torch.manual_seed(self.params["train.seed"])
        self.model_cfg = self.config(weight_bits, act_bits)
        return build_model(self.model_cfg, self.device)

    def model_from(self, path: Path, *, weight_bits: int, act_bits: int, source_bits: tuple[int, int] | None = None) -> nn.Module:
        """Load an earlier stage's model, check it fits this data and model, convert to new bits."""
        expect = {k: v for k, v in self.config(32, 32).items() if k in ("arch", "num_classes", "in_channels", "image_size")}
        if source_bits is not None:
            expect.update(weight_bits=source_bits[0], act_bits=source_bits[1])
        payload = checkpoint.load(path, expect)
        model = build_model(payload["config"], self.device)
        model.load_state_dict(payload["model"])
        self.model_cfg = self.config(weight_bits, act_bits)
        requantize(model, self.model_cfg)
        return model.to(self.device)

    def train_task(self, model: nn.Module, table: pd.DataFrame, *, task: int, phase: str,
                   method: Method | None = None, source: str = "training table") -> None:
        rows = self.bank.rows(table, source)
        log.info("%s task %d: %d training images", self.stage, task, len(rows))
        # On a GPU: NHWC convolutions everywhere, bfloat16 autocast for the full-precision stage
        # (quantized stages keep fp32 so the k-bit grids are exact). On CPU both measured slower.
        cuda = self.device.type == "cuda"
        if cuda:
            model.to(memory_format=torch.channels_last)
        full_precision = self.model_cfg["weight_bits"] == 32 and self.model_cfg["act_bits"] == 32
        forward = compiled(wrap(model, self.world), self.params["train.compile"])  # wrap: DDP under torchrun
        fit(model, training_batches(self.bank, rows, self.params), schedule(self.params, phase), method or Method(),
            task=task, seed=self.params["train.seed"], resume=self.resume, config=self.model_cfg,
            history=self.history, forward=forward, on_epoch=self.board.epoch if self.world.is_main else None,
            bf16=cuda and full_precision, channels_last=cuda, world=self.world)

    def eval_batches(self, table: pd.DataFrame, batch_size: int) -> Batches:
        return Batches(self.bank, self.bank.rows(table), batch_size, shuffle=False)

    def payload(self, model: nn.Module, **extra: Any) -> dict[str, Any]:
        return {"model": model.state_dict(), "config": self.model_cfg, "history": list(self.history), **extra}

    def finish(self, model: nn.Module, out: Path | None, curve: Path) -> None:
        """Write the checkpoint (unless the stage wrote its own) and the curve; drop resume state.

        Only the main rank writes; the others wait for it, then every rank leaves the process group.
        """
        if self.world.is_main:
            if out is not None:
                checkpoint.save(out, self.payload(model))
            write_curve(curve, self.history)
            self.resume.clear()
        self.board.close()
        barrier(self.world)
        close(self.world)
        log.info("%s done in %.1fs", self.stage, time.perf_counter() - self.started)
