"""Linear evaluation of a frozen backbone quantized post-training at every (weight, activation) pair.

The protocol (SPEC 11; the release's `workers/linear.py`): the backbone is frozen and in eval mode
(batch-norm statistics fixed), quantized post-training by min/max observers calibrated on
training images, its classifier replaced by a float linear head trained on its features, and the
head's top-1 accuracy on the test images reported. Here, per pair:

1. the backbone's float view is prepared for PTQ and calibrated once on a seeded sample of
   `calibration_images` images of train_0 (`lq.quant.ptq`, the `ptq` stage's path; the release
   calibrates on a single batch, SPEC 11's known defect); `set_bits` then puts it at (w, a), with
   the stem convolution and its activation never below `stem_bits` (the release's BIT_CONFIG keeps
   them at 8; 2 gives the pair's bits everywhere, as the `ptq` stage);
2. the features (pooled, before the head) of every train_0 image and every test_0 image are
   computed once, un-augmented;
3. a linear head over train_0's classes is trained on the standardised train_0 features (SGD with
   momentum, cosine decay, seeded shuffles; the same seed at every pair), and its test_0 top-1 is
   the pair's accuracy.

Features computed once instead of the release's augmented head training (100 epochs over
augmented images at lr 30, re-running the backbone every step) make a 24-pair sweep take seconds;
the cost is a somewhat lower absolute accuracy, the same for every model compared. Task 0's data
(train_0 for the head, test_0 for the score) is what the backbone was pretrained on and what the
lifelong chain starts from; no test image is read before step 3's score (calibration and head
read training images only: `calibration_rows` and `_training_rows` refuse any other).
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import torch
import torch.nn.functional as F

from lq import ptq as sweep
from lq.errors import LqError
from lq.io import read_table
from lq.manifest import sha256
from lq.quant import ptq
from lq.quant.ptq import PtqActivation, PtqConv2d
from lq.ssl.settings import LinearSettings
from lq.train import spec
from lq.train.data import Batches, ImageBank, load_bank
from lq.train.device import describe, resolve_device

log = logging.getLogger("lq")


@dataclass
class LinearResult:
    accuracy: dict[tuple[int, int], float]       # (w, a) -> test top-1
    ranges: dict[str, tuple[float, float]]       # calibrated activation ranges
    heads: dict[tuple[int, int], torch.Tensor]   # (w, a) -> the trained head's weights (tests)
    digest: str                                  # the backbone's weights (unchanged by the sweep)
    classes: list[int]


def set_stem_floor(model: torch.nn.Module, weight_bits: int, act_bits: int, floor: int) -> None:
    """Raise the first convolution and the first activation point to at least `floor` bits."""
    conv = next(m for m in model.modules() if isinstance(m, PtqConv2d))
    act = next(m for m in model.modules() if isinstance(m, PtqActivation))
    conv.set_bits(max(weight_bits, floor))
    act.set_bits(max(act_bits, floor))


@torch.no_grad()
def features(model: torch.nn.Module, bank: ImageBank, rows: torch.Tensor, batch_size: int) -> torch.Tensor:
    model.eval()
    return torch.cat([model.forward_features(x).float() for x, _ in Batches(bank, rows, batch_size, shuffle=False)])


def fit_head(x: torch.Tensor, y: torch.Tensor, classes: int, settings: LinearSettings, seed: int) -> torch.nn.Linear:
    """A linear head trained on fixed features (standardised by the caller), seeded."""
    torch.manual_seed(seed)
    head = torch.nn.Linear(x.shape[1], classes).to(x.device)
    optimizer = torch.optim.SGD(head.parameters(), lr=settings.lr, momentum=settings.momentum,
                                weight_decay=settings.weight_decay)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=settings.epochs)
    generator = torch.Generator().manual_seed(seed)
    for _ in range(settings.epochs):
        order = torch.randperm(len(x), generator=generator).to(x.device)
        for start in range(0, len(x), settings.batch_size):
            pick = order[start : start + settings.batch_size]
            optimizer.zero_grad(set_to_none=True)
            F.cross_entropy(head(x[pick]), y[pick]).backward()
            optimizer.step()
        schedule.step()
    return head


def _training_rows(bank: ImageBank, table: pd.DataFrame) -> torch.Tensor:
    ids = table["image"].astype(str)
    if not ids.str.startswith("train/").all():
        raise LqError(f"the linear head may train on training images only, got {ids[~ids.str.startswith('train/')].iloc[0]!r}")
    return bank.rows(table, "linear evaluation training set")


def linear_eval(model: torch.nn.Module, bank: ImageBank, train: pd.DataFrame, test: pd.DataFrame,
                settings: sweep.Settings, linear: LinearSettings) -> LinearResult:
    """Test top-1 of a linear head on `model`'s frozen features at every pair of `settings`."""
    before = ptq.weights_digest(model)
    prepared = ptq.prepare(ptq.float_view(model), settings.weight_quantizer, settings.act_quantizer)
    calibration = sweep.calibration_rows(bank, train, settings.calibration_images, (settings.seed, 0))
    ranges = ptq.calibrate(prepared, Batches(bank, calibration, settings.batch_size, shuffle=False))
    train_rows = _training_rows(bank, train)
    train_labels = bank.labels[train_rows]
    classes = sorted(set(train_labels.tolist()))
    index = torch.full((len(bank.classes),), -1, dtype=torch.long, device=train_labels.device)
    index[torch.tensor(classes, device=index.device)] = torch.arange(len(classes), device=index.device)
    accuracy, heads = {}, {}
    test_rows = None
    for w, a in settings.pairs():
        ptq.set_bits(prepared, w, a)
        set_stem_floor(prepared, w, a, linear.stem_bits)
        x = features(prepared, bank, train_rows, settings.batch_size)
        mean, std = x.mean(0), x.std(0).clamp_min(1e-6)
        head = fit_head((x - mean) / std, index[train_labels], len(classes), linear, settings.seed)
        heads[(w, a)] = head.weight.detach().clone()
        if test_rows is None:  # the test images, read only for the score
            test_rows = bank.rows(test, "test0.csv")
        with torch.no_grad():
            predicted = head((features(prepared, bank, test_rows, settings.batch_size) - mean) / std).argmax(1)
        truth = index[bank.labels[test_rows]]
        accuracy[(w, a)] = round(float((predicted == truth).double().mean()), 6)
        log.info("%s: linear evaluation top-1 %.2f", sweep.pair_name(w, a), 100 * accuracy[(w, a)])
    if ptq.weights_digest(model) != before:
        raise LqError("the linear evaluation changed the backbone's weights; this is a bug")
    return LinearResult(accuracy, ranges, heads, before, classes)


