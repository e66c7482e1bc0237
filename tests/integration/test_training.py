"""The training half of the pipeline (pretrain, qat8, lifelong, evaluate) on the embedded digits.

Real Snakemake, DVC and `python -m lq` on copies of the repository: accuracy of the default FP32
and w8a8 training, checkpoint checks, the lifelong stage's blindness to test data, and resuming a
killed lifelong stage (LQ_TEST_KILL_AFTER) to the bit-identical result of an uninterrupted run.
The runs they start from (`trained_upstream`, `trained`) are shared: tests/integration/conftest.py.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from lq.errors import LqError
from lq.pipeline import stage_by_name
from lq.train import checkpoint, spec
from tests.conftest import CELL_AXES, LIFELONG, LIFELONG_CURVE, METRICS, PRETRAIN, QAT8, TEST_SCALE, job_stats, run, tool_env
from tests.integration.conftest import LONG, UPSTREAM_STAGES, clone, in_background

pytestmark = pytest.mark.integration

STAGES = ["download", "split", "replay", "count", "pretrain", "qat8", "lifelong", "evaluate"]
# Snakemake runs lifelong and evaluate with OMP_NUM_THREADS = their threads (cpus, capped by
# --cores, 1 in these tests and in the shared runs); DVC runs them with the OMP_NUM_THREADS it is
# given. Results compared bit for bit across the two tools must use the same thread count (float
# reductions may split differently).
CORES = 1
SNAKEMAKE_THREADS = str(min(CORES, *(stage_by_name(s).resources["cpus"] for s in ("lifelong", "evaluate"))))
DVC_ENV = {"OMP_NUM_THREADS": SNAKEMAKE_THREADS, "MKL_NUM_THREADS": SNAKEMAKE_THREADS}


# --- helpers -------------------------------------------------------------------------------------

def run_with_env(cmd: list[str], cwd: Path, extra: dict[str, str],
                 timeout: int = 900) -> subprocess.CompletedProcess:
    """conftest.run with extra environment variables; never checks the exit status."""
    env = {**tool_env(), **extra}
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)




def ran_stages(dvc_output: str) -> list[str]:
    """Stages DVC ran (a grid stage counts by its name before the '@<cell>')."""
    return [s for s in STAGES if f"Running stage '{s}'" in dvc_output or f"Running stage '{s}@" in dvc_output]


def flat(obj, prefix: str = "") -> dict[str, object]:
    """Nested dicts/lists of a checkpoint flattened to {dotted path: leaf}."""
    if isinstance(obj, dict):
        out = {}
        for key, value in obj.items():
            out.update(flat(value, f"{prefix}{key}."))
        return out
    if isinstance(obj, (list, tuple)):
        out = {}
        for i, value in enumerate(obj):
            out.update(flat(value, f"{prefix}{i}."))
        return out
    return {prefix.rstrip("."): obj}


def assert_same(a, b, what: str, may_be_empty: bool = False) -> None:
    """Every leaf equal; tensors exactly (dtype, shape and values)."""
    fa, fb = flat(a), flat(b)
    assert fa.keys() == fb.keys(), f"{what}: different entries {sorted(fa.keys() ^ fb.keys())[:10]}"
    assert fa or may_be_empty, f"{what}: nothing to compare"
    for key in fa:
        x, y = fa[key], fb[key]
        if isinstance(x, torch.Tensor):
            assert isinstance(y, torch.Tensor), f"{what}: {key} is no tensor"
            assert x.dtype == y.dtype and torch.equal(x, y), f"{what}: {key} differs"
        else:
            assert x == y, f"{what}: {key}: {x!r} != {y!r}"


def load_ckpt(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def num_tasks(root: Path) -> int:
    return len(json.loads((root / "data" / "split" / "tasks.json").read_text())["tasks"])


def assert_same_lifelong_result(root: Path, reference: Path) -> None:
    """Metrics, curve and every task checkpoint (model and method state) equal the reference's."""
    got = json.loads((root / METRICS).read_text())
    want = json.loads((reference / METRICS).read_text())
    assert got["accuracy_matrix"] == want["accuracy_matrix"]
    assert got == want
    curve = Path(LIFELONG_CURVE)
    assert (root / curve).read_bytes() == (reference / curve).read_bytes()
    for t in range(num_tasks(reference)):
        mine = load_ckpt(root / LIFELONG / f"task{t}.pt")
        ref = load_ckpt(reference / LIFELONG / f"task{t}.pt")
        assert_same(mine["model"], ref["model"], f"task{t}.pt model")
        # LifeQuant has no importance yet while training task 0
        assert_same(mine["plugins"], ref["plugins"], f"task{t}.pt method state", may_be_empty=t == 0)
        assert mine["history"] == ref["history"]


