"""`python -m lq`: help lists every step with what it computes, --version, clear errors."""

from __future__ import annotations

import subprocess
import sys

from lq import __version__
from lq.config import REPO_ROOT
from lq.pipeline import load_table


def lq(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "lq", *args], cwd=REPO_ROOT, capture_output=True, text=True)


def test_help_lists_every_step_with_its_description_and_exits_0():
    for flag in ("--help", "-h"):
        out = lq(flag)
        assert out.returncode == 0, out.stderr
        for stage in load_table()[1]:
            assert f"  {stage.name}" in out.stdout and stage.doc in out.stdout


def test_version():
    out = lq("--version")
    assert out.returncode == 0 and out.stdout.strip() == f"lq {__version__}"


def test_no_or_unknown_step_exits_2_with_usage():
    for args in ((), ("trian",)):
        out = lq(*args)
        assert out.returncode == 2
        assert "steps:" in out.stderr and "error:" in out.stderr
    assert "unknown step 'trian'" in lq("trian").stderr
