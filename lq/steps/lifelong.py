"""Stage `lifelong`: k-bit lifelong QAT over tasks 0..T-1 in order (SPEC 6.3 and 7).

Task 0 starts from the w8a8 model, task t from the model after task t-1. The pool of task t is
train_t plus the replay sets of earlier tasks (or train_t alone with `replay_in_pool: false`,
the reference code's behaviour). The stage never reads a test split: evaluation is its own stage.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import pandas as pd
import torch

from lq.lifelong.importance import noise_amplitude
from lq.manifest import output_dir
from lq.methods import TaskContext, create_method
from lq.steps import load_stage_params, parser_for, run
from lq.steps.io import read_json, task_count
from lq.steps.training import TrainingRun, relaunched
from lq.train import checkpoint
from lq.train.distributed import barrier

log = logging.getLogger("lq")


def class_weights(path: Path, num_classes: int, device: torch.device) -> torch.Tensor:
    weights = read_json(path)
    return torch.tensor([float(weights[str(c)]) for c in range(num_classes)], device=device)


def stored_images(pool: pd.DataFrame, train: pd.DataFrame, read_by_method: list[pd.DataFrame]) -> int:
    """Images of earlier tasks a task needs kept in memory: its pool's and those the method reads
    (replay for importance), less the ones the current task's stream provides anyway."""
    kept = set(pool["image"]).union(*(set(r["image"]) for r in read_by_method))
    return len(kept - set(train["image"]))


def main(argv: list[str]) -> int:
    parser = parser_for("lifelong", __doc__)
    for name in ("store", "split", "replay", "counts"):
        parser.add_argument(f"--{name}", type=Path, required=True)
    parser.add_argument("--init", type=Path, required=True, help="w8a8 checkpoint from `qat8`")
    parser.add_argument("--out", type=Path, required=True, help="folder for task{t}.pt checkpoints")
    parser.add_argument("--curve", type=Path, required=True, help="training curve CSV to write")
    args = parser.parse_args(argv)

    def body() -> None:
        p = load_stage_params("lifelong", args)
        if relaunched("lifelong", argv, p):
            return
        job = TrainingRun("lifelong", p, args.store, inputs=[args.store, args.split, args.replay, args.counts, args.init])
        num_tasks, num_classes = task_count(args.split), len(job.bank.classes)
        model = job.model_from(args.init, weight_bits=p["lifelong.weight_bits"], act_bits=p["lifelong.act_bits"])
        job.model_cfg["method"] = p["lifelong.method"]
        method = create_method(
            p["lifelong.method"], ll_lambda=p["lifelong.ll_lambda"].get(p["lifelong.method"], 0.0), balanced=p["lifelong.balanced"],
            ball_form=p["lifelong.ball_form"], noise_importance=p["lifelong.noise_importance"],
            noise_draws=p["lifelong.noise_draws"], seed=p["train.seed"],
            noise_amplitude=noise_amplitude(p["model.act_range"], p["lifelong.act_bits"]),
            si_epsilon=p["lifelong.si_epsilon"], rwalk_alpha=p["lifelong.rwalk_alpha"],
            scp_projections=p["lifelong.scp_projections"],
        )
        train_tables = [job.table(args.split / f"train{t}.csv") for t in range(num_tasks)]
        replay_tables = [job.table(args.replay / f"replay{t}.csv") for t in range(num_tasks)]
        replay_batches = [job.eval_batches(r, p["train.eval_batch_size"]) for r in replay_tables]

        memory = [0] * num_tasks
        for t in range(num_tasks):
            done = job.resume.file(f"task{t}.pt")
            if done.exists():
                state = checkpoint.load(done)
                model.load_state_dict(state["model"])
                method.load_state_dict(state["method"])
                job.history[:] = state["history"]
                memory[: t + 1] = state["memory_images"]
                log.info("task %d already finished in an earlier run: %s", t, done)
                continue
            ctx = TaskContext(task=t, model=model, device=job.device, replay=replay_batches[:t],
                              class_weights=class_weights(args.counts / f"reweight{t}.json", num_classes, job.device))
            method.before_task(ctx)
            pool = method.pool(train_tables[t], replay_tables[:t], train_tables[:t], p["lifelong.replay_in_pool"])
            memory[t] = stored_images(pool, train_tables[t], replay_tables[:t] if method.uses_replay else [])
            job.train_task(model, pool, task=t, phase="lifelong", method=method, source=f"task {t} pool")
            # Under torchrun every rank runs the method's events on identical parameters and
            # DDP-averaged gradients, so method state is the same everywhere; rank 0 writes it.
            method.after_task(ctx)
            if job.world.is_main:
                checkpoint.save(done, job.payload(model, method=method.state_dict(), task=t, memory_images=memory[:t + 1]))
            barrier(job.world)

        if job.world.is_main:
            with output_dir(args.out, "lifelong", p.cell) as tmp:
                for t in range(num_tasks):
                    shutil.copyfile(job.resume.file(f"task{t}.pt"), tmp / f"task{t}.pt")
        barrier(job.world)
        job.finish(model, None, args.curve)

    return run("lifelong", body)
