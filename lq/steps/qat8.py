"""Stage `qat8`: 8-bit QAT (w8a8) on task 0, initialised from the FP32 model (SPEC 6.2)."""

from __future__ import annotations

from pathlib import Path

from lq.steps import load_stage_params, parser_for, run
from lq.steps.training import TrainingRun, relaunched


def main(argv: list[str]) -> int:
    parser = parser_for("qat8", __doc__)
    parser.add_argument("--store", type=Path, required=True)
    parser.add_argument("--split", type=Path, required=True)
    parser.add_argument("--init", type=Path, required=True, help="FP32 checkpoint from `pretrain`")
    parser.add_argument("--out", type=Path, required=True, help="checkpoint to write")
    parser.add_argument("--curve", type=Path, required=True, help="training curve CSV to write")
    args = parser.parse_args(argv)

    def body() -> None:
        params = load_stage_params("qat8", args)
        if relaunched("qat8", argv, params):
            return
        job = TrainingRun("qat8", params, args.store, inputs=[args.store, args.split, args.init])
        model = job.model_from(args.init, weight_bits=params["qat8.weight_bits"], act_bits=params["qat8.act_bits"],
                               source_bits=(32, 32))
        job.train_task(model, job.table(args.split / "train0.csv"), task=0, phase="qat8")
        job.finish(model, args.out, args.curve)

    return run("qat8", body)
