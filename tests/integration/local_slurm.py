"""A real one-node SLURM cluster for the tests: Debian's slurm-wlm and munge, started by hand.

`LocalSlurm(folder).start()` installs the packages with apt-get when they are missing (as root on
Debian; it fails with apt-get's words when it cannot: the test must not skip silently), writes a
minimal slurm.conf for this machine as one node (no accounting database: `sacct` sees nothing,
so status queries go through `squeue`, and MinJobAge keeps finished jobs visible to it), starts
`munged` (as the munge user), `slurmctld` and `slurmd` in the foreground, and waits until the
node is idle. `stop()` ends the daemons it started, by PID. Everything they write stays in
`folder`, a folder of its own under /tmp (munged, running as munge, must be able to reach it).

The one accommodation for a configuration outside /etc/slurm: Snakemake's job-step executor
clears every SLURM_* variable (SLURM_CONF included) before its `srun` inside a job, so `bin/srun`
(first on the jobs' PATH) puts SLURM_CONF back. A real cluster's nodes read /etc/slurm/slurm.conf.
"""

from __future__ import annotations

import os
import pwd
import re
import shutil
import socket
import subprocess
import tempfile
import time
from contextlib import closing
from pathlib import Path

import pytest

PACKAGES = ["slurm-wlm", "munge"]
DAEMONS = ["munged", "slurmctld", "slurmd"]
PARTITION = "lqtest"  # not the default partition: a job gets here only when the profile's override names it
MIN_JOB_AGE = 900     # seconds a finished job stays visible to squeue
# What Snakemake's SLURM plugin says for each job it submits; its log folder names the rule
# (.snakemake/slurm_logs/rule_<rule>/[<wildcards>/]<SLURM job id>.log). A rule name is any
# identifier, underscores included (ptq_lifelong).
SUBMITTED = re.compile(r"Job \d+ has been submitted with SLURM jobid (\d+) \(log: (\S+)\)")
LOG_RULE = re.compile(r"/slurm_logs/rule_([A-Za-z_][A-Za-z0-9_]*)/")


def submissions(output: str) -> list[tuple[str, str]]:
    """(rule, SLURM job id) of each job Snakemake's SLURM plugin submitted, in order."""
    jobs = []
    for slurm_id, log in SUBMITTED.findall(output):
        rule = LOG_RULE.search(log)
        assert rule, f"no rule in the SLURM log path {log}"
        jobs.append((rule.group(1), slurm_id))
    return jobs


def install() -> None:
    """apt-get install the packages when a daemon is missing; pytest.fail with the reason if not possible."""
    if all(shutil.which(d) or Path("/usr/sbin", d).exists() for d in DAEMONS):
        return
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        pytest.fail(f"SLURM is not installed and cannot be: installing {' '.join(PACKAGES)} needs apt-get as root "
                    f"(uid {os.geteuid()}, apt-get {'found' if shutil.which('apt-get') else 'missing'})")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    cmd = ["apt-get", "install", "-y", "-q", "--no-install-recommends", *PACKAGES]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    if out.returncode != 0:  # a fresh machine has no package lists yet
        update = subprocess.run(["apt-get", "update", "-q"], env=env, capture_output=True, text=True, timeout=600)
        out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
        if out.returncode != 0:
            pytest.fail(f"cannot install {' '.join(PACKAGES)} with apt-get:\n{update.stdout[-1500:]}{update.stderr[-1500:]}"
                        f"\n{out.stdout[-2000:]}\n{out.stderr[-2000:]}")


def free_port() -> int:
    with closing(socket.socket()) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def daemon(name: str) -> str:
    return shutil.which(name) or f"/usr/sbin/{name}"


