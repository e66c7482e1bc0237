"""The `fashion-cpu` preset end to end on the real Fashion-MNIST files (Debian's dataset-fashion-mnist,
which CI installs): one epoch per stage, through Snakemake in one project and DVC in another."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pandas as pd
import pytest

from tests.conftest import CELL, METRICS, new_project, run, set_params

pytestmark = [pytest.mark.integration, pytest.mark.long]

FOLDER = Path("/usr/share/datasets/fashion-mnist")
PER_CLASS = 60
# fashion-cpu as it ships, cut to one epoch per stage and PER_CLASS training images per class
SHORT = {"preset": "fashion-cpu", "presets.fashion-cpu.split.train_per_class": PER_CLASS,
         **{f"presets.fashion-cpu.{stage}.{key}": value for stage in ("pretrain", "qat8", "lifelong")
            for key, value in (("epochs", 1), ("milestones", []))}}


@pytest.mark.skipif(not FOLDER.is_dir(), reason="apt-get install dataset-fashion-mnist (CI does)")
def test_fashion_cpu_runs_from_the_debian_files_through_snakemake_and_dvc(tmp_path):
    projects = []
    for name in ("snakemake", "dvc"):
        project = new_project(tmp_path / name)
        set_params(project, SHORT)
        run(["git", "commit", "-qam", "fashion-cpu, one epoch per stage"], project)
        projects.append(project)
    with ThreadPoolExecutor(2) as pool:
        made = [pool.submit(run, ["snakemake", "--cores", "1", "all"], projects[0], timeout=1800),
                pool.submit(run, ["dvc", "repro"], projects[1], timeout=1800)]
        for future in made:
            future.result()

    by_snakemake, by_dvc = projects
    meta = json.loads((by_snakemake / "data/store/meta.json").read_text())
    assert meta["source"] == "fashion_mnist" and meta["shape"] == [70000, 28, 28, 1]
    assert meta["counts"] == {"train": 60000, "test": 10000}
    split = by_snakemake / "data/split"
    tasks = json.loads((split / "tasks.json").read_text())
    assert tasks["train_per_class"] == PER_CLASS and [len(t) for t in tasks["tasks"]] == [4, 4, 4]
    for t, classes in enumerate(tasks["tasks"]):
        train, test = pd.read_csv(split / f"train{t}.csv"), pd.read_csv(split / f"test{t}.csv")
        assert train["label"].value_counts().to_dict() == {c: PER_CLASS for c in classes}
        assert test["label"].value_counts().to_dict() == {c: 1000 for c in classes}  # test data is never cut
    # consecutive tasks share one class; together they hold all ten
    assert [len(set(a) & set(b)) for a, b in zip(tasks["tasks"], tasks["tasks"][1:])] == [1, 1]
    metrics = json.loads((by_snakemake / METRICS).read_text())
    assert len(metrics["accuracy_matrix"]) == 3
    # the same parameters give the same files, whichever tool ran them
    for path in ("data/split/train1.csv", "data/replay/replay2.csv", METRICS, f"ptq/{CELL}.json"):
        assert (by_snakemake / path).read_bytes() == (by_dvc / path).read_bytes(), path
    assert "Data and pipelines are up to date." in run(["dvc", "status"], by_dvc).stdout
