"""The accuracy matrix of a lifelong run and the metrics derived from it (SPEC 8).

R[t][j] is the top-1 accuracy on task j's test split after training task t (the full matrix, so
accuracy on tasks not yet seen is visible too). This is the only code that reads test data; every
model is rebuilt from what its checkpoint says it is (`lq.train.spec`).
"""

from __future__ import annotations

import copy
import io
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from lq import grid, metrics, plots
from lq.atomic import write_text
from lq.io import read_table, task_count, write_json
from lq.quant import levels
from lq.quant.config import QuantConfig
from lq.quant.convert import model_bit_widths
from lq.train import spec
from lq.train.data import Batches, load_bank
from lq.train.device import describe, resolve_device, use_deterministic_kernels

log = logging.getLogger("lq")


@dataclass(frozen=True)
class Expected:
    """What the lifelong checkpoints must be: this grid cell's method and quantization.

    `quantizer` is the cell's quantizer axis value, which names a procedure where it is one
    (`inq` trains `pow2` weights); the metrics report it, so INQ and pow2 runs stay apart.
    """

    method: str
    quant: QuantConfig | None
    seed: int
    quantizer: str = ""


def reported_quantizer(quant: QuantConfig | None, cell_quantizer: str) -> str:
    """The metrics' `quantizer`: the cell's axis value; at 32-bit weights the quantizer that acted
    (the float weights' default name), with the cell's coreset suffix kept (proxq+acs10), so cells
    that differ only in their coreset stay apart in the comparison."""
    if quant is not None and quant.weight_bits < 32 and cell_quantizer:
        return cell_quantizer
    coreset = grid.split_quantizer(cell_quantizer)[1]
    return spec.weight_quantizer(quant) + (f"+{coreset}" if coreset is not None else "")


@torch.no_grad()
def accuracy(model: torch.nn.Module, batches: Batches) -> tuple[float, float]:
    """(top-1, top-5) accuracy over all batches."""
    model.eval()
    correct = torch.zeros(2, dtype=torch.int64, device=batches.rows.device)
    for x, y in batches:
        correct += metrics.topk_correct(model(x), y, ks=(1, 5))
    top1, top5 = (correct.double() / len(batches.rows)).tolist()
    return round(top1, 6), round(top5, 6)


def size_bits(model: torch.nn.Module) -> int:
    numels = {name: p.numel() for name, p in model.named_parameters()}
    return metrics.model_size_bits(model_bit_widths(model), numels)


def evaluate(expected: Expected, *, device: str, deterministic: bool, batch_size: int, store: Path, split: Path,
             pretrain: Path, qat8: Path, lifelong: Path) -> tuple[dict[str, Any], np.ndarray]:
    """The metrics summary of one grid cell, and its accuracy matrix."""
    use_deterministic_kernels(deterministic)
    where = resolve_device(device)
    bank = load_bank(store, where)
    log.info("device %s", describe(where))
    num_tasks, num_classes = task_count(split), len(bank.classes)
    tests = [Batches(bank, bank.rows(read_table(split / f"test{j}.csv", num_classes), f"test{j}.csv"),
                     batch_size, shuffle=False) for j in range(num_tasks)]
    fp32, _ = spec.load(pretrain, where, {"weight_bits": 32, "act_bits": 32, "num_classes": num_classes})
    w8a8, w8a8_payload = spec.load(qat8, where, {"num_classes": num_classes})
    quant = expected.quant
    cell = {**spec.quant_view(quant), "num_classes": num_classes, "method": expected.method}
    R, R5 = np.zeros((num_tasks, num_tasks)), np.zeros((num_tasks, num_tasks))
    for t in range(num_tasks):
        model, payload = spec.load(lifelong / f"task{t}.pt", where, cell)
        for j in range(num_tasks):
            R[t, j], R5[t, j] = accuracy(model, tests[j])
        log.info("after task %d: %s", t, " ".join(f"{100 * a:.2f}" for a in R[t]))
    levels.check_power_of_two(model)  # a pow2 (or INQ) model's layers hold only their levels
    forgetting = metrics.forgetting(R)
    memory_images = max(payload.get("memory_images") or [0])
    summary = {
        "method": expected.method,
        "bits": spec.bits_label(quant),
        "quantizer": reported_quantizer(quant, expected.quantizer),
        "seed": expected.seed,
        "num_tasks": num_tasks,
        "average_accuracy": round(metrics.average_accuracy(R), 6),
        "forgetting": round(forgetting.mean, 6),
        "bwt": round(metrics.backward_transfer(R), 6),
        "average_accuracy_curve": [round(a, 6) for a in metrics.average_accuracy_curve(R)],
        "forgetting_per_task": [round(f, 6) for f in forgetting.per_task],
        "accuracy_matrix": R.round(6).tolist(),
        "top5_matrix": R5.round(6).tolist(),
        "fp32_task0_accuracy": accuracy(fp32, tests[0])[0],
        "w8a8_task0_accuracy": accuracy(w8a8, tests[0])[0],
        "w8a8_bits": spec.describe_bits(w8a8_payload["config"]),
        "model_size_bits": size_bits(model),
        "fp32_model_size_bits": size_bits(fp32),
        "replay_memory_images": memory_images,
        "replay_memory_bytes": memory_images * int(np.prod(bank.shape)),  # uint8 images
    }
    zeros = levels.zero_shares(model)
    if zeros:  # power-of-two weights: the share of each layer a shift-and-add kernel skips
        summary["weight_zero_share"] = zeros
    qat8_quant = w8a8_payload["config"].get("quant")
    if qat8_quant and qat8_quant["weight_quantizer"] == "pow2":
        # What qat8's training (INQ or straight-through) bought: the FP32 model's weights put on
        # the same power-of-two levels (n1 from each layer's max|W|) at qat8's weight bits, without
        # retraining. Activations stay float: an FP32 model's activations are not within the
        # clipped [0, 1] grid, which would measure the activation quantizer, not the weights.
        weights_only = {**qat8_quant, "act_bits": 32}
        oneshot = spec.convert(copy.deepcopy(fp32), QuantConfig.from_dict(weights_only))
        summary["w8a8_oneshot_task0_accuracy"] = accuracy(oneshot, tests[0])[0]
    log.info("average accuracy %.4f, forgetting %.4f, BWT %.4f", summary["average_accuracy"],
             summary["forgetting"], summary["bwt"])
    return summary, R


def write_outputs(summary: dict[str, Any], R: np.ndarray, *, metrics_path: Path, curve: Path, figure: Path) -> None:
    """The metrics JSON (a DVC metric), the average-accuracy-per-task CSV and the matrix PNG."""
    write_json(metrics_path, summary)
    buffer = io.StringIO()
    pd.DataFrame({"task": range(len(R)), "average_accuracy": summary["average_accuracy_curve"]}).to_csv(
        buffer, index=False, lineterminator="\n")
    write_text(curve, buffer.getvalue())
    plots.matrix_figure(figure, R, f"{summary['method']} {summary['bits']}: accuracy (%)")