def resume_folders(root: Path) -> list[Path]:
    return sorted((root / ".lq-resume").glob("lifelong-*/*"))


def assert_resume_state_gone(root: Path) -> None:
    folder = root / ".lq-resume"
    assert not folder.exists() or not any(folder.iterdir()), f"left behind: {list(folder.iterdir())}"


# --- one run with the default FP32 and w8a8 training, shared -------------------------------------
# `trained`: every stage through Snakemake, FP32 and w8a8 with the default parameters (digits,
# 15 + 5 epochs), the lifelong stage short (3 epochs per task; the thresholds below are on the
# FP32 and w8a8 models only). Read here; a test that runs a tool there works on a clone.

@pytest.fixture(scope="module")
def metrics(trained) -> dict:
    return json.loads((trained / METRICS).read_text())


def test_fp32_is_far_above_chance_on_task0_and_w8a8_stays_close(metrics):
    """Task 0 holds 5 of the 10 digit classes, so guessing scores 0.2 on its test split.

    8x8 digits are easy: the FP32 ResNet-20 of the default configuration (15 epochs) reaches about
    1.0 on task 0, so 0.85 leaves a wide margin for platform noise yet fails at once if training
    is broken (wrong labels, no optimizer step, a frozen model stays near 0.2). QAT at w8a8 from
    that model loses almost nothing on so easy a task: it must stay within 5 points of FP32.
    """
    fp32, w8a8 = metrics["fp32_task0_accuracy"], metrics["w8a8_task0_accuracy"]
    assert fp32 >= 0.85, f"FP32 task-0 accuracy {fp32} (chance 0.2)"
    assert w8a8 >= fp32 - 0.05, f"w8a8 task-0 accuracy {w8a8} vs FP32 {fp32}"
    assert metrics["w8a8_bits"] == "w8a8"
    assert metrics["bits"] == "w4a4" and metrics["method"] == "lifequant"


def test_accuracy_matrix_and_summary_metrics_agree(metrics):
    R = np.asarray(metrics["accuracy_matrix"], dtype=float)
    T = metrics["num_tasks"]
    assert T == 3 and R.shape == (T, T)
    assert ((R >= 0) & (R <= 1)).all()
    # The summary numbers are functions of R, recomputed here from their definitions.
    assert metrics["average_accuracy"] == pytest.approx(R[-1].mean(), abs=1e-6)
    curve = [R[t, : t + 1].mean() for t in range(T)]
    assert metrics["average_accuracy_curve"] == pytest.approx(curve, abs=1e-6)
    per_task = [R[j : T - 1, j].max() - R[T - 1, j] for j in range(T - 1)]
    assert metrics["forgetting_per_task"] == pytest.approx(per_task, abs=1e-6)
    assert metrics["forgetting"] == pytest.approx(np.mean(per_task), abs=1e-6)
    assert metrics["bwt"] == pytest.approx(np.mean([R[T - 1, j] - R[j, j] for j in range(T - 1)]), abs=1e-6)
    # top-5 counts the top-1 hit too
    assert (np.asarray(metrics["top5_matrix"]) >= R).all()


def test_w4_model_is_between_an_eighth_and_a_quarter_of_fp32(metrics):
    """ResNet-20 is almost all conv weights (~270k) with ~2k BN and head parameters.

    At w4 the conv weights cost 4 bits instead of 32 and the rest stays at 32, so the size is a
    little above fp32/8 (the floor when every parameter had 4 bits) and well below fp32/4.
    """
    size, fp32 = metrics["model_size_bits"], metrics["fp32_model_size_bits"]
    assert fp32 % 32 == 0 and fp32 > 0
    assert fp32 / 8 <= size < fp32 / 4, (size, fp32)


def test_lifelong_folder_holds_a_safe_loadable_checkpoint_per_task(trained):
    folder = trained / LIFELONG
    T = num_tasks(trained)
    files = sorted(p.name for p in folder.iterdir())
    assert files == ["MANIFEST.json", *(f"task{t}.pt" for t in range(T))]  # the manifest: lq/manifest.py
    for t in range(T):
        payload = load_ckpt(folder / f"task{t}.pt")  # weights_only: plain tensors and primitives
        config = spec.describe(payload["config"])  # the model spec and quantization config, flat
        assert payload["config"]["quant"]["weight_quantizer"] == "proxq"
        assert config["weight_bits"] == 4 and config["act_bits"] == 4
        assert config["arch"] == TEST_SCALE["model.arch"] and config["num_classes"] == 10
        assert config["method"] == "lifequant" and config["stage"] == "lifelong"
        assert payload["task"] == t
        assert payload["model"] and all(isinstance(v, torch.Tensor) for v in payload["model"].values())
        assert {r["task"] for r in payload["history"]} == set(range(t + 1))
        # LifeQuant's importance (taken on the replay of tasks < t, at the start of task t)
        # weighs the model's parameters; task 0 has no earlier task, hence none.
        state = payload["plugins"]["lifequant"]
        importance, anchor = state["importance"], state["anchor"]
        if t == 0:
            assert importance == {} and anchor == {}
        else:
            assert importance and set(importance) <= set(anchor) <= set(payload["model"])
            assert all((v >= 0).all() for v in importance.values())
            assert any(v.sum() > 0 for v in importance.values())


