"""Issue 11: each run keeps its own TensorBoard folder and log file, also under DVC's queued
experiments; training logs one line per epoch with the stage's progress and an ETA.

Before: every run of a stage cell wrote into runs/<stage>-<cell>/ (reruns piled up there), a step
left no log of its own (Snakemake's logs/*.log were overwritten, `dvc repro` kept none), and the
epoch line had no progress of the stage.
"""

from __future__ import annotations

import logging
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from lq import runlog
from lq.data.sources import load_digits_store
from lq.data.store import write_store
from lq.train.board import Board
from lq.train.engine import Engine, TaskPlan
from lq.train.plugin import CrossEntropy, Phase
from lq.train.progress import Progress, clock
from lq.train.settings import Runtime, Schedule
from tests.conftest import copy_project, tool_env

SCHEDULE = Schedule(epochs=2, lr=0.05, milestones=(1,), gamma=0.1, momentum=0.9, weight_decay=1e-4)
RUNTIME = Runtime(device="cpu", seed=3, batch_size=16)
ID = re.compile(r"^\d{8}T\d{6}Z-\d+(\.\d+)?$")  # <UTC time>-<pid>, .N for a second run in one process


@pytest.fixture(autouse=True)
def workspace(tmp_path, monkeypatch):
    """A workspace of its own, outside any DVC run, one thread; the log file closed afterwards."""
    for name in ("DVC_ROOT", "DVC_EXP_NAME", "DVC_STAGE", "LOCAL_RANK", "RANK", runlog.ENV_ID):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield tmp_path
    torch.set_num_threads(threads)
    runlog.stop()


