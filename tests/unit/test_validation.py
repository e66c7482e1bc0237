"""Issue 11, items 2, 4 and 5: settings that pass the schema but cannot run as asked are refused
before any work, with a message naming the keys and what would work.

Parameter cases go through `lq.config.resolve` (what the Snakefile and every step call first);
the split step and the device hook through their entry points.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from lq import checks
from lq import config as lqconfig
from lq.config import REPO_ROOT
from lq.errors import LqError
from lq.models import create_model, list_models
from lq.steps import split as split_step
from lq.tasks import classes_per_task, task_classes

RAW = lqconfig.read_yaml(REPO_ROOT / "params.yaml")


def resolved_with(**changes) -> dict:
    raw = copy.deepcopy(RAW)
    for key, value in changes.items():
        lqconfig.set_key(raw, key.replace("__", "."), value)
    return lqconfig.resolve(raw)


def refusal(**changes) -> str:
    with pytest.raises(LqError) as info:
        resolved_with(**changes)
    return str(info.value)


# --- item 2: splits whose tasks do not move ----------------------------------------------------


def test_ten_tasks_on_digits_is_refused_with_the_largest_t():
    # n_task = floor(10 / (1 + 0.5·9)) = 1, step = floor(0.5) = 0: nine identical one-class tasks.
    # T = 9: n_task = floor(10 / 5) = 2, step = 1, so 9 is the largest T at γ = 0.5.
    message = refusal(split__num_tasks=10)
    assert "split.num_tasks = 10 with split.diminish_rate = 0.5 gives tasks that do not move" in message
    assert "step = floor(1·0.5) = 0" in message and "use at most 9 tasks" in message
    assert "data.source = digits" in message


def test_small_diminish_rate_on_digits_is_refused_with_the_smallest_gamma():
    # γ = 0.1: n_task = floor(10 / 1.2) = 8, step = floor(0.8) = 0 (train0 == train1).
    # γ = 0.14: n_task = floor(10 / 1.28) = 7, step = floor(0.98) = 0; γ = 0.15: floor(10 / 1.3) = 7,
    # step = floor(1.05) = 1, so 0.15 is the smallest with two decimals.
    message = refusal(split__diminish_rate=0.1)
    assert "the smallest split.diminish_rate that moves 3 tasks is 0.15" in message
    assert "tasks 0..1 are identical" in message


def test_cifar100_class_count_is_known_at_validation():
    # C = 100, T = 3, γ = 0.01: n_task = floor(100 / 1.02) = 98, step = floor(0.98) = 0; γ = 0.02 gives
    # n_task = floor(100 / 1.04) = 96, step = floor(1.92) = 1.
    message = refusal(data__source="cifar100", split__diminish_rate=0.01)
    assert "on 100 classes" in message and "is 0.02" in message and "data.source = cifar100" in message


def test_zero_diminish_rate_with_several_tasks_is_refused():
    message = refusal(split__diminish_rate=0.0)
    assert "every task is the same" in message


def test_the_default_and_the_paper_preset_still_pass():
    resolved_with()
    lqconfig.validate_all_presets(RAW)
    resolved_with(split__num_tasks=1, split__diminish_rate=0.0)  # one task need not move


@pytest.mark.parametrize("C", [5, 10, 17, 100])
def test_refused_exactly_when_consecutive_tasks_repeat(C):
    """Against the split itself: a setting is refused iff two consecutive tasks are the same; the
    suggested γ and T really move, and the next smaller γ (two decimals) / larger T does not."""
    for T in range(2, C + 1):
        for gamma in (0.0, 0.05, 0.1, 0.25, 0.5, 0.75, 0.9):
            problem = checks.split_problem(C, T, gamma)
            assert checks.split_sizes(C, T, gamma)[0] == classes_per_task(C, T, gamma)  # one formula
            if problem is None:
                tasks = task_classes(C, T, gamma, seed=1)
                assert all(set(a) != set(b) for a, b in zip(tasks, tasks[1:])), (C, T, gamma)
                continue
            n_task, step = checks.split_sizes(C, T, gamma)
            assert step == 0
            with pytest.raises(LqError):
                task_classes(C, T, gamma, seed=1)
            rate = checks.smallest_moving_rate(C, T)
            if rate is not None:
                assert checks.split_problem(C, T, rate) is None
                assert all(checks.split_problem(C, T, k / 100) for k in range(0, round(rate * 100)))
            tasks = checks.largest_moving_tasks(C, gamma)
            if tasks is not None:
                assert checks.split_problem(C, tasks, gamma) is None
                assert checks.split_problem(C, tasks + 1, gamma)


def _store(folder: Path, classes: int) -> Path:
    """A store's index and class names (what the split step reads), 3 images per class and split."""
    folder.mkdir(parents=True)
    names = [f"c{i}" for i in range(classes)]
    rows = [(f"{s}/{n}/{j}.png", c, s) for s in ("train", "test") for c, n in enumerate(names) for j in range(3)]
    pd.DataFrame(rows, columns=["image", "label", "split"]).to_csv(folder / "index.csv", index=False)
    (folder / "classes.txt").write_text("\n".join(names) + "\n")
    return folder


