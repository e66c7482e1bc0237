"""Issue 11: a queued DVC experiment runs in a temporary copy of the workspace that DVC deletes;
its TensorBoard folder and its steps' logs still land in the real workspace, named by the
experiment, each run in a folder or file of its own."""

from __future__ import annotations

import time

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from tests.conftest import run

pytestmark = pytest.mark.integration


@pytest.mark.long
def test_a_queued_experiment_leaves_its_logs_and_tensorboard_folder_in_the_workspace(project):
    run(["dvc", "exp", "run", "--queue", "-n", "probe-exp", "-S", "pretrain.epochs=1", "-S", "pretrain.milestones=[]",
         "pretrain@0"], project)
    try:
        run(["dvc", "queue", "start", "-j", "1"], project)
        for _ in range(300):
            status = run(["dvc", "queue", "status"], project).stdout
            if "probe-exp" in status and any(w in status for w in ("Success", "Failed")):
                break
            time.sleep(2)
    finally:
        run(["dvc", "queue", "stop"], project, check=False)
    assert "Success" in status, run(["dvc", "queue", "logs", "probe-exp"], project, check=False).stdout
    for stage in ("download", "split", "pretrain-seed0"):
        logs = list((project / "logs" / stage).glob("*-probe-exp.log"))
        assert len(logs) == 1, (stage, logs)
        assert ".dvc/tmp/exps/" not in str(logs[0])
    (folder,) = (project / "runs" / "pretrain-seed0").iterdir()
    assert folder.name.endswith("-probe-exp")
    acc = EventAccumulator(str(folder))
    acc.Reload()
    assert [e.step for e in acc.Scalars("train/loss")] == [1]  # the experiment's one epoch
    assert not list((project / ".dvc" / "tmp" / "exps").glob("tmp*/runs"))  # nothing left in the copy
