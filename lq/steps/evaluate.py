"""Stage `evaluate`: accuracy matrix, average accuracy, forgetting, BWT (SPEC 8) of one grid cell."""

from __future__ import annotations

from lq import evaluation
from lq.steps import step, typed


def main(argv: list[str]) -> int:
    def body(args, p) -> None:
        expected = evaluation.Expected(p["lifelong.method"], typed.quant(p, "lifelong"), p["train.seed"],
                                       p.cell["quantizer"])
        summary, matrix = evaluation.evaluate(
            expected, device=p["train.device"], deterministic=p["train.deterministic"],
            batch_size=p["train.eval_batch_size"], store=args.store, split=args.split,
            pretrain=args.pretrain, qat8=args.qat8, lifelong=args.lifelong)
        evaluation.write_outputs(summary, matrix, metrics_path=args.metrics, curve=args.curve, figure=args.figure)

    return step("evaluate", argv, __doc__, body)
