"""Stage `evaluate`: the accuracy matrix and the lifelong metrics (SPEC 8).

R[t][j] is the top-1 accuracy on task j's test split after training task t (the full matrix,
so accuracy on tasks not yet seen is visible too). This is the only stage that reads test data.
"""

from __future__ import annotations

import io
import logging
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from lq import metrics, plots
from lq.atomic import write_text
from lq.quant.convert import model_bit_widths
from lq.steps import load_stage_params, parser_for, run
from lq.steps.io import read_table, task_count, write_json
from lq.train.data import Batches, load_bank
from lq.train.device import describe, resolve_device, use_deterministic_kernels
from lq.train.session import load_model

log = logging.getLogger("lq")


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


def main(argv: list[str]) -> int:
    parser = parser_for("evaluate", __doc__)
    for name in ("store", "split", "pretrain", "qat8", "lifelong"):
        parser.add_argument(f"--{name}", type=Path, required=True)
    parser.add_argument("--metrics", type=Path, required=True, help="metrics JSON to write")
    parser.add_argument("--curve", type=Path, required=True, help="average-accuracy-per-task CSV to write")
    parser.add_argument("--figure", type=Path, required=True, help="accuracy-matrix PNG to write")
    args = parser.parse_args(argv)

    def body() -> None:
        p = load_stage_params("evaluate", args)
        use_deterministic_kernels(p["train.deterministic"])
        device = resolve_device(p["train.device"])
        bank = load_bank(args.store, device)
        log.info("device %s", describe(device))
        num_tasks, num_classes = task_count(args.split), len(bank.classes)
        tests = [Batches(bank, bank.rows(read_table(args.split / f"test{j}.csv", num_classes), f"test{j}.csv"),
                         p["train.eval_batch_size"], shuffle=False) for j in range(num_tasks)]

        fp32, _ = load_model(args.pretrain, device, {"weight_bits": 32, "act_bits": 32, "num_classes": num_classes})
        w8a8, w8a8_payload = load_model(args.qat8, device, {"num_classes": num_classes})
        R = np.zeros((num_tasks, num_tasks))
        R5 = np.zeros((num_tasks, num_tasks))
        # The checkpoints must be this cell's: its method, bits and (when quantized) quantizer.
        bits = {"weight_bits": p["lifelong.weight_bits"], "act_bits": p["lifelong.act_bits"], "num_classes": num_classes,
                "method": p["lifelong.method"]}
        if p["lifelong.weight_bits"] < 32:
            bits["weight_quantizer"] = p["quant.weight_quantizer"]
        for t in range(num_tasks):
            model, payload = load_model(args.lifelong / f"task{t}.pt", device, bits)
            for j in range(num_tasks):
                R[t, j], R5[t, j] = accuracy(model, tests[j])
            log.info("after task %d: %s", t, " ".join(f"{100 * a:.2f}" for a in R[t]))
        forgetting = metrics.forgetting(R)
        config = payload["config"]
        memory_images = max(payload.get("memory_images") or [0])
        summary = {
            "method": config.get("method"),
            "bits": f"w{config['weight_bits']}a{config['act_bits']}",
            "quantizer": config["weight_quantizer"],
            "seed": p["train.seed"],
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
            "w8a8_bits": f"w{w8a8_payload['config']['weight_bits']}a{w8a8_payload['config']['act_bits']}",
            "model_size_bits": size_bits(model),
            "fp32_model_size_bits": size_bits(fp32),
            "replay_memory_images": memory_images,
            "replay_memory_bytes": memory_images * int(np.prod(bank.shape)),  # uint8 images
        }
        write_json(args.metrics, summary)
        buffer = io.StringIO()
        pd.DataFrame({"task": range(num_tasks), "average_accuracy": summary["average_accuracy_curve"]}).to_csv(
            buffer, index=False, lineterminator="\n")
        write_text(args.curve, buffer.getvalue())
        plots.matrix_figure(args.figure, R, f"{summary['method']} {summary['bits']}: accuracy (%)")
        log.info("average accuracy %.4f, forgetting %.4f, BWT %.4f", summary["average_accuracy"],
                 summary["forgetting"], summary["bwt"])

    return run("evaluate", body)
