"""INQ and pow2 through the real pipeline: qat8 runs INQ from the FP32 model, each lifelong task runs
its portions again, the evaluate stage checks the level sets and reports zeros and one-shot
accuracy, and editing INQ's settings reruns only the INQ cells in both tools."""

from __future__ import annotations

import json
import subprocess

import pytest
import torch

from lq.evaluation import accuracy
from lq.io import read_table
from lq.quant.config import QuantConfig
from lq.quant.functions import pow2_exponent_range
from lq.quant.levels import pow2_layers
from lq.train import spec
from lq.train.data import Batches, load_bank
from tests.conftest import new_project, planned_jobs, run, set_param, tool_env
from tests.integration.conftest import in_background

pytestmark = pytest.mark.integration
BITS = 3
SHORT = {"pretrain.epochs": 2, "pretrain.milestones": [], "qat8.epochs": 1, "qat8.milestones": [],
         "qat8.weight_bits": 5, "qat8.act_bits": 32, "lifelong.epochs": 1, "lifelong.milestones": [],
         "grid.method": ["finetune"], "grid.bits": [f"w{BITS}a32"], "grid.quantizer": ["pow2", "inq"],
         "quantizers.inq.portions": [0.5, 0.75, 1.0], "quantizers.inq.epochs_per_phase": 1,
         "split.num_tasks": 2}


def oneshot_accuracy(project, bits: str) -> float:
    """Task 0 test accuracy of the FP32 model with its weights rounded to pow2 at `bits`, recomputed here."""
    fp32, _ = spec.load(project / "models" / "seed0" / "pretrain.pt", torch.device("cpu"))
    weight_bits = int(bits[1:].split("a")[0])
    model = spec.convert(fp32, QuantConfig(weight_bits=weight_bits, act_bits=32, weight_quantizer="pow2"))
    bank = load_bank(project / "data" / "store", torch.device("cpu"))
    test0 = read_table(project / "data" / "split" / "test0.csv", len(bank.classes))
    return accuracy(model, Batches(bank, bank.rows(test0, "test0"), 100, shuffle=False))[0]


@pytest.mark.long
@in_background
def test_inq_and_pow2_cells_train_evaluate_and_stay_on_their_levels(tmp_path):
    # Its body runs with the shared runs (conftest.py), Snakemake on one core: one thread per
    # training job, the same for the uninterrupted and the resumed run.
    project = new_project(tmp_path / "repo")
    for key, value in SHORT.items():
        set_param(project, key, value)
    run(["snakemake", "--cores", "1", "all"], project, timeout=1800)
    qat8_log = (project / "logs" / "qat8-inq-0.log").read_text()
    assert "task 0 inq 0.5 (1/2) epoch 1/1" in qat8_log and "task 0 inq 0.75 (2/2) epoch 1/1" in qat8_log
    lifelong_log = (project / "logs" / "lifelong-finetune-w3a32-inq-0.log").read_text()
    assert all(f"task {t} inq 0.75 (2/2) epoch 1/1" in lifelong_log for t in range(2))  # the portions per task

    for quantizer in ("pow2", "inq"):
        metrics = json.loads((project / "metrics" / "seed0" / quantizer / f"finetune-w{BITS}a32.json").read_text())
        assert metrics["quantizer"] == quantizer and metrics["w8a8_bits"] == "w5a32"
        assert metrics["w8a8_task0_accuracy"] > 0.5
        assert metrics["w8a8_oneshot_task0_accuracy"] == oneshot_accuracy(project, metrics["w8a8_bits"])
        model, _ = spec.load(project / "models" / "seed0" / quantizer / f"finetune-w{BITS}a32" / "task1.pt",
                             torch.device("cpu"))
        layers = pow2_layers(model)
        assert set(metrics["weight_zero_share"]) == set(layers)
        bits = dict.fromkeys([name for name, _ in model.named_parameters()], 32)
        for name, layer in layers.items():
            n2, n1 = pow2_exponent_range(int(layer.weight_quantizer.top_exponent), BITS)
            allowed = {0.0, *(s * 2.0**n for n in range(n2, n1 + 1) for s in (1, -1))}
            values = set(layer.quantized_weight().detach().flatten().tolist())
            assert values <= allowed and len(values) <= 2 ** (BITS - 1) + 1
            share = float((layer.quantized_weight() == 0).double().mean())
            assert metrics["weight_zero_share"][name] == pytest.approx(share, abs=1e-6)
            bits[f"{name}.weight"] = BITS
        size = sum(p.numel() * bits[name] for name, p in model.named_parameters())
        assert metrics["model_size_bits"] == size
    inq = dict(pow2_layers(spec.load(project / "models" / "seed0" / "inq" / "qat8.pt", torch.device("cpu"))[0]))
    assert all(torch.equal(layer.quantized_weight(), layer.weight) for layer in inq.values())  # INQ's weights are levels

    # A SIGKILL in a later INQ phase (task 1, its second portion) resumes to the same models
    cell = project / "models" / "seed0" / "inq" / f"finetune-w{BITS}a32"
    uninterrupted = {p.name: p.read_bytes() for p in sorted(cell.glob("task*.pt"))}
    target = str((cell / "MANIFEST.json").relative_to(project))
    killed = subprocess.run(["snakemake", "--cores", "1", "--forcerun", target, "--", target], cwd=project,
                            env={**tool_env(), "LQ_TEST_KILL_AFTER": "1:1:0:1"}, capture_output=True, text=True,
                            timeout=900)
    assert killed.returncode != 0 and not (cell / "task1.pt").exists(), killed.stdout[-2000:] + killed.stderr[-2000:]
    run(["snakemake", "--cores", "1", "--rerun-incomplete", target], project)
    log = (project / "logs" / f"lifelong-finetune-w{BITS}a32-inq-0.log").read_text()
    assert "task 0 already finished in an earlier run" in log and "task 1: resuming after epoch 1" in log
    assert "task 1 inq 0.5 (1/2) epoch 1/1" not in log  # phase 0 of task 1 is not trained again
    assert {p.name: p.read_bytes() for p in sorted(cell.glob("task*.pt"))} == uninterrupted
    run(["snakemake", "--cores", "1", "all"], project)

    # INQ's settings are the INQ cells' own, in both tools
    assert planned_jobs(project, "all") == {}
    run(["git", "add", "-A"], project)
    run(["git", "commit", "-qm", "inq grid"], project)
    run(["dvc", "commit", "-f", "-q"], project)
    run(["snakemake", "--touch", "--cores", "1", "all"], project)
    set_param(project, "quantizers.inq.partition", "random")
    assert planned_jobs(project, "all") == {"qat8": 1, "lifelong": 1, "evaluate": 1, "aggregate": 1, "ptq_lifelong": 1,
                                            "all": 1}
    plan = run(["snakemake", "-n", "-p", "all"], project).stdout
    assert all("--axis quantizer=inq" in line for line in plan.splitlines()
               if "python -m lq qat8" in line or "python -m lq lifelong" in line)
    status = json.loads(run(["dvc", "status", "--json"], project).stdout)
    assert set(status) == {"qat8@inq-0", "lifelong@finetune-w3a32-inq-0"}, status
