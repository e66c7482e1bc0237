"""Issue 11, items 2, 4, 5 and rough edges, through the real Snakemake and DVC: bad settings stop
before the first stage with a message naming the keys; YAML mistakes name file:line:column;
nested `--config` values keep their types. Dry runs only, except where a run must be refused.
"""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from tests.conftest import copy_project, new_project, run, set_param

pytestmark = pytest.mark.integration


def output(proc) -> str:
    return proc.stdout + proc.stderr


def test_every_bad_setting_is_named_by_a_dry_run(tmp_path):
    root = copy_project(tmp_path / "repo")
    set_param(root, "pretrain.epochs", 2.0)         # an integer written as a float
    proc = run(["snakemake", "-n", "all"], root, check=False)
    assert proc.returncode != 0
    assert "pretrain.epochs = 2.0 is invalid: write a whole number without a decimal point (2, not 2.0)" \
        in output(proc)
    # once the types are right, the checks across keys report every problem at once
    set_param(root, "pretrain.epochs", 2)
    set_param(root, "pretrain.milestones", [1])
    set_param(root, "lifelong.epochs", 6)           # the default milestones [7] are never reached
    set_param(root, "split.num_tasks", 10)          # on the 10 digits: nine identical one-class tasks
    proc = run(["snakemake", "-n", "all"], root, check=False)
    text = output(proc)
    assert proc.returncode != 0
    assert "lifelong.milestones = [7] has milestone(s) [7] beyond lifelong.epochs = 6" in text
    assert "split.num_tasks = 10 with split.diminish_rate = 0.5 gives tasks that do not move" in text
    assert "Traceback" not in text


def test_images_too_small_for_the_model_stop_before_ingestion(tmp_path):
    root = copy_project(tmp_path / "repo")
    for split in ("train", "test"):
        for c in range(5):
            folder = root / "tiny" / split / f"c{c}"
            folder.mkdir(parents=True)
            Image.fromarray(np.zeros((4, 4), np.uint8)).save(folder / "0.png")
    set_param(root, "data.source", "folder")
    set_param(root, "data.root", "tiny")
    proc = run(["snakemake", "--cores", "1", "all"], root, check=False)
    assert proc.returncode != 0 and "model.arch = 'resnet8' cannot train on 4x4 images" in output(proc)
    assert not (root / "data" / "store").exists()


def test_yaml_mistake_in_params_names_line_and_column(tmp_path):
    root = copy_project(tmp_path / "repo")
    params = root / "params.yaml"
    lines = params.read_text().splitlines()
    number = next(i for i, line in enumerate(lines) if line.startswith("seed:"))
    lines[number] = "seed: [123"
    params.write_text("\n".join(lines) + "\n")
    proc = run(["snakemake", "-n", "all"], root, check=False)
    assert proc.returncode != 0
    assert f"params.yaml:{number + 6}:1: not valid YAML: while parsing a flow sequence (opened at {number + 1}:7)" \
        in output(proc), output(proc)


def test_nested_config_values_keep_their_types(tmp_path):
    root = copy_project(tmp_path / "repo")
    proc = run(["snakemake", "-n", "-p", "all", "--config", "lifelong={epochs: 1, milestones: [1]}"], root)
    # the value reached the lifelong command as the integer 1 (it used to be refused as the string '1')
    assert "--set lifelong.epochs=1 " in proc.stdout and "--set 'lifelong.milestones=[1]'" in proc.stdout, proc.stdout


def test_dotted_config_key_is_refused_by_snakemake_itself(tmp_path):
    """Snakemake's command line refuses `--config a.b=1` before it reads the workflow, so lq cannot
    reword it; the README says to use the nested form or an overlay file instead."""
    root = copy_project(tmp_path / "repo")
    proc = run(["snakemake", "-n", "all", "--config", "lifelong.epochs=1"], root, check=False)
    assert proc.returncode != 0 and "Config entry must start with a valid identifier" in output(proc)
    overlay = root / "ll1.yaml"
    overlay.write_text("lifelong: {epochs: 1, milestones: [1]}\n")
    run(["snakemake", "-n", "all", "--configfile", str(overlay)], root)


def test_missing_cuda_device_stops_both_tools_before_the_first_stage(tmp_path):
    # cuda:99 is out of range on any machine: with no CUDA, or with fewer than 100 devices
    root = new_project(tmp_path / "repo")
    set_param(root, "train.device", "cuda:99")
    run(["git", "commit", "-qam", "cuda:99"], root)
    proc = run(["snakemake", "--cores", "1", "all"], root, check=False)
    assert proc.returncode != 0 and "train.device = 'cuda:99' but this machine has" in output(proc)
    assert not (root / "data" / "store").exists()
    proc = run(["dvc", "repro"], root, check=False)
    assert proc.returncode != 0 and "train.device = 'cuda:99' but this machine has" in output(proc)
    assert not (root / "data" / "store").exists()
