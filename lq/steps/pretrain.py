"""Stage `pretrain`: the full-precision model on task 0 (SPEC 6.1), from scratch or a self-supervised backbone."""

from __future__ import annotations

from lq.steps import step, typed
from lq.train import recipes, ssl


def main(argv: list[str]) -> int:
    def body(args, p) -> None:
        recipe = recipes.Recipe(p.run_name, typed.runtime(p), p["model.arch"], typed.schedule(p, "pretrain"), dict(p),
                                 **typed.data_noise(p))
        init, paths = typed.pretrain_init(p), dict(store=args.store, split=args.split, out=args.model, curve=args.curve)
        if init is None:
            recipes.pretrain(recipe, **paths)
        else:  # a self-supervised start (pretrain.init): trained here, on train_0
            ssl.pretrain(recipe, ssl.recipe(f"{p.run_name}-init-{p['pretrain.init']}", p["model.arch"], init), **paths)

    return step("pretrain", argv, __doc__, body)
