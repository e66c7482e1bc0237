"""Issue 11: an output folder a step cannot write (a read-only `results/`) is refused before any
work, with one line naming the folder (exit 2), not a raw traceback after the work is done.

Tests run as root in CI, where chmod does not stop writes; the checks that use it are skipped
there, and the same paths are tested with `os.access` answering as it would for a normal user.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from lq import atomic, runlog
from lq.errors import LqError
from tests.conftest import copy_project, tool_env

ROOT = os.geteuid() == 0 if hasattr(os, "geteuid") else False


@pytest.fixture(autouse=True)
def closed_log():
    yield
    runlog.stop()


def read_only(monkeypatch, *folders: Path) -> None:
    """`os.access` says no write to these folders, as it does for a non-root user after chmod a-w."""
    denied = {Path(f).resolve() for f in folders}
    real = os.access

    def access(path, mode, *args, **kwargs):
        if mode & os.W_OK and Path(path).resolve() in denied:
            return False
        return real(path, mode, *args, **kwargs)

    monkeypatch.setattr(atomic.os, "access", access)


def test_a_file_in_a_read_only_folder_is_refused_naming_the_folder(tmp_path, monkeypatch):
    (tmp_path / "results").mkdir()
    read_only(monkeypatch, tmp_path / "results")
    with pytest.raises(LqError) as err:
        atomic.check_writable([tmp_path / "results" / "summary.csv"])
    assert str(err.value).startswith(f"cannot write {tmp_path}/results/summary.csv: the folder "
                                     f"{tmp_path}/results is not writable; make it writable")
    atomic.check_writable([tmp_path / "other" / "summary.csv"])  # a folder to be made where one may write


def test_a_missing_folder_is_checked_where_it_would_be_made(tmp_path, monkeypatch):
    read_only(monkeypatch, tmp_path)
    with pytest.raises(LqError, match=rf"the folder {tmp_path} \(where {tmp_path}/metrics/seed0 would be made\)"):
        atomic.check_writable([tmp_path / "metrics" / "seed0" / "m.json"])


def test_an_existing_folder_output_must_be_removable(tmp_path, monkeypatch):
    """Replacing a folder output deletes what it holds: its subfolders must be writable too."""
    (tmp_path / "models" / "cell" / "sub").mkdir(parents=True)
    read_only(monkeypatch, tmp_path / "models" / "cell" / "sub")
    with pytest.raises(LqError, match=r"the folder .*/models/cell/sub is not writable"):
        atomic.check_writable([tmp_path / "models" / "cell"])


def test_a_file_where_the_folder_should_be_is_refused(tmp_path):
    (tmp_path / "results").write_text("not a folder")
    with pytest.raises(LqError, match=r"results is a file, not a folder"):
        atomic.check_writable([tmp_path / "results" / "summary.csv"])


def test_the_step_stops_before_any_work_with_one_line_and_exit_2(tmp_path, monkeypatch, capsys):
    """`download` would ingest the digits and write data/store; with data/ read-only it does nothing."""
    from lq.steps import download

    root = copy_project(tmp_path / "repo")
    (root / "data").mkdir(exist_ok=True)
    monkeypatch.chdir(root)
    for name in ("DVC_ROOT", "DVC_EXP_NAME", "DVC_STAGE"):
        monkeypatch.delenv(name, raising=False)
    read_only(monkeypatch, root / "data")
    called = []
    monkeypatch.setattr("lq.data.ingest.ingest", lambda *a, **k: called.append(a))
    assert download.main(["--store", "data/store"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == ("lq download: error: cannot write data/store: the folder data is not writable; make it "
                   "writable (chmod u+w 'data') or choose another output path, then rerun"), err
    assert not called and not (root / "data" / "store").exists()
    (log,) = (root / "logs" / "download").glob("*.log")  # the error is in the run's log too
    assert log.read_text().rstrip().endswith(err)


@pytest.mark.skipif(ROOT, reason="running as root: chmod a-w does not stop root from writing "
                                 "(the os.access tests above cover the check)")
def test_a_read_only_folder_for_real(tmp_path):
    root = copy_project(tmp_path / "repo")
    (root / "data").mkdir(exist_ok=True)
    (root / "data").chmod(0o555)
    try:
        proc = subprocess.run([sys.executable, "-m", "lq", "download", "--store", "data/store"], cwd=root,
                              env={**tool_env(), "DVC_ROOT": "", "DVC_STAGE": ""}, capture_output=True, text=True,
                              timeout=300)
    finally:
        (root / "data").chmod(0o755)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "lq download: error: cannot write data/store: the folder data is not writable" in proc.stderr
