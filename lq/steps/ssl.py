"""Stage `ssl`: self-supervised pretraining of the backbone on train_0's images (SimSiam, SSQL; SPEC 11)."""

from __future__ import annotations

from lq.steps import step, typed
from lq.train import ssl


def main(argv: list[str]) -> int:
    def body(args, p) -> None:
        recipe = ssl.recipe(p.run_name, p["model.arch"], typed.ssl(p, p["ssl.method"]))
        ssl.ssl(recipe, store=args.store, split=args.split, out=args.model, curve=args.curve, timing=args.timing)

    return step("ssl", argv, __doc__, body)