def scalars(folder: Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar series of the event files in `folder`: tag -> [(step, value)]."""
    acc = EventAccumulator(str(folder))
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def rows(steps: range, loss: float) -> list[dict]:
    return [{"step": s, "task": 0, "epoch": s, "loss": loss, "accuracy": 0.5, "lr": 0.1} for s in steps]


# --- TensorBoard: a folder per run ------------------------------------------------------------------
def test_two_runs_of_a_stage_write_two_folders_each_with_its_own_points(workspace):
    for loss in (1.0, 2.0):  # two runs of the same stage cell, one after the other
        runlog.new_run()
        board = Board("lifelong-lifequant-w4a4-proxq-seed0")
        for row in rows(range(1, 4), loss):
            board.epoch(row)
        board.close()
    folders = sorted((workspace / "runs" / "lifelong-lifequant-w4a4-proxq-seed0").iterdir())
    assert len(folders) == 2 and all(ID.match(f.name) for f in folders), folders
    first, second = (scalars(f) for f in folders)
    assert first["train/loss"] == [(1, 1.0), (2, 1.0), (3, 1.0)]  # exactly its own 3 points, not 6
    assert second["train/loss"] == [(1, 2.0), (2, 2.0), (3, 2.0)]
    assert set(first) == {"train/loss", "train/accuracy", "train/lr"}


def test_a_queued_dvc_experiment_writes_under_the_real_workspace_with_its_name(workspace, monkeypatch):
    """DVC runs a queued experiment in .dvc/tmp/exps/<tmp>/ (deleted afterwards) with DVC_ROOT set
    to the real workspace and DVC_EXP_NAME to the experiment's name."""
    copy = workspace / ".dvc" / "tmp" / "exps" / "tmpabc"
    copy.mkdir(parents=True)
    monkeypatch.chdir(copy)
    monkeypatch.setenv("DVC_ROOT", str(workspace))
    monkeypatch.setenv("DVC_EXP_NAME", "sunny-bass")
    run = runlog.new_run()
    assert run.endswith("-sunny-bass") and ID.match(run.removesuffix("-sunny-bass"))
    board = Board("pretrain-seed0")
    board.epoch(rows(range(1, 2), 1.0)[0])
    board.close()
    assert board.log_dir == workspace / "runs" / "pretrain-seed0" / run
    assert scalars(board.log_dir)["train/loss"] == [(1, 1.0)]
    assert not (copy / "runs").exists()
    log = runlog.start("pretrain", ["--axis", "seed=0", "--model", "m.pt"])
    assert log == workspace / "logs" / "pretrain-seed0" / f"{runlog.run_id()}.log"
    assert runlog.run_id().endswith("-sunny-bass")


def test_a_tensorboard_folder_that_cannot_be_made_only_warns(workspace, caplog):
    (workspace / "runs").write_text("a file where the folder should be")
    runlog.new_run()
    board = Board("pretrain-seed0")
    board.epoch(rows(range(1, 2), 1.0)[0])
    board.epoch(rows(range(2, 3), 1.0)[0])
    board.close()
    assert [r.getMessage().split(" (")[0] for r in caplog.records] == ["no TensorBoard scalars for this run"]


def test_outside_dvc_the_folders_are_in_the_current_workspace(workspace, monkeypatch):
    monkeypatch.setenv("DVC_EXP_NAME", "odd name/../x")  # never leaves the folder
    run = runlog.new_run()
    assert "/" not in run and run.endswith("-odd_name_x")
    assert runlog.tensorboard_dir("qat8-proxq-seed0") == Path("runs") / "qat8-proxq-seed0" / run


def test_a_cell_label_never_leaves_the_logs_folder():
    assert runlog.cell_label("lifelong", ["seed=0", "method=ewc", "bits=w4a4", "quantizer=proxq"]) \
        == "lifelong-ewc-w4a4-proxq-seed0"
    assert "/" not in runlog.cell_label("pretrain", ["seed=../../etc"])
    assert runlog.cell_label("pretrain", ["nonsense"]) == "pretrain"


# --- the engine: folders, resume, and the ETA line --------------------------------------------------
@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    return write_store(load_digits_store(seed=123, test_fraction=0.2), tmp_path_factory.mktemp("d") / "store")


class TwoPhases(CrossEntropy):
    """Adds a one-epoch second phase to every task (as INQ changes a task's phases); may stop."""

    name = "two-phases"

    def __init__(self, stop_at: tuple[int, int] | None = None):
        self.stop_at = stop_at

    def phases(self, ctx, default):
        return [default[0], Phase("second", Schedule(**{**default[0].schedule.__dict__, "epochs": 1}))]

    def before_epoch(self, ctx, epoch, rows):
        if self.stop_at == (ctx.task, epoch):
            raise KeyboardInterrupt("stopped on purpose")  # as a kill: the epochs before are saved
        return None


def train(store: Path, plugin: CrossEntropy) -> Engine:
    runlog.new_run()
    engine = Engine("test-stage", RUNTIME, store, identity={"k": 1}, inputs=[store])
    model = engine.new_model(engine.model_spec("resnet8"), None, stage="test")
    index = pd.read_csv(store / "index.csv", dtype={"image": str, "split": str})
    table = index[index["split"] == "train"].head(32)[["image", "label"]].reset_index(drop=True)
    try:
        engine.train(model, [TaskPlan(t, table, (Phase("train", SCHEDULE),)) for t in range(2)], [plugin])
    finally:
        engine.board.close()
    return engine


def test_engine_runs_get_own_folders_a_resumed_run_starts_at_its_step_and_each_epoch_logs_an_eta(
        store, workspace, caplog):
    caplog.set_level(logging.INFO, logger="lq")
    train(store, TwoPhases())  # 2 tasks x (2 + 1) epochs
    lines = [r.getMessage() for r in caplog.records if " epoch " in r.getMessage() and ": loss " in r.getMessage()]
    assert len(lines) == 6
    # The plan says 2 epochs per task (4); task 0's phases make it 3 per task: 6.
    found = [re.search(r"; stage: (\d+)/(\d+) epochs, (\d+:\d\d:\d\d) elapsed, ETA (\d+:\d\d:\d\d)$", line)
             for line in lines]
    assert all(found), lines
    assert [(int(m[1]), int(m[2])) for m in found] == [(k, 6) for k in range(1, 7)]
    assert found[-1][4] == "0:00:00"  # nothing left after the last epoch

    shutil.rmtree(".lq-resume")  # a fresh second run of the same stage, then a killed and a resumed one
    train(store, TwoPhases())
    shutil.rmtree(".lq-resume")
    caplog.clear()
    with pytest.raises(KeyboardInterrupt):
        train(store, TwoPhases(stop_at=(1, 1)))  # after task 0 and task 1's first epoch: step 4
    train(store, TwoPhases())
    resumed = [r.getMessage() for r in caplog.records if "; stage: " in r.getMessage()]
    assert [re.search(r"stage: (\d+/\d+)", line)[1] for line in resumed] == ["1/6", "2/6", "3/6", "4/6", "5/6", "6/6"]

    folders = sorted((workspace / "runs" / "test-stage").iterdir())
    assert len(folders) == 4, folders
    steps = [[s for s, _ in scalars(f)["train/loss"]] for f in folders]
    assert steps == [[1, 2, 3, 4, 5, 6], [1, 2, 3, 4, 5, 6], [1, 2, 3, 4], [5, 6]], steps


def test_eta_is_the_mean_epoch_time_of_this_run_times_the_epochs_left(monkeypatch):
    now = [100.0]
    monkeypatch.setattr("lq.train.progress.time.perf_counter", lambda: now[0])
    history = [{"task": 0}] * 3  # three epochs an earlier (killed) run finished
    progress = Progress({0: 4, 1: 4}, history)
    progress.task(0, [2, 3])  # task 0 runs 5 epochs; task 1 likely too: 10 in all
    now[0] += 20.0
    history.append({})  # this run's first epoch, 20 s
    assert progress.epoch_done() == "; stage: 4/10 epochs, 0:00:20 elapsed, ETA 0:02:00"
    now[0] += 40.0
    history.append({})
    assert progress.epoch_done() == "; stage: 5/10 epochs, 0:01:00 elapsed, ETA 0:02:30"
    # A resumed run of another stage: task 0 finished earlier with 3 epochs (its history), task 1 runs 2.
    resumed = Progress({0: 4, 1: 4, 2: 4}, [{"task": 0}] * 3)
    resumed.task(1, [2])
    assert resumed.epochs == {0: 3, 1: 2, 2: 2}
    assert clock(3725.4) == "1:02:05"


# --- a log file per run, whichever tool starts the step ----------------------------------------------
def lq(root: Path, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "lq", *args], cwd=root, env={**tool_env(), **(env or {})},
                          capture_output=True, text=True, timeout=300)


