"""ACS on task 0 (issue 13 item 6): QAT at w4a4 from the FP32 model on a coreset chosen by `acs`,
`random`, `evs` or `ds` at several shares f, against `full`, over seeds, with and without label noise.

Each setting is one Snakemake run of the pipeline up to the qat8 stage (FP32 is shared: it is made
once per seed and noise level), overlaid with `--config` (Snakemake writes the overlay into
params.yaml, so the workspace ends on the last setting; `git checkout params.yaml` goes back).
Test accuracy on task 0 is read from the qat8 checkpoint; time from `timings/seed{S}/proxq/qat8.json`
(training + selection seconds, as a ratio to `full` of the same seed and noise level).

Every run's record (one per seed) is added to `--records` (a JSON list; a rerun of the same
setting replaces its records), and the tables printed at the end are made from all records in that
file, so a plan too long for one command can be split across several and the tables assembled:

    python workflow/scripts/acs_task0.py --cores 2 --seeds 0 1 2                 # the tables on stdout
    python workflow/scripts/acs_task0.py --cores 2 --seeds 0 --noise 0           # one part of the plan ...
    python workflow/scripts/acs_task0.py --cores 2 --seeds 1 --noise 0           # ... another part
    python workflow/scripts/acs_task0.py --tables                                # tables of every record so far
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

# What identifies a setting in the records file (with the seed: one record).
SETTING = ("selector", "fraction", "noise", "epochs", "every", "schedule")
# k, forward passes over the pool per round (lq/timings.py): the cost model's time f + k/(3R).
PASSES = {"acs": 2, "ds": 2, "evs": 1, "random": 0}


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
    setting = {"selector": selector, "fraction": fraction, "noise": noise, "epochs": args.epochs,
               "every": args.every, "schedule": args.schedule}
    return [{**setting, "seed": s, **json.loads(Path(f"timings/seed{s}/proxq/qat8.json").read_text()),
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


def key(record: dict) -> tuple:
    return (*(record[k] for k in SETTING), record["seed"])


def load(path: Path) -> list[dict]:
    return json.loads(path.read_text()) if path.exists() else []


def save(path: Path, records: list[dict], new: list[dict]) -> list[dict]:
    """`records` with `new` added, a record of the same setting and seed replaced; written to `path`."""
    merged = {key(r): r for r in records}
    merged.update({key(r): r for r in new})
    out = sorted(merged.values(), key=lambda r: tuple(str(v) for v in key(r)))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=1) + "\n")
    return out


def cell(values: list[float], scale: float = 100, digits: int = 2) -> str:
    mean = scale * statistics.mean(values)
    std = scale * statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


def seconds(record: dict) -> float:
    return record["train_seconds"] + record["selection_seconds"]


def flipped_share(record: dict) -> float:
    rounds = record.get("rounds") or []
    return sum(x["flipped"] for x in rounds) / max(1, sum(x["selected"] for x in rounds))


def tables(records: list[dict], every: int, epochs: int, schedule: str) -> str:
    """One Markdown table per noise level: each setting's accuracy, time ratio to `full` of the
    same seed (seeds with both only) and flipped share, mean ± std over seeds; beside the measured
    ratio SPEC 10's f + 2/(3R) and the same with the selector's own k forward passes per round
    (acs, ds 2; evs 1; random 0)."""
    mine = [r for r in records if (r["every"], r["epochs"], r["schedule"]) == (every, epochs, schedule)]
    out = []
    for noise in sorted({r["noise"] for r in mine}):
        here = [r for r in mine if r["noise"] == noise]
        full = {r["seed"]: r for r in here if r["selector"] == "full"}
        if not full:
            continue
        seeds = sorted(full)
        out.append(f"\nTask 0, QAT w4a4 from FP32, {epochs} epochs, R = {every}, label noise {noise:g}; "
                   f"full ({len(seeds)} seeds {seeds}): {cell([full[s]['accuracy'] for s in seeds])} % in "
                   f"{cell([seconds(full[s]) for s in seeds], 1, 1)} s, flipped share "
                   f"{cell([flipped_share(full[s]) if full[s].get('rounds') else noise for s in seeds])} %\n")
        out.append("| selector | f | seeds | accuracy (%) | time / full | f + 2/(3R) | f + k/(3R) | images / full | "
                   "flipped share of selected (%) |")
        out.append("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
        settings = sorted({(r["fraction"], r["selector"]) for r in here if r["selector"] != "full"},
                          key=lambda fs: (fs[0], ["acs", "random", "evs", "ds"].index(fs[1])
                                          if fs[1] in ("acs", "random", "evs", "ds") else 9))
        for fraction, selector in settings:
            runs = sorted((r for r in here if (r["fraction"], r["selector"]) == (fraction, selector)
                           and r["seed"] in full), key=lambda r: r["seed"])
            if not runs:
                continue
            ratio = [seconds(r) / seconds(full[r["seed"]]) for r in runs]
            images = [r["images_seen"] / full[r["seed"]]["images_seen"] for r in runs]
            out.append(f"| {selector} | {fraction:g} | {len(runs)} | {cell([r['accuracy'] for r in runs])} | "
                       f"{cell(ratio, 1, 2)} | {fraction + 2 / (3 * every):.2f} | "
                       f"{fraction + PASSES[selector] / (3 * every):.2f} | {cell(images, 1, 2)} | "
                       f"{cell([flipped_share(r) for r in runs])} |")
    return "\n".join(out) + "\n"


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
    parser.add_argument("--records", type=Path, default=Path("logs/acs_task0.json"),
                        help="JSON file of every run's record, added to by each invocation (default: %(default)s)")
    parser.add_argument("--tables", action="store_true", help="only print the tables of the records file")
    parser.add_argument("--no-full", action="store_true",
                        help="skip the `full` runs (the records file already holds them for these seeds)")
    args = parser.parse_args()
    records = load(args.records)
    if not args.tables:
        for noise in args.noise:
            if not args.no_full:
                records = save(args.records, records, qat8("full", 1.0, noise, args))
            for fraction in args.fractions:
                for selector in args.selectors:
                    records = save(args.records, records, qat8(selector, fraction, noise, args))
                    print(f"done: {selector} f = {fraction:g}, noise {noise:g}, seeds {args.seeds}", flush=True)
    print(tables(records, args.every, args.epochs, args.schedule), flush=True)


if __name__ == "__main__":
    main()