def test_split_step_refuses_a_folder_source_that_does_not_move(tmp_path, capsys, monkeypatch):
    """A folder's class count is known only once ingested: the split step refuses, writing nothing."""
    monkeypatch.chdir(tmp_path)  # the step's own log goes to logs/ here, not into the repository
    store, out = _store(tmp_path / "store", 4), tmp_path / "split"
    code = split_step.main(["--store", str(store), "--split", str(out), "--params", str(REPO_ROOT / "params.yaml"),
                            "--set", "data.source=folder", "--set", f"data.root={tmp_path / 'absent'}",
                            "--set", "split.num_tasks=4"])
    err = capsys.readouterr().err
    # C = 4, T = 4, γ = 0.5: n_task = floor(4 / 2.5) = 1, step = 0; T = 3: floor(4 / 2) = 2, step 1
    assert code == 2 and "gives tasks that do not move on 4 classes" in err and "at most 3 tasks" in err, err
    assert not out.exists()
    assert split_step.main(["--store", str(store), "--split", str(out), "--params", str(REPO_ROOT / "params.yaml"),
                            "--set", "data.source=folder", "--set", f"data.root={tmp_path / 'absent'}",
                            "--set", "split.num_tasks=3"]) == 0


def _folder(root: Path, classes: int, size: tuple[int, int]) -> Path:
    for split in ("train", "test"):
        for c in range(classes):
            folder = root / split / f"class{c}"
            folder.mkdir(parents=True)
            Image.fromarray(np.zeros(size, np.uint8)).save(folder / "0.png")
    return root


def test_folder_source_is_peeked_at_validation(tmp_path):
    root = _folder(tmp_path / "tree", 4, (8, 8))
    message = refusal(data__source="folder", data__root=str(root), split__num_tasks=4)
    assert "on 4 classes" in message and f"data.source = folder ({root / 'train' / 'class0' / '0.png'})" in message
    resolved_with(data__source="folder", data__root=str(root), split__num_tasks=3)


# --- item 4: integers written as floats, and typed checks ---------------------------------------

FLOATS = [("pretrain.epochs", 2.0), ("train.batch_size", 32.0), ("seed", 123.0), ("grid.seed", [1.0]),
          ("qat8.weight_bits", 8.0), ("lifelong.milestones", [7.0]), ("split.num_tasks", 3.0),
          ("train.eval_batch_size", 100.0), ("train.nproc", 1.0), ("lifelong.methods.lifequant.noise_draws", 100.0),
          ("lifelong.methods.scp.projections", 100.0), ("lifelong.epochs", 10.0)]


