"""ACS on task 0 (issue 13 item 6): QAT at w4a4 from the FP32 model on a coreset chosen by `acs`,
`random`, `evs` or `ds` at several shares f, against `full`, over seeds, with and without label noise.

Each setting is one Snakemake run of the pipeline up to the qat8 stage (FP32 is shared: it is made
once per seed and noise level), overlaid with `--config` (Snakemake writes the overlay into
params.yaml, so the workspace ends on the last setting; `git checkout params.yaml` goes back).
Test accuracy on task 0 is read from the qat8 checkpoint; time from `timings/seed{S}/proxq/qat8.json`
(training + selection seconds, as a ratio to `full` of the same seed and noise level).

    python workflow/scripts/acs_task0.py --cores 2 --seeds 0 1 2                 # the tables on stdout
    python workflow/scripts/acs_task0.py --cores 2 --seeds 0 --fractions 0.3 --selectors acs random --noise 0

Logs go to logs/acs_task0.log.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
from pathlib import Path

import torch


def qat8(selector: str, fraction: float, noise: float, args: argparse.Namespace) -> list[dict]:
    config = [f"grid={{method: [finetune], bits: [w4a4], quantizer: [proxq], seed: {args.seeds}}}",
              f"qat8={{epochs: {args.epochs}, lr: 0.01, milestones: [{args.epochs * 4 // 5}], weight_bits: 4, act_bits: 4}}",
              f"coreset={{selector: {selector}, fraction: {fraction}, every: {args.every}, schedule: {args.schedule}}}",
              f"data={{label_noise: {noise}}}"]
    targets = [f"timings/seed{s}/proxq/qat8.json" for s in args.seeds]
    Path("logs").mkdir(exist_ok=True)
    with open("logs/acs_task0.log", "a") as log:
        subprocess.run(["snakemake", "--cores", str(args.cores), *targets, "--quiet", "--config", *config], check=True,
                       stdout=log, stderr=subprocess.STDOUT)
    return [{**json.loads(Path(f"timings/seed{s}/proxq/qat8.json").read_text()),
             "accuracy": task0_accuracy(Path(f"models/seed{s}/proxq/qat8.pt"))} for s in args.seeds]


def task0_accuracy(checkpoint: Path) -> float:
    from lq.evaluation import accuracy
    from lq.io import read_table
    from lq.train import spec
    from lq.train.data import Batches, load_bank

    device = torch.device("cpu")
    bank = load_bank(Path("data/store"), device)
    test = read_table(Path("data/split/test0.csv"), len(bank.classes))
    model, _ = spec.load(checkpoint, device)
    return accuracy(model, Batches(bank, bank.rows(test), 100, shuffle=False))[0]


def cell(values: list[float], scale: float = 100, digits: int = 2) -> str:
    mean = scale * statistics.mean(values)
    std = scale * statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


def seconds(record: dict) -> float:
    return record["train_seconds"] + record["selection_seconds"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--selectors", nargs="+", default=["acs", "random", "evs", "ds"])
    parser.add_argument("--fractions", type=float, nargs="+", default=[0.1, 0.3, 0.5])
    parser.add_argument("--noise", type=float, nargs="+", default=[0.0, 0.2])
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--every", type=int, default=10, help="R, epochs between rounds (the release's 10)")
    parser.add_argument("--schedule", default="paper")
    parser.add_argument("--cores", type=int, default=2)
    args = parser.parse_args()
    for noise in args.noise:
        full = qat8("full", 1.0, noise, args)
        print(f"\nTask 0, QAT w4a4 from FP32, {args.epochs} epochs, R = {args.every}, label noise {noise:g}; "
              f"seeds {args.seeds}. full: {cell([r['accuracy'] for r in full])} % in {cell([seconds(r) for r in full], 1, 1)} s\n")
        print("| selector | f | accuracy (%) | time / full | f + 2/(3R) | flipped share of selected (%) |")
        print("|---|---:|---:|---:|---:|---:|")
        for fraction in args.fractions:
            for selector in args.selectors:
                runs = qat8(selector, fraction, noise, args)
                ratio = [seconds(r) / seconds(f) for r, f in zip(runs, full)]
                flipped = [sum(x["flipped"] for x in r["rounds"]) / max(1, sum(x["selected"] for x in r["rounds"]))
                           for r in runs]
                print(f"| {selector} | {fraction:g} | {cell([r['accuracy'] for r in runs])} | {cell(ratio, 1, 2)} | "
                      f"{fraction + 2 / (3 * args.every):.2f} | {cell(flipped)} |", flush=True)


if __name__ == "__main__":
    main()
