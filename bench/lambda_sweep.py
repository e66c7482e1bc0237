"""Pick each penalty method's λ on training curves only: the largest power of ten that neither
diverges nor holds the last task's training accuracy under a floor.

Runs the real `lifelong` step (no evaluate: test data is never read) in a project that has the
data and w8a8 stages made, for λ = 100, 10, 1, ... until one passes. Writes a Markdown table.

    python bench/lambda_sweep.py --root . --configfile workflow/grids/digits-methods.yaml
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

import pandas as pd

LAMBDAS = (100.0, 10.0, 1.0, 0.1, 0.01, 0.001, 0.0001)
METHODS = ("lifequant", "ewc", "mas", "si", "rwalk", "scp")


def last_task_accuracy(curve: Path) -> float:
    rows = pd.read_csv(curve)
    return float(rows[rows["task"] == rows["task"].max()]["accuracy"].iloc[-1])


def trial(root: Path, method: str, lam: float, overlay: list[str], out: Path) -> tuple[str, float | None]:
    cmd = [sys.executable, "-m", "lq", "lifelong", "--store", "data/store", "--split", "data/split",
           "--replay", "data/replay", "--counts", "data/counts", "--init", "models/seed0/proxq/qat8.pt",
           "--out", str(out / "models"), "--curve", str(out / "curve.csv"), "--params", "params.yaml",
           "--axis", f"method={method}", "--axis", "bits=w4a4", "--axis", "quantizer=proxq", "--axis", "seed=0",
           "--set", f"lifelong.methods.{method}.ll_lambda={lam}", "--set", "train.device=cpu", *overlay]
    proc = subprocess.run(cmd, cwd=root, capture_output=True, text=True)
    if proc.returncode != 0:
        return ("diverged" if "the loss is" in proc.stderr else proc.stderr.strip().splitlines()[-1]), None
    return "ok", last_task_accuracy(out / "curve.csv")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=Path("."))
    parser.add_argument("--floor", type=float, default=0.9, help="last task's final training accuracy floor")
    parser.add_argument("--set", dest="overlay", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--methods", nargs="*", default=list(METHODS))
    args = parser.parse_args()
    overlay = [item for kv in args.overlay for item in ("--set", kv)]
    lines = ["| method | λ tried (outcome: last-task training accuracy) | chosen λ |", "|---|---|---|"]
    for method in args.methods:
        tried, chosen = [], None
        for lam in LAMBDAS:
            with tempfile.TemporaryDirectory() as tmp:
                outcome, acc = trial(args.root.resolve(), method, lam, overlay, Path(tmp))
            tried.append(f"{lam:g}: {outcome if acc is None else f'{100 * acc:.1f} %'}")
            print(method, tried[-1], flush=True)
            if acc is not None and acc >= args.floor:
                chosen = lam
                break
        lines.append(f"| {method} | {'; '.join(tried)} | {chosen if chosen is not None else 'none'} |")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