@pytest.mark.parametrize("key,value", FLOATS, ids=[k for k, _ in FLOATS])
def test_integer_written_as_float_is_refused(key, value):
    raw = copy.deepcopy(RAW)
    lqconfig.set_key(raw, key, value)
    with pytest.raises(LqError) as info:
        lqconfig.resolve(raw)
    number = value[0] if isinstance(value, list) else value
    message = str(info.value)
    assert re.search(rf"{re.escape(key)}(\.0)? = {number!r} is invalid: write a whole number", message), message
    assert f"({int(number)}, not {number!r})" in message


def test_float_in_a_preset_is_refused():
    raw = copy.deepcopy(RAW)
    raw["presets"]["paper"]["pretrain"]["epochs"] = 30.0
    with pytest.raises(LqError, match=r"(?s)preset 'paper'.*pretrain.epochs = 30.0 is invalid"):
        lqconfig.validate_all_presets(raw)


def test_float_through_set_is_refused(tmp_path):
    with pytest.raises(LqError, match=r"train.batch_size = 32.0"):
        lqconfig.load(REPO_ROOT / "params.yaml", ["train.batch_size=32.0"])


@pytest.fixture
def no_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)


def test_cuda_without_cuda_is_refused(no_cuda):
    for name in ("cuda", "cuda:0"):
        with pytest.raises(LqError, match=rf"train.device = '{name}' but this machine has no CUDA device"):
            checks.check_device(name)
    checks.check_device("cpu")
    checks.check_device("auto")


