"""A Snakemake overlay, then `dvc commit`: DVC must record the parameters that made the outputs.

Snakemake writes an overlay's values into params.yaml before its first job (lq/overlay.py), so
after `snakemake --configfile ...` (or a nested `--config`) and `dvc commit`, dvc.lock holds the
values that ran, `dvc status` and `dvc repro` agree, and DVC reproducing from params.yaml makes
the same files. Data stages only (replay and count rerun in seconds), on clones of `data_run`.
"""

from __future__ import annotations

import pytest
import yaml

from tests.conftest import job_stats, run
from tests.integration.conftest import DATA_TARGETS, clone

pytestmark = pytest.mark.integration
COUNTS = "data/counts/lifequant/MANIFEST.json"


def locked_params(project, stage: str) -> dict:
    return yaml.safe_load((project / "dvc.lock").read_text())["stages"][stage]["params"]["params.yaml"]


def committed(data_run, tmp_path):
    project = clone(data_run, tmp_path / "repo")
    run(["dvc", "commit", "-f", "-q", "--with-deps", "count@lifequant"], project)
    run(["snakemake", "--touch", "--cores", "1", *DATA_TARGETS], project)  # dvc commit rewrote mtimes
    assert "up to date" in run(["dvc", "status", "count@lifequant"], project).stdout
    return project


@pytest.mark.long  # 73 s: make test ran 635 s on the 2-core machine of 2026-12-08 (CI runs make test-long too)
def test_an_overlay_is_written_to_params_yaml_so_dvc_commit_records_what_ran(data_run, tmp_path):
    project = committed(data_run, tmp_path)
    params_before = (project / "params.yaml").read_text()
    (project / "rr.yaml").write_text("replay: {replay_rate: 0.3}\n")

    # a dry run changes nothing
    run(["snakemake", "-n", "--cores", "1", COUNTS, "--configfile", "rr.yaml"], project)
    assert (project / "params.yaml").read_text() == params_before

    out = run(["snakemake", "--cores", "1", COUNTS, "--configfile", "rr.yaml"], project)
    said = out.stdout + out.stderr
    assert job_stats(said) == {"replay": 1, "count": 1}
    assert "wrote the overlay into params.yaml" in said and "replay.replay_rate: 0.2 -> 0.3" in said
    changed = [line for line in run(["git", "diff", "-U0", "params.yaml"], project).stdout.splitlines()
               if line[:1] in "+-" and not line.startswith(("+++", "---"))]
    line = next(line for line in params_before.splitlines() if "replay_rate: 0.2" in line)
    assert changed == [f"-{line}", "+" + line.replace("0.2", "0.3", 1)]  # that value only, its comment kept

    run(["dvc", "commit", "-f", "-q", "--with-deps", "count@lifequant"], project)
    assert locked_params(project, "replay")["replay.replay_rate"] == 0.3
    assert "up to date" in run(["dvc", "status", "count@lifequant"], project).stdout
    assert "Running stage" not in run(["dvc", "repro", "count@lifequant"], project).stdout
    # and what DVC records is what DVC would make: replay reproduced from params.yaml, the same hashes
    recorded = (project / "dvc.lock").read_text()
    run(["dvc", "repro", "-f", "-s", "replay"], project)
    assert (project / "dvc.lock").read_text() == recorded

    # the nested --config form is written through the same way
    run(["snakemake", "--touch", "--cores", "1", *DATA_TARGETS], project)
    out = run(["snakemake", "--cores", "1", COUNTS, "--config", "replay={replay_rate: 0.25}"], project)
    assert job_stats(out.stdout + out.stderr) == {"replay": 1, "count": 1}
    assert yaml.safe_load((project / "params.yaml").read_text())["replay"]["replay_rate"] == 0.25
    run(["dvc", "commit", "-f", "-q", "--with-deps", "count@lifequant"], project)
    assert locked_params(project, "replay")["replay.replay_rate"] == 0.25
    # Snakemake without the overlay now has nothing to do: params.yaml describes the outputs
    run(["snakemake", "--touch", "--cores", "1", *DATA_TARGETS], project)
    assert job_stats(run(["snakemake", "-n", "--cores", "1", *DATA_TARGETS], project).stdout) == {}