def test_a_step_run_twice_by_hand_keeps_two_log_files_and_an_error_is_logged(tmp_path):
    root = copy_project(tmp_path / "repo")
    env = {k: "" for k in ("DVC_ROOT", "DVC_EXP_NAME", "DVC_STAGE")}
    for _ in range(2):
        proc = lq(root, "download", "--store", "data/store", env=env)
        assert proc.returncode == 0, proc.stderr
    logs = sorted((root / "logs" / "download").glob("*.log"))
    assert len(logs) == 2 and all(ID.match(p.stem) for p in logs), logs
    for path in logs:
        text = path.read_text()
        assert text.count("python -m lq download --store data/store") == 1  # its own run only
        assert f"run {path.stem}: " in text and "download: " in text
    failed = lq(root, "download", "--store", "data/store", "--axis", "seed=0", env=env)
    assert failed.returncode == 2
    (log,) = (root / "logs" / "download-seed0").glob("*.log")
    error = failed.stderr.strip().splitlines()[-1]
    assert error.startswith("lq download: error: stage 'download' runs per nothing")
    assert log.read_text().rstrip().endswith(error)


def test_help_writes_no_log(tmp_path):
    root = copy_project(tmp_path / "repo")
    assert lq(root, "download", "--help").returncode == 0
    assert not (root / "logs").exists()


def test_torchrun_workers_share_the_launching_steps_run(monkeypatch):
    """Under torchrun (train.nproc > 1) the workers inherit LQ_RUN_ID: rank 0 appends to the launching
    step's log and writes its TensorBoard folder; other ranks log to a file of their own."""
    launcher = runlog.new_run()
    assert runlog.log_path("pretrain-seed0") == Path("logs") / "pretrain-seed0" / f"{launcher}.log"
    monkeypatch.setenv("LOCAL_RANK", "0")
    monkeypatch.setenv("RANK", "0")
    assert runlog.new_run() == launcher
    assert runlog.log_path("pretrain-seed0").name == f"{launcher}.log"
    assert runlog.tensorboard_dir("pretrain-seed0") == Path("runs") / "pretrain-seed0" / launcher
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setenv("RANK", "1")
    assert runlog.new_run() == launcher and runlog.log_path("pretrain-seed0").name == f"{launcher}-rank1.log"
    monkeypatch.delenv("LOCAL_RANK")
    assert runlog.new_run() != launcher  # a step started by hand later is a run of its own