class LocalSlurm:
    def __init__(self) -> None:
        self.folder = Path(tempfile.mkdtemp(prefix="lq-slurm-"))
        self.conf = self.folder / "slurm.conf"
        self.node = socket.gethostname().split(".")[0]
        self.procs: dict[str, subprocess.Popen] = {}

    def env(self, base: dict[str, str] | None = None) -> dict[str, str]:
        """`base` (default: this process's environment) with what a client (sbatch, squeue,
        Snakemake's plugin, a job's srun) needs to find this cluster."""
        base = dict(os.environ if base is None else base)
        return {**base, "SLURM_CONF": str(self.conf), "PATH": f"{self.folder / 'bin'}{os.pathsep}{base['PATH']}"}

    def start(self) -> LocalSlurm:
        install()
        munge = pwd.getpwnam("munge")
        os.chown(self.folder, munge.pw_uid, munge.pw_gid)
        self.folder.chmod(0o755)
        key = self.folder / "munge.key"  # a key of its own: nothing under /etc/munge is used
        key.write_bytes(os.urandom(128))
        key.chmod(0o400)
        os.chown(key, munge.pw_uid, munge.pw_gid)
        socket_path = self.folder / "munge.socket"
        for sub in ("state", "spool", "bin"):
            (self.folder / sub).mkdir()
        ctld_port, slurmd_port = free_port(), free_port()
        self.conf.write_text(f"""\
ClusterName=lqtest
SlurmctldHost={self.node}(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={socket_path}
SlurmctldPort={ctld_port}
SlurmdPort={slurmd_port}
StateSaveLocation={self.folder / 'state'}
SlurmdSpoolDir={self.folder / 'spool'}
SlurmctldPidFile={self.folder / 'slurmctld.pid'}
SlurmdPidFile={self.folder / 'slurmd.pid'}
SlurmctldLogFile={self.folder / 'slurmctld.log'}
SlurmdLogFile={self.folder / 'slurmd.log'}
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SwitchType=switch/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
MinJobAge={MIN_JOB_AGE}
KillWait=5
ReturnToService=2
SlurmdParameters=config_overrides
NodeName={self.node} NodeAddr=127.0.0.1 CPUs=2 RealMemory=16000 State=UNKNOWN
PartitionName=other Nodes={self.node} Default=YES MaxTime=INFINITE State=UP
PartitionName={PARTITION} Nodes={self.node} Default=NO MaxTime=INFINITE State=UP
""")
        srun = self.folder / "bin" / "srun"
        srun.write_text(f"#!/bin/sh\nSLURM_CONF={self.conf} exec {shutil.which('srun') or '/usr/bin/srun'} \"$@\"\n")
        srun.chmod(0o755)
        try:
            self._spawn("munged", [daemon("munged"), "--foreground", f"--socket={socket_path}", f"--key-file={key}",
                                   f"--pid-file={self.folder / 'munged.pid'}", f"--log-file={self.folder / 'munged.log'}",
                                   f"--seed-file={self.folder / 'munged.seed'}"],
                        user=munge.pw_uid, group=munge.pw_gid, extra_groups=[])
            self._wait(lambda: socket_path.exists(), "munged's socket")
            self._spawn("slurmctld", [daemon("slurmctld"), "-D", "-f", str(self.conf)])
            self._spawn("slurmd", [daemon("slurmd"), "-D", "-f", str(self.conf)])
            self._wait(lambda: self.run(["sinfo", "-h", "-p", PARTITION, "-o", "%T"], check=False).stdout.strip() == "idle",
                       "the node to be idle")
        except BaseException:
            self.stop()
            raise
        return self

    def _spawn(self, name: str, cmd: list[str], **kw) -> None:
        log = open(self.folder / f"{name}.out", "w")
        self.procs[name] = subprocess.Popen(cmd, cwd=self.folder, stdout=log, stderr=subprocess.STDOUT,
                                            stdin=subprocess.DEVNULL, start_new_session=True, **kw)
        log.close()

    def _wait(self, ready, what: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while not ready():
            dead = [n for n, p in self.procs.items() if p.poll() is not None]
            if dead or time.monotonic() > deadline:
                raise AssertionError(f"waiting for {what}: {'stopped: ' + ', '.join(dead) if dead else 'timed out'}\n"
                                     + self.logs())
            time.sleep(0.2)

    def logs(self) -> str:
        return "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-2000:]}"
                         for p in sorted(self.folder.glob("*.out")) + sorted(self.folder.glob("*.log")))

    def run(self, cmd: list[str], check: bool = True) -> subprocess.CompletedProcess:
        out = subprocess.run(cmd, env=self.env(), capture_output=True, text=True, timeout=60)
        assert not check or out.returncode == 0, f"{' '.join(cmd)}: {out.stdout}{out.stderr}"
        return out

    def jobs(self) -> dict[str, str]:
        """Every job the controller knows (running or finished less than MinJobAge ago): id -> state."""
        out = self.run(["squeue", "-h", "-t", "all", "-o", "%i %T"]).stdout
        return dict(line.split() for line in out.splitlines() if line.strip())

    def stop(self) -> list[str]:
        """End the daemons this object started, by PID, the node first; the names of any that
        had to be killed."""
        killed = []
        for name in ("slurmd", "slurmctld", "munged"):
            proc = self.procs.pop(name, None)
            if proc is None:
                continue
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
                    killed.append(name)
        return killed

    def remove(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)
