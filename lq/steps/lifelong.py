"""Stage `lifelong`: k-bit lifelong QAT over the task stream with one method (SPEC 6.3, 7)."""

from __future__ import annotations

from lq.steps import step, typed
from lq.train import lifelong


def main(argv: list[str]) -> int:
    def body(args, p) -> None:
        method = p["lifelong.method"]
        recipe = lifelong.LifelongRecipe(
            p.run_name, typed.runtime(p), p["model.arch"], typed.schedule(p, "lifelong"), dict(p),
            quant=typed.quant(p, "lifelong"), inq=typed.inq(p), method=method, method_settings=p[f"lifelong.methods.{method}"],
            replay_in_pool=p["lifelong.replay_in_pool"], act_range=p["model.act_range"], cell=p.cell,
            coreset=typed.coreset(p), replay_selection=p["replay.selection"], replay_rate=p["replay.replay_rate"],
            **typed.data_noise(p))
        lifelong.run(recipe, store=args.store, split=args.split, replay=args.replay, counts=args.counts, init=args.init,
                     out=args.models, curve=args.curve, timing=args.timing, replay_used=args.replay_used)

    return step("lifelong", argv, __doc__, body)
