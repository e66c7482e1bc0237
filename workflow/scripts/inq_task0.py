"""INQ on task 0, the paper's setting: INQ from the FP32 model at b bits (wba32), beside one-shot
power-of-two rounding without retraining, for b = 5, 4, 3, 2 and both partitions, over seeds.

Each (b, partition) is one `snakemake all` of the pipeline with the cell's qat8 stage running INQ
at wba32 from the FP32 model (and the lifelong chain INQ at the same width, fine-tune). The
table reads the evaluate stage's metrics: `fp32_task0_accuracy`, `w8a8_oneshot_task0_accuracy`
(the FP32 model on the b-bit levels, no retraining) and `w8a8_task0_accuracy` (after INQ).

    python workflow/scripts/inq_task0.py --cores 2 --seeds 0 1 2     # the table on stdout, logs in logs/inq_task0.log

Each setting is a Snakemake `--config` overlay, which Snakemake writes into params.yaml (so the
workspace ends on the last setting; `git checkout params.yaml` goes back).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
from pathlib import Path


def run(bits: int, partition: str, seeds: list[int], cores: int) -> list[dict]:
    config = [f"grid={{method: [finetune], bits: [w{bits}a32], quantizer: [inq], seed: {seeds}}}",
              f"qat8={{weight_bits: {bits}, act_bits: 32}}", f"quantizers={{inq: {{partition: {partition}}}}}"]
    Path("logs").mkdir(exist_ok=True)
    with open("logs/inq_task0.log", "a") as log:  # the table alone goes to stdout
        subprocess.run(["snakemake", "--cores", str(cores), "all", "--quiet", "--config", *config], check=True,
                       stdout=log, stderr=subprocess.STDOUT)
    return [json.loads(Path(f"metrics/seed{s}/inq/finetune-w{bits}a32.json").read_text()) for s in seeds]


def cell(values: list[float]) -> str:
    mean = 100 * statistics.mean(values)
    std = 100 * statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{mean:.2f} ± {std:.2f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bits", type=int, nargs="+", default=[5, 4, 3, 2])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--cores", type=int, default=2)
    args = parser.parse_args()
    rows, fp32 = [], []
    for bits in args.bits:
        for partition in ("magnitude", "random"):
            records = run(bits, partition, args.seeds, args.cores)
            fp32 = [r["fp32_task0_accuracy"] for r in records]
            rows.append(f"| {bits} | {partition} | {cell([r['w8a8_oneshot_task0_accuracy'] for r in records])} | "
                        f"{cell([r['w8a8_task0_accuracy'] for r in records])} | "
                        f"{cell([r['average_accuracy'] for r in records])} |")
    print(f"Task-0 test accuracy (%), mean ± std over seeds {args.seeds}; FP32: {cell(fp32)}\n")
    print("| bits | partition | one-shot pow2 | INQ | lifelong avg accuracy (INQ, fine-tune) |")
    print("|---:|---|---:|---:|---:|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
