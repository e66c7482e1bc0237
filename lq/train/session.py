"""What the three training stages share: building models, batches, schedules and outputs."""

from __future__ import annotations

import io
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from torch import nn

from lq.atomic import write_text
from lq.models import create_model
from lq.quant.config import QuantConfig
from lq.quant.convert import quantize_model
from lq.train import checkpoint
from lq.train.data import Augment, Batches, ImageBank
from lq.train.loop import Schedule

log = logging.getLogger("lq")

TRAIN_KEYS = ["train.device", "train.seed", "train.batch_size", "train.momentum", "train.weight_decay",
              "train.lr_gamma", "train.augment", "train.hflip", "train.compile"]


def model_config(params: Mapping[str, Any], bank: ImageBank, *, weight_bits: int = 32, act_bits: int = 32) -> dict[str, Any]:
    """Everything needed to rebuild the model; stored in each checkpoint and checked on load."""
    channels, height, width = bank.shape
    return {
        "arch": params["model.arch"], "num_classes": len(bank.classes), "in_channels": channels,
        "image_size": (height, width), "act_range": params["model.act_range"],
        "weight_bits": weight_bits, "act_bits": act_bits,
        "weight_quantizer": params.get("quant.weight_quantizer", "proxq") if weight_bits < 32 else "none",
        "act_quantizer": params.get("quant.act_quantizer", "uniform") if act_bits < 32 else "none",
    }


def build_model(config: Mapping[str, Any], device: torch.device) -> nn.Module:
    """The float model of `config`, converted to its bit widths by module swap."""
    model = create_model(config["arch"], num_classes=config["num_classes"], in_channels=config["in_channels"],
                         image_size=tuple(config["image_size"]))
    if config["weight_bits"] < 32 or config["act_bits"] < 32:
        requantize(model, config)
    return model.to(device)


def requantize(model: nn.Module, config: Mapping[str, Any]) -> nn.Module:
    quant = QuantConfig(
        weight_bits=config["weight_bits"], act_bits=config["act_bits"],
        weight_quantizer=config["weight_quantizer"] if config["weight_bits"] < 32 else "proxq",
        act_quantizer=config["act_quantizer"] if config["act_bits"] < 32 else "uniform",
        act_range=config["act_range"],
    )
    return quantize_model(model, quant)


def load_model(path: Path, device: torch.device, expect: Mapping[str, Any] | None = None) -> tuple[nn.Module, dict]:
    """Rebuild the model a checkpoint was made with and load its weights."""
    payload = checkpoint.load(path, expect)
    model = build_model(payload["config"], device)
    model.load_state_dict(payload["model"])
    return model, payload


def schedule(params: Mapping[str, Any], phase: str) -> Schedule:
    return Schedule(
        epochs=params[f"{phase}.epochs"], lr=params[f"{phase}.lr"], milestones=tuple(params[f"{phase}.milestones"]),
        gamma=params["train.lr_gamma"], momentum=params["train.momentum"], weight_decay=params["train.weight_decay"],
    )


def training_batches(bank: ImageBank, rows: torch.Tensor, params: Mapping[str, Any]) -> Batches:
    """Shuffled, augmented batches (pad = image size / 8: 4 pixels on CIFAR, 1 on 8x8 digits)."""
    augment = None
    if params["train.augment"]:
        augment = Augment(pad=max(1, bank.shape[1] // 8), hflip=params["train.hflip"])
    return Batches(bank, rows, params["train.batch_size"], shuffle=True, augment=augment)


def compiled(model: nn.Module, enabled: bool):
    """`torch.compile(model)` when asked for; the caller keeps `model` for state dicts."""
    return torch.compile(model) if enabled else model


def write_curve(path: Path, history: list[dict[str, Any]]) -> None:
    """Per-epoch training curve as CSV (a DVC plot); deterministic, no timings."""
    buffer = io.StringIO()
    pd.DataFrame(history, columns=["step", "task", "epoch", "loss", "accuracy", "lr"]).to_csv(
        buffer, index=False, lineterminator="\n")
    write_text(path, buffer.getvalue())


class Board:
    """TensorBoard scalars per run under runs/<stage>-<cell>/, the event file opened at the first
    epoch written (so a process that logs nothing, e.g. a non-main DDP rank, leaves none)."""

    def __init__(self, run: str):
        self.log_dir = Path("runs") / run
        self.writer = None

    def epoch(self, row: Mapping[str, Any]) -> None:
        if self.writer is None:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(log_dir=str(self.log_dir))
        for key in ("loss", "accuracy", "lr"):
            self.writer.add_scalar(f"train/{key}", row[key], row["step"])
        self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
