"""Multi-process (DDP) training: two gloo processes under torchrun train like one process.

The workers run `WORKER` (written into tmp_path) under `python -m torch.distributed.run`, the
launcher a user runs; it imports `train` from this module, so workers and the single-process
reference run the same code: the repo's `fit` with `distributed.wrap` and the world from
`init_world`, on a tiny in-memory image bank.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from lq.methods import Method
from lq.models import create_model
from lq.train import checkpoint, distributed
from lq.train.data import Augment, Batches, ImageBank
from lq.train.distributed import World
from lq.quant.config import QuantConfig
from lq.quant.convert import quantize_model
from lq.train import spec
from lq.train.engine import fit
from lq.train.settings import Schedule
from tests.conftest import REPO, tool_env

pytestmark = pytest.mark.integration

# 16 images, batches of 8, 2 epochs: 4 SGD steps (momentum and a milestone included).
SCHEDULE = Schedule(epochs=2, lr=0.05, milestones=(1,), gamma=0.5, momentum=0.9, weight_decay=5e-4)
# LSQ on weights and activations: learned steps that initialise from the first input they see.
LSQ = {"weight_bits": 4, "act_bits": 4, "weight_quantizer": "lsq", "act_quantizer": "lsq", "act_range": 2.0}
VARIANTS = ("float", "lsq")

WORKER = """
import sys
from pathlib import Path
import torch
from lq.train.distributed import close, init_world
from tests.integration.test_distributed import VARIANTS, train

out = Path(sys.argv[1])
world, device = init_world(torch.device("cpu"))
assert world.world_size == 2, world
for variant in VARIANTS:
    model, history, samples = train(variant, world, out / variant / "resume")
    (out / variant).mkdir(parents=True, exist_ok=True)
    torch.save({"model": model.state_dict(), "history": history, "samples": samples,
                "classes": sorted({type(m).__name__ for m in model.modules()})},
               out / variant / f"rank{world.rank}.pt")
try:  # does this torch run SyncBatchNorm's training forward on CPU tensors in a gloo group?
    torch.nn.SyncBatchNorm(2)(torch.randn(4, 2, 3, 3))
    (out / f"syncbn{world.rank}").write_text("works")
except ValueError as exc:
    (out / f"syncbn{world.rank}").write_text(f"refused: {exc}")
