"""Stage `pretrain`: the full-precision model on task 0 (SPEC 6.1)."""

from __future__ import annotations

from pathlib import Path

from lq.steps import load_stage_params, parser_for, run
from lq.steps.training import TrainingRun, relaunched


def main(argv: list[str]) -> int:
    parser = parser_for("pretrain", __doc__)
    parser.add_argument("--store", type=Path, required=True)
    parser.add_argument("--split", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True, help="checkpoint to write")
    parser.add_argument("--curve", type=Path, required=True, help="training curve CSV to write")
    args = parser.parse_args(argv)

    def body() -> None:
        params = load_stage_params("pretrain", args)
        if relaunched("pretrain", argv, params):
            return
        job = TrainingRun("pretrain", params, args.store, inputs=[args.store, args.split])
        model = job.new_model(weight_bits=32, act_bits=32)
        job.train_task(model, job.table(args.split / "train0.csv"), task=0, phase="pretrain")
        job.finish(model, args.out, args.curve)

    return run("pretrain", body)