def evaluate(model_path: Path, *, store: Path, split: Path, settings: sweep.Settings,
             linear: LinearSettings) -> dict[str, Any]:
    """Stage `ssl_linear`: the summary (a DVC metric) of one self-supervised backbone."""
    where = resolve_device(settings.device)
    log.info("device %s", describe(where))
    bank = load_bank(store, where)
    num_classes = len(bank.classes)
    model, payload = spec.load(model_path, where, {"num_classes": num_classes})
    train0, test0 = (read_table(split / f"{name}0.csv", num_classes) for name in ("train", "test"))
    result = linear_eval(model, bank, train0, test0, settings, linear)
    method = payload["config"].get("ssl", "?")
    return {
        "checkpoint": str(model_path), "checkpoint_sha256": sha256(model_path), "stage": "ssl", "method": method,
        "trained_bits": "w32a32", "title": f"Linear evaluation of the {method} backbone (task 0, PTQ at each pair)",
        "float": "the backbone itself (FP32)", "weight_quantizer": settings.weight_quantizer,
        "act_quantizer": settings.act_quantizer,
        "calibration": {"images": settings.calibration_images, "seed": settings.seed, "from": ["train0.csv"]},
        "linear": {**asdict(linear), "trained_on": "train0.csv (un-augmented features)", "tested_on": "test0.csv",
                   "classes": result.classes},
        "weight_bits": list(settings.weight_bits), "act_bits": list(settings.act_bits),
        "weights_sha256": result.digest,
        "float_accuracy": result.accuracy.get((sweep.FLOAT, sweep.FLOAT)),
        "accuracy": {sweep.pair_name(w, a): acc for (w, a), acc in result.accuracy.items()},
        "activation_ranges": {n: [round(lo, 6), round(hi, 6)] for n, (lo, hi) in result.ranges.items()},
    }

