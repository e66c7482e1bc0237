"""The SLURM test's installer fails the test, with the reason, when SLURM cannot be installed."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

from tests.conftest import this_thread_only
from tests.integration import local_slurm


@pytest.fixture
def slurm_missing(monkeypatch):
    monkeypatch.setattr(local_slurm, "DAEMONS", ["no-such-slurm-daemon"])


def test_without_root_the_test_fails_saying_why(slurm_missing, monkeypatch):
    monkeypatch.setattr(local_slurm.os, "geteuid", this_thread_only(lambda: 1000, os.geteuid))
    with pytest.raises(pytest.fail.Exception, match="needs apt-get as root"):
        local_slurm.install()


def test_an_apt_get_failure_fails_the_test_with_its_words(slurm_missing, monkeypatch):
    calls = []

    def apt_get(cmd, **kw):
        calls.append(cmd)
        return subprocess.CompletedProcess(cmd, 100, "", "E: Unable to locate package slurm-wlm")

    monkeypatch.setattr(local_slurm.os, "geteuid", this_thread_only(lambda: 0, os.geteuid))
    monkeypatch.setattr(local_slurm.shutil, "which",
                        this_thread_only(lambda name: "/usr/bin/apt-get" if name == "apt-get" else None, shutil.which))
    monkeypatch.setattr(local_slurm.subprocess, "run", this_thread_only(apt_get, subprocess.run))
    with pytest.raises(pytest.fail.Exception, match="Unable to locate package slurm-wlm"):
        local_slurm.install()
    assert [c[:2] for c in calls] == [["apt-get", "install"], ["apt-get", "update"], ["apt-get", "install"]]


def test_submissions_name_each_rule_in_full_underscores_included():
    """The SLURM test counts sbatch jobs per rule from Snakemake's log: a rule named with an
    underscore (ptq_lifelong) is its own rule, not a second `ptq`."""
    said = """\
Job 1 has been submitted with SLURM jobid 1 (log: /tmp/x/repo/.snakemake/slurm_logs/rule_download/1.log).
Job 10 has been submitted with SLURM jobid 7 (log: /tmp/x/repo/.snakemake/slurm_logs/rule_ptq/0/7.log).
Job 11 has been submitted with SLURM jobid 10 (log: /tmp/x/repo/.snakemake/slurm_logs/rule_ptq_lifelong/0_proxq_lifequant_w4a4/10.log).
Job 9 has been submitted with SLURM jobid 12 (log: /tmp/rule_x/.snakemake/slurm_logs/rule_aggregate/12.log).
"""
    assert local_slurm.submissions(said) == [("download", "1"), ("ptq", "7"), ("ptq_lifelong", "10"), ("aggregate", "12")]
