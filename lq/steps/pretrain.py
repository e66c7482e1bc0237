"""Stage `pretrain`: the full-precision model on task 0 (SPEC 6.1)."""

from __future__ import annotations

from lq.steps import step, typed
from lq.train import recipes


def main(argv: list[str]) -> int:
    def body(args, p) -> None:
        recipe = recipes.Recipe(p.run_name, typed.runtime(p), p["model.arch"], typed.schedule(p, "pretrain"), dict(p),
                                 **typed.data_noise(p))
        recipes.pretrain(recipe, store=args.store, split=args.split, out=args.model, curve=args.curve)

    return step("pretrain", argv, __doc__, body)
