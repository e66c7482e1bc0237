"""Stage `qat8`: 8-bit QAT (w8a8) on task 0, initialised from the FP32 model (SPEC 6.2)."""

from __future__ import annotations

from lq.steps import step, typed
from lq.train import recipes


def main(argv: list[str]) -> int:
    def body(args, p) -> None:
        recipe = recipes.QatRecipe(p.run_name, typed.runtime(p), p["model.arch"], typed.schedule(p, "qat8"), dict(p),
                                   quant=typed.quant(p, "qat8"), inq=typed.inq(p), coreset=typed.coreset(p),
                                   **typed.data_noise(p))
        recipes.qat(recipe, store=args.store, split=args.split, init=args.init, out=args.model, curve=args.curve,
                    timing=args.timing)

    return step("qat8", argv, __doc__, body)