def test_dvc_metrics_show_lists_average_accuracy(trained, metrics, tmp_path):
    root = clone(trained, tmp_path / "repo")
    run(["dvc", "commit", "-f"], root)
    assert "Data and pipelines are up to date." in run(["dvc", "status"], root).stdout
    table = run(["dvc", "metrics", "show"], root).stdout
    assert METRICS in table and "average_accuracy" in table
    shown = json.loads(run(["dvc", "metrics", "show", "--json"], root).stdout)
    data = shown[""]["data"][METRICS]["data"]  # "" = the workspace
    assert data["average_accuracy"] == metrics["average_accuracy"]


def test_evaluate_refuses_a_checkpoint_of_another_bit_width(trained, tmp_path):
    root = clone(trained, tmp_path / "repo")
    cmd = ["python", "-m", "lq", "evaluate", "--store", "data/store", "--split", "data/split",
           "--pretrain", PRETRAIN, "--qat8", QAT8, "--lifelong", LIFELONG,
           "--metrics", str(tmp_path / "m.json"), "--curve", str(tmp_path / "c.csv"),
           "--figure", str(tmp_path / "f.png"), "--params", "params.yaml",
           *(a.replace("bits=w4a4", "bits=w8a8") for a in CELL_AXES)]
    proc = run(cmd, root, check=False)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    message = proc.stderr
    assert "weight_bits = 4" in message and "weight_bits = 8" in message
    assert f"{LIFELONG}/task0.pt" in message
    assert "Traceback" not in message
    assert not (tmp_path / "m.json").exists()


def test_checkpoint_load_refuses_another_architecture(trained):
    path = trained / LIFELONG / "task0.pt"
    arch = TEST_SCALE["model.arch"]
    assert checkpoint.load(path, {"arch": arch, "weight_bits": 4}, describe=spec.describe)
    with pytest.raises(LqError) as info:
        checkpoint.load(path, {"arch": "mobilenetv2"}, describe=spec.describe)
    message = str(info.value)
    assert f"arch = '{arch}'" in message and "arch = 'mobilenetv2'" in message
    assert str(path) in message


# --- the lifelong stage never reads test data ----------------------------------------------------

def lifelong_cmd(out: str, curve: str, epochs: int) -> list[str]:
    return ["python", "-m", "lq", "lifelong", "--store", "data/store", "--split", "data/split",
            "--replay", "data/replay", "--counts", "data/counts/lifequant", "--init", QAT8,
            "--models", out, "--curve", curve, "--timing", f"{out}-timing.json", "--replay_used", f"{out}-replay",
            "--params", "params.yaml", "--set", f"lifelong.epochs={epochs}",
            "--set", f"lifelong.milestones=[{epochs}]",
            "--set", "train.device=cpu", *CELL_AXES]


