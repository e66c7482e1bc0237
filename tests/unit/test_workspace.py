"""One run at a time per workspace (lq/workspace.py): the lease, who owns a step, DVC's lock."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import psutil
import pytest

from lq import workspace
from lq.errors import LqError
from tests.conftest import REPO


@pytest.fixture
def sleeper():
    """A live process to stand for another tool's run."""
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    yield proc
    proc.kill()
    proc.wait()


def owner_of(proc: subprocess.Popen, tool: str) -> dict:
    return workspace.describe_process(psutil.Process(proc.pid), tool)


def test_a_live_run_holding_the_lease_refuses_another_and_says_who(tmp_path, sleeper):
    dvc = owner_of(sleeper, "dvc")
    assert workspace.acquire(tmp_path, dvc) == dvc
    assert workspace.acquire(tmp_path, dvc) == dvc  # the same run again: its next step
    with pytest.raises(LqError) as info:
        workspace.acquire(tmp_path, workspace.describe_self("snakemake"))
    message = str(info.value)
    assert "in use by another run: dvc" in message and f"pid {sleeper.pid}" in message
    assert str(tmp_path / workspace.LEASE_FILE) in message  # what to delete if nothing runs


def test_the_lease_of_an_ended_run_is_free(tmp_path, sleeper):
    dvc = owner_of(sleeper, "dvc")
    workspace.acquire(tmp_path, dvc)
    sleeper.kill()
    sleeper.wait()
    me = workspace.describe_self("snakemake")
    assert workspace.acquire(tmp_path, me) == me
    assert json.loads((tmp_path / workspace.LEASE_FILE).read_text())["tool"] == "snakemake"


def test_a_reused_pid_does_not_keep_a_lease(tmp_path, sleeper):
    stale = {**owner_of(sleeper, "dvc"), "started": owner_of(sleeper, "dvc")["started"] - 1000}
    (tmp_path / workspace.LEASE_FILE).write_text(json.dumps(stale))
    assert not workspace.alive(stale)
    workspace.acquire(tmp_path, workspace.describe_self("snakemake"))


def test_release_frees_only_the_holders_lease(tmp_path, sleeper):
    dvc, me = owner_of(sleeper, "dvc"), workspace.describe_self("snakemake")
    workspace.acquire(tmp_path, dvc)
    workspace.release(tmp_path, me)  # not the holder: nothing happens
    with pytest.raises(LqError):
        workspace.acquire(tmp_path, me)
    workspace.release(tmp_path, dvc)
    assert workspace.acquire(tmp_path, me) == me


def test_a_damaged_lease_file_counts_as_free(tmp_path):
    (tmp_path / workspace.LEASE_FILE).write_text('{"tool": "dv')
    me = workspace.describe_self("snakemake")
    assert workspace.acquire(tmp_path, me) == me


@pytest.mark.parametrize("argv, tool", [
    (["/usr/bin/python3", "/venv/bin/dvc", "repro"], "dvc"),
    (["dvc", "exp", "run"], "dvc"),
    (["/venv/bin/python", "/venv/bin/snakemake", "--cores", "1", "all"], "snakemake"),
    (["python", "-m", "snakemake", "--cores", "1"], "snakemake"),
    (["python", "-m", "pytest", "tests/test_dvc.py"], None),
    (["flock", "/tmp/x", "snakemake", "all"], None),  # not the tool itself: its child is
])
def test_which_processes_are_tools(argv, tool, monkeypatch):
    class Fake:
        def cmdline(self):
            return argv
    assert workspace.tool_of(Fake()) == tool


def run_step_owner(tmp_path: Path, launcher: str, env: dict | None = None) -> dict:
    """What current_owner() says in a process started by a script named `launcher`."""
    script = tmp_path / launcher
    # a Python entry-point script, as `dvc` and `snakemake` are; the step is its child
    script.write_text(textwrap.dedent(f"""\
        #!{sys.executable}
        import subprocess, sys
        code = "import json; from lq import workspace; print(json.dumps(workspace.current_owner()))"
        sys.exit(subprocess.run([sys.executable, "-c", code]).returncode)
        """))
    script.chmod(0o755)
    out = subprocess.run([str(script)], capture_output=True, text=True, check=True, cwd=REPO,
                         env={**os.environ, **(env or {})})
    return json.loads(out.stdout)


def test_a_step_works_for_the_nearest_tool_above_it(tmp_path, monkeypatch):
    monkeypatch.delenv(workspace.OWNER_ENV, raising=False)
    owner = run_step_owner(tmp_path, "dvc")
    assert owner["tool"] == "dvc" and owner["command"].endswith("/dvc")
    by_hand = run_step_owner(tmp_path, "my-script")
    assert by_hand["tool"] == "python -m lq"  # no tool above: the step is its own run
    given = {"tool": "snakemake", "pid": 1, "started": 2.0, "host": "h", "command": "snakemake"}
    assert run_step_owner(tmp_path, "dvc", {workspace.OWNER_ENV: json.dumps(given)}) == given


def test_snakemake_takes_dvcs_own_lock_so_dvc_refuses_before_deleting_anything(tmp_path, monkeypatch):
    monkeypatch.setenv(workspace.OWNER_ENV, "")  # the claim sets it for its children: undone after the test
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    subprocess.run([sys.executable, "-m", "dvc", "init", "-q"], cwd=tmp_path, check=True)
    claim = workspace.SnakemakeClaim(tmp_path)
    try:
        assert json.loads((tmp_path / workspace.LEASE_FILE).read_text())["pid"] == os.getpid()
        # DVC's own commands wait a few seconds for the lock, then give up
        status = subprocess.run([sys.executable, "-m", "dvc", "status"], cwd=tmp_path, capture_output=True, text=True)
        assert status.returncode != 0 and "Unable to acquire lock" in status.stderr, status.stderr
        # a second Snakemake run on the workspace is refused with a message that says why
        with pytest.raises(LqError, match="DVC is running"):
            workspace.SnakemakeClaim(tmp_path)  # this process holds it: a second zc lock fails too
    finally:
        claim.release()
    assert subprocess.run([sys.executable, "-m", "dvc", "status"], cwd=tmp_path, capture_output=True).returncode == 0
    assert (tmp_path / workspace.LEASE_FILE).read_text() == ""