close(world)
"""


def tiny_bank(n: int = 16) -> ImageBank:
    g = torch.Generator().manual_seed(1)
    images = torch.randint(0, 256, (n, 1, 8, 8), dtype=torch.uint8, generator=g)
    return ImageBank(images=images, labels=torch.arange(n) % 10, row_of={str(i): i for i in range(n)},
                     classes=tuple(str(c) for c in range(10)), mean=torch.tensor([0.5]), std=torch.tensor([0.25]))


def small_model(variant: str) -> nn.Module:
    """resnet20 on 8x8 images with BatchNorm replaced by GroupNorm (see the test's docstring)."""
    torch.manual_seed(0)
    model = create_model("resnet20", num_classes=10, in_channels=1, image_size=(8, 8))
    for name, module in list(model.named_modules()):
        if isinstance(module, nn.BatchNorm2d):
            parent, _, leaf = name.rpartition(".")
            setattr(model.get_submodule(parent) if parent else model, leaf, nn.GroupNorm(4, module.num_features))
    if variant == "lsq":
        quantize_model(model, QuantConfig(**LSQ))
        for name, param in model.named_parameters():
            if name.endswith(".step"):
                param.requires_grad_(False)  # initialised, then frozen (see the test's docstring)
    return model


def train(variant: str, world: World | None, resume_root: Path) -> tuple[nn.Module, list[dict], int]:
    """`fit` as the stages call it; returns the model, its history and the samples it forwarded."""
    model = small_model(variant)
    samples = [0]
    model.register_forward_pre_hook(lambda _, args: samples.__setitem__(0, samples[0] + len(args[0])))
    bank = tiny_bank()
    batches = Batches(bank, torch.arange(16), 8, shuffle=True, augment=Augment(pad=1, hflip=True))
    history: list[dict] = []
    fit(model, batches, SCHEDULE, [Method()], task=0, seed=3, history=history,
        forward=distributed.wrap(model, world), world=world)
    return model, history, samples[0]


def test_two_gloo_processes_train_like_one_process_on_the_combined_batch(tmp_path: Path) -> None:
    """Two CPU processes (gloo, torchrun) end 4 SGD steps with the parameters of one process.

    Each rank trains on half of every global batch and DDP averages the gradients, so the steps
    equal those of one process on the whole batches up to float error (atol 1e-5).
    BatchNorm is replaced by GroupNorm: SyncBatchNorm refuses CPU tensors, so on CPU each rank
    normalises with its own half's statistics, a documented difference from one process that
    would hide what this test checks (GroupNorm normalises each sample on its own).
    The LSQ variant checks that learned quantizer steps initialise from the whole global batch
    (from its half, each rank would start from another step and the ranks would drift apart).
    Its steps are frozen after that: LSQ scales a step's gradient by 1/sqrt(numel of the input),
    which under DDP is the rank's slice, so a trained activation step legitimately differs.
    Also checked: each rank forwarded half the samples (plus one whole batch for the LSQ
    initialisation), the epoch curve is summed over ranks, the ranks end identical, and the
    resume checkpoint (main rank only) holds the unwrapped state dict.
    """
    (tmp_path / "worker.py").write_text(WORKER)
    env = {**tool_env(), "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           str(tmp_path / "worker.py"), str(tmp_path)], check=False, cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"

    torch.set_num_threads(1)
    for variant in VARIANTS:
        ranks = [torch.load(tmp_path / variant / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
        model, history, samples = train(variant, None, tmp_path / "single" / variant)
        reference = model.state_dict()
        assert "GroupNorm" in ranks[0]["classes"] and "BatchNorm2d" not in ranks[0]["classes"]

        assert ranks[0]["model"].keys() == reference.keys()
        for key, value in reference.items():
            torch.testing.assert_close(ranks[0]["model"][key].float(), value.float(), atol=1e-5, rtol=0,
                                       msg=lambda m, k=f"{variant} {key}": f"{k}: {m}")
            assert torch.equal(ranks[0]["model"][key], ranks[1]["model"][key]), f"{variant} {key}: ranks differ"
        assert any(k.endswith(".step") for k in reference) == (variant == "lsq")

        lazy_init = 16 // 2 if variant == "lsq" else 0  # one whole global batch, on each rank
        assert samples == 2 * 16
        assert ranks[0]["samples"] == ranks[1]["samples"] == 16 + lazy_init

        for row, ref in zip(ranks[0]["history"], history, strict=True):
            assert row.keys() == ref.keys()
            assert row["accuracy"] == ref["accuracy"] and row["lr"] == ref["lr"], (variant, row, ref)
            assert abs(row["loss"] - ref["loss"]) <= 2e-6, (variant, row, ref)


    # `wrap` converts to SyncBatchNorm exactly where torch can run it (not on CPU, as measured here)
    measured = (tmp_path / "syncbn0").read_text()
    assert distributed.sync_batchnorm_supported(torch.device("cpu")) == (measured == "works"), measured
    assert distributed.sync_batchnorm_supported(torch.device("cuda", 0))


def test_train_nproc_runs_a_stage_on_two_processes_end_to_end(project: Path) -> None:
    """`train.nproc: 2` makes the real pretrain step relaunch itself under torchrun (gloo on CPU)."""
    from tests.conftest import TEST_SCALE, run, set_param

    run(["snakemake", "--cores", "1", "data/store/MANIFEST.json", "data/split/MANIFEST.json"], project)
    for key, value in {"train.nproc": 2, "train.device": "cpu", "pretrain.epochs": 1, "pretrain.milestones": [1]}.items():
        set_param(project, key, value)
    out = run(["python", "-m", "lq", "pretrain", "--store", "data/store", "--split", "data/split",
               "--model", "m.pt", "--curve", "c.csv", "--params", "params.yaml", "--axis", "seed=0"], project)
    assert "relaunching on 2 processes" in out.stderr
    payload = checkpoint.load(project / "m.pt", {"arch": TEST_SCALE["model.arch"], "weight_bits": 32}, describe=spec.describe)
    assert all(not key.startswith("module.") for key in payload["model"])  # the unwrapped state dict
    assert payload["history"][0]["epoch"] == 1
    assert (project / "c.csv").read_text().startswith("step,task,epoch,loss,accuracy,lr")
    assert not any((project / ".lq-resume").rglob("*.pt"))
    # One run: the launcher and rank 0 share its log, rank 1 has its own; rank 0 alone writes scalars.
    logs = sorted((p.name for p in (project / "logs" / "pretrain-seed0").iterdir()), key=len)
    assert len(logs) == 2 and logs[1] == logs[0].replace(".log", "-rank1.log"), logs
    text = (project / "logs" / "pretrain-seed0" / logs[0]).read_text()
    assert "relaunching on 2 processes" in text and "epoch 1/1: loss" in text
    (board,) = (project / "runs" / "pretrain-seed0").iterdir()
    assert board.name == logs[0].removesuffix(".log") and len(list(board.iterdir())) == 1