def garble_test_splits(split: Path, num_classes: int) -> None:
    """Every test{t}.csv: other (valid) images, in another order and count, with random labels."""
    rng = np.random.default_rng(7)
    every_test = pd.concat([pd.read_csv(p) for p in sorted(split.glob("test*.csv"))], ignore_index=True)
    for path in sorted(split.glob("test*.csv")):
        before = pd.read_csv(path)
        rows = every_test.sample(n=len(every_test) // 2, random_state=int(rng.integers(1 << 30)))
        garbage = pd.DataFrame({"image": rows["image"].to_numpy(),
                                "label": rng.integers(0, num_classes, size=len(rows))})
        garbage.to_csv(path, index=False)
        assert not pd.read_csv(path).equals(before)


@in_background
def test_lifelong_never_reads_test_data(tmp_path, trained_upstream):
    root = clone(trained_upstream, tmp_path / "repo")

    def lifelong(out: str, curve: str) -> subprocess.CompletedProcess:
        # one OpenMP thread: the same result either way, and no collapse when the cores are busy
        proc = run_with_env(lifelong_cmd(out, curve, 2), root, {"OMP_NUM_THREADS": "1"}, timeout=LONG)
        assert proc.returncode == 0, proc.stderr[-4000:]
        return proc

    first = lifelong("models/first", "plots/first.csv")
    garble_test_splits(root / "data" / "split", num_classes=10)
    second = lifelong("models/second", "plots/second.csv")
    # The second run trained from scratch (the split folder changed, so did the resume fingerprint).
    for log in (first.stderr, second.stderr):
        for t in range(3):
            assert re.search(rf"task {t}: \d+ training images", log) and f"task {t} epoch 2/2" in log
        assert "already finished" not in log and "resuming" not in log
    for t in range(3):
        a = load_ckpt(root / "models" / "first" / f"task{t}.pt")
        b = load_ckpt(root / "models" / "second" / f"task{t}.pt")
        assert_same(a["model"], b["model"], f"task{t}.pt model")
        assert_same(a["plugins"], b["plugins"], f"task{t}.pt method state (importance, anchor)",
                    may_be_empty=t == 0)
        assert a["history"] == b["history"]
    assert (root / "plots" / "first.csv").read_bytes() == (root / "plots" / "second.csv").read_bytes()


# --- killed and resumed lifelong stage -----------------------------------------------------------

# Each kill and rerun works on its own clone of `trained_upstream` (every stage before lifelong
# made by Snakemake, not committed to DVC) and ends with the result of `trained`, the same project
# finished without interruption (both shared: conftest.py).

@in_background
def test_snakemake_kill_in_task1_then_rerun_incomplete_resumes_bit_identical(tmp_path, trained_upstream, trained):
    root = clone(trained_upstream, tmp_path / "repo")
    killed = run_with_env(["snakemake", "--cores", str(CORES), METRICS], root,
                          {"LQ_TEST_KILL_AFTER": "1:1:2"}, timeout=LONG)
    assert killed.returncode != 0, killed.stdout + killed.stderr
    assert not (root / LIFELONG / "task2.pt").exists()
    assert not (root / METRICS).exists()
    [resume] = resume_folders(root)
    last = load_ckpt(resume / "last.pt")
    assert (last["task"], last["epoch"]) == (1, 0), "killed in task 1's second epoch: last save is its first"
    assert (resume / "task0.pt").exists() and not (resume / "task1.pt").exists()

    rerun = run(["snakemake", "--cores", str(CORES), "--rerun-incomplete", METRICS], root,
                timeout=LONG)
    assert job_stats(rerun.stdout + rerun.stderr) == {"lifelong": 1, "evaluate": 1}
    log = (root / "logs" / "lifelong-lifequant-w4a4-proxq-0.log").read_text()
    assert "task 0 already finished in an earlier run" in log
    assert "task 1: resuming after epoch 1" in log
    assert "task 0 epoch 1/3" not in log and "task 1 epoch 1/3" not in log
    assert_same_lifelong_result(root, trained)
    assert_resume_state_gone(root)


@in_background
def test_dvc_repro_kill_in_task2_then_repro_resumes_bit_identical(tmp_path, trained_upstream, trained):
    root = clone(trained_upstream, tmp_path / "repo")
    run(["dvc", "commit", "-f", *UPSTREAM_STAGES], root)  # DVC adopts what Snakemake made
    killed = run_with_env(["dvc", "repro"], root, {**DVC_ENV, "LQ_TEST_KILL_AFTER": "2:0:1"}, timeout=LONG)
    assert killed.returncode != 0, killed.stdout + killed.stderr
    assert ran_stages(killed.stdout) == ["lifelong"], "the upstream stages were committed: only lifelong runs"
    assert not (root / LIFELONG / "task2.pt").exists()
    [resume] = resume_folders(root)
    last = load_ckpt(resume / "last.pt")
    assert (last["task"], last["epoch"]) == (1, 2), "killed in task 2's 1st epoch: last save is task 1's end"
    assert [(resume / f"task{t}.pt").exists() for t in range(3)] == [True, True, False]

    rerun = run_with_env(["dvc", "repro"], root, DVC_ENV, timeout=LONG)
    assert rerun.returncode == 0, rerun.stdout[-4000:] + rerun.stderr[-4000:]
    assert ran_stages(rerun.stdout) == ["lifelong", "evaluate"]
    output = rerun.stdout + rerun.stderr
    assert "task 0 already finished in an earlier run" in output
    assert "task 1 already finished in an earlier run" in output
    assert "task 2 epoch 1/3" in output and "task 1 epoch" not in output
    assert_same_lifelong_result(root, trained)
    assert_resume_state_gone(root)
    assert "Data and pipelines are up to date." in run(["dvc", "status"], root).stdout
