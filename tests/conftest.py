"""Shared fixtures: a throw-away copy of the repository where the real tools run."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
# What a clone holds; generated outputs, caches and the venv stay behind.
PROJECT_FILES = ["Snakefile", "dvc.yaml", "params.yaml", "workflow", "lq", ".dvcignore", ".gitignore",
                 "data/.gitignore", "pyproject.toml"]
IGNORE = shutil.ignore_patterns("__pycache__", "*.pyc", ".snakemake_timestamp")


def tool_env() -> dict[str, str]:
    """The environment with this interpreter's bin folder first, so `python -m lq` is this lq."""
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.pop("PYTHONPATH", None)
    env["PYTHONHASHSEED"] = "0"
    return env


def run(cmd: list[str], cwd: Path, check: bool = True, timeout: int = 900) -> subprocess.CompletedProcess:
    """Run a real tool; on failure show its output in the assertion."""
    proc = subprocess.run(cmd, cwd=cwd, env=tool_env(), capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}")
    return proc


def copy_project(dest: Path) -> Path:
    for name in PROJECT_FILES:
        src = REPO / name
        if src.is_dir():
            shutil.copytree(src, dest / name, ignore=IGNORE)
        else:
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / name)
    return dest


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A copy of the repo, as a fresh git + DVC repository."""
    root = copy_project(tmp_path / "repo")
    run(["git", "init", "-q"], root)
    run(["git", "config", "user.email", "test@example.com"], root)
    run(["git", "config", "user.name", "lq tests"], root)
    run(["dvc", "init", "-q"], root)
    run(["git", "add", "-A"], root)
    run(["git", "commit", "-qm", "project"], root)
    return root


def set_param(root: Path, key: str, value) -> None:
    """Edit one key of params.yaml the way a user would (keeping comments elsewhere intact)."""
    import yaml

    path = root / "params.yaml"
    data = yaml.safe_load(path.read_text())
    node = data
    *parents, last = key.split(".")
    for part in parents:
        node = node[part]
    node[last] = value
    path.write_text(yaml.safe_dump(data, sort_keys=False))


def tree_bytes(folder: Path) -> dict[str, bytes]:
    """Every file under `folder` (Snakemake's timestamp markers aside) with its bytes."""
    return {
        str(p.relative_to(folder)): p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != ".snakemake_timestamp"
    }
