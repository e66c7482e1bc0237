"""Threads per job vs jobs at once: the wall time of a grid's lifelong and evaluate stages.

The data, FP32 and w8a8 stages are made once; each setting then runs the same grid's remaining
jobs on its own copy, one setting after the other (never two at once), with `snakemake --cores C`.
Settings: the stage table's threads (training jobs 2 threads, so on 2 cores one at a time) and
one thread per job (two jobs side by side on 2 cores). Writes bench/THREADS.md.

    python bench/threads.py                      # digits-methods grid, one seed, 5 epochs per task
    python bench/threads.py --seeds 0 1 --cores 2
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "bench"))

from run import machine, project_copy  # noqa: E402

TRAINING = ("pretrain", "qat8", "lifelong", "evaluate")
SETTINGS = {
    "stage table (training jobs 2 threads)": [],
    "1 thread per job": ["--set-threads", *(f"{stage}=1" for stage in TRAINING)],
}


def grid_overlay(seeds: list[int]) -> str:
    return (f"grid: {{method: [lifequant, finetune, ewc, mas, si, rwalk, scp, joint], bits: [w4a4, w8a8], "
            f"quantizer: [proxq], seed: {seeds}}}\nlifelong: {{epochs: 5, milestones: [4]}}\n")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--cores", type=int, default=len(os.sched_getaffinity(0)))
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="lq-threads-") as tmp:
        base, env = project_copy(Path(tmp))
        (base / "grid.yaml").write_text(grid_overlay(args.seeds))
        upstream = [f"models/seed{s}/proxq/qat8.pt" for s in args.seeds]
        subprocess.run(["snakemake", "--cores", str(args.cores), *upstream, "--configfile", "grid.yaml"],
                       cwd=base, env=env, check=True, capture_output=True)
        for name, extra in SETTINGS.items():
            root = Path(tmp) / name.replace(" ", "_")
            shutil.copytree(base, root, symlinks=True)
            start = time.monotonic()
            proc = subprocess.run(["snakemake", "--cores", str(args.cores), "all", *extra], cwd=root, env=env,
                                  capture_output=True, text=True)
            wall = time.monotonic() - start
            if proc.returncode != 0:
                print(proc.stdout[-3000:], proc.stderr[-3000:])
                return 1
            jobs = proc.stdout.count("Finished jobid") + proc.stderr.count("Finished jobid")
            rows.append((name, wall, jobs))
            print(f"{name}: {wall:.1f} s, {jobs} jobs", flush=True)
    m = machine()
    best = min(rows, key=lambda r: r[1])
    lines = ["# Threads per job vs jobs at once", "",
             f"Machine: {m['cpu']}, {m['cores']} cores, torch {m['torch']}. Measured "
             f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} with `python bench/threads.py "
             f"--seeds {' '.join(map(str, args.seeds))} --cores {args.cores}` (one run, settings one after the other).",
             "", f"The digits-methods grid (8 methods x {{w4a4, w8a8}}, seeds {args.seeds}, 5 epochs per task): "
             "wall time of its lifelong, evaluate and aggregate jobs, the data, FP32 and w8a8 stages made beforehand.",
             "", "| setting | wall time | jobs | vs fastest |", "|---|---:|---:|---:|"]
    lines += [f"| {name} | {wall:.1f} s | {jobs} | {wall / best[1]:.2f}x |" for name, wall, jobs in rows]
    (REPO / "bench" / "THREADS.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