def test_cuda_index_out_of_range_is_refused(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    with pytest.raises(LqError, match=r"train.device = 'cuda:2' but this machine has 2 CUDA device\(s\) \(cuda:0..cuda:1\)"):
        checks.check_device("cuda:2")
    checks.check_device("cuda:1")


def test_steps_check_the_device_where_it_is_used(no_cuda, monkeypatch, tmp_path):
    """A training stage checks before anything else; a data stage only under DVC (its first stage)."""
    from argparse import Namespace

    from lq.pipeline import stage_by_name
    from lq.steps import load_stage_params

    monkeypatch.delenv("DVC_STAGE", raising=False)
    args = Namespace(params=str(REPO_ROOT / "params.yaml"), overrides=["train.device=cuda"], axes=["seed=0"])
    with pytest.raises(LqError, match="no CUDA device"):
        load_stage_params(stage_by_name("pretrain"), args)
    args = Namespace(params=str(REPO_ROOT / "params.yaml"), overrides=["train.device=cuda"], axes=[])
    load_stage_params(stage_by_name("download"), args)  # on a cluster, data stages may run on a node without a GPU
    monkeypatch.setenv("DVC_STAGE", "download")
    with pytest.raises(LqError, match="no CUDA device"):
        load_stage_params(stage_by_name("download"), args)


def test_folder_images_too_small_for_the_model_are_refused(tmp_path):
    root = _folder(tmp_path / "tiny", 5, (4, 4))
    message = refusal(data__source="folder", data__root=str(root))
    assert "model.arch = 'resnet20' cannot train on 4x4 images" in message
    assert "at least 5x5 pixels" in message and str(root / "train" / "class0" / "0.png") in message
    ok = _folder(tmp_path / "five", 5, (5, 5))
    resolved_with(data__source="folder", data__root=str(ok))
    wide = _folder(tmp_path / "wide", 5, (4, 6))  # 4x6 -> a 1x2 map: two values per channel
    resolved_with(data__source="folder", data__root=str(wide))


def test_digits_are_too_small_for_mobilenetv2():
    message = refusal(model__arch="mobilenetv2")
    assert "model.arch = 'mobilenetv2' cannot train on 8x8 images" in message and "at least 9x9" in message


def _last_map(model, side: int) -> tuple[int, int]:
    seen = []
    model.pool.register_forward_hook(lambda m, inputs, out: seen.append(tuple(inputs[0].shape[-2:])) and None)
    model.eval()(torch.zeros(1, 1, side, side))
    return seen[0]


@pytest.mark.parametrize("arch", list_models())
def test_the_minimum_image_size_is_real(arch):
    """The table matches every registered model, and the minimum is where training starts to work:
    at the smallest side a batch of one image trains; one pixel less, it cannot."""
    assert set(checks.STRIDE2_STAGES) == set(list_models())
    for side in (8, 9, 16, 32):
        if side >= 2 ** checks.STRIDE2_STAGES[arch]:
            model = create_model(arch, num_classes=3, in_channels=1, image_size=side)
            assert _last_map(model, side) == checks.last_feature_map(arch, side, side), side
    side = checks.smallest_side(arch)
    model = create_model(arch, num_classes=3, in_channels=1, image_size=side).train()
    model(torch.randn(1, 1, side, side)).sum().backward()
    assert checks.image_size_problem(arch, side, side) is None
    small = side - 1
    assert checks.image_size_problem(arch, small, small)
    model = create_model(arch, num_classes=3, in_channels=1, image_size=small).train()
    with pytest.raises(ValueError, match="Expected more than 1 value per channel"):
        model(torch.randn(1, 1, small, small))


# --- item 5: milestones past the epoch count ----------------------------------------------------


def test_milestone_beyond_the_epochs_is_refused():
    message = refusal(pretrain__epochs=4, pretrain__milestones=[50])
    assert "pretrain.milestones = [50] has milestone(s) [50] beyond pretrain.epochs = 4" in message


def test_default_milestone_after_lowering_the_epochs_is_refused():
    message = refusal(lifelong__epochs=6)  # default milestones: [7]
    assert "lifelong.milestones = [7]" in message and "lifelong.epochs = 6" in message


def test_milestones_are_checked_per_section_after_the_preset():
    raw = copy.deepcopy(RAW)
    raw["presets"]["paper"]["qat8"]["epochs"] = 15  # the preset keeps milestones [10, 20]
    with pytest.raises(LqError, match=r"(?s)preset 'paper'.*qat8.milestones = \[10, 20\] has milestone\(s\) \[20\]"):
        lqconfig.validate_all_presets(raw)
    # every section is reported at once
    message = refusal(qat8__epochs=2, lifelong__epochs=3)
    assert "qat8.milestones = [4]" in message and "lifelong.milestones = [7]" in message


def test_milestone_equal_to_the_epochs_and_no_milestones_pass():
    resolved_with(lifelong__epochs=1, lifelong__milestones=[1])
    resolved_with(pretrain__epochs=2, pretrain__milestones=[])


# --- Snakemake's --config values and YAML errors --------------------------------------------------


def test_nested_snakemake_config_values_get_yaml_types():
    # what Snakemake's BaseLoader makes of --config 'lifelong={epochs: 1, milestones: [1]}' preset=paper
    cli = {"lifelong": {"epochs": "1", "milestones": ["1"], "ll_lambda": {"ewc": "0.5"}}, "preset": "paper",
           "train": {"augment": "false", "device": "cpu"}}
    assert dict(lqconfig.typed_cli_values(cli)) == {
        "lifelong.epochs": 1, "lifelong.milestones": [1], "lifelong.ll_lambda.ewc": 0.5, "preset": "paper",
        "train.augment": False, "train.device": "cpu"}


@pytest.mark.parametrize("text,where", [
    ("seed: 123\ngrid: {method: [lifequant}\n", ":2:26:"),
    ("seed: 123\n  split: 3\n", ":2:8:"),
    ("seed: 123\n\tsplit: 3\n", ":2:1:"),
])
def test_yaml_errors_name_file_line_and_column(tmp_path, text, where):
    path = tmp_path / "params.yaml"
    path.write_text(text)
    with pytest.raises(LqError) as info:
        lqconfig.read_yaml(path)
    assert str(info.value).startswith(f"{path}{where} not valid YAML: "), str(info.value)
