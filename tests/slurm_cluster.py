"""A real Slurm cluster on test hosts (``hvdtrain.launch.testhosts``):
Debian's slurm-wlm 22.05 and munge.

The first host is the login and controller node (munged, slurmctld; jobs are submitted from
it), every other host a compute node (slurmd). Everything lives in one temporary directory (munge
key, ``slurm.conf``, state, spool, logs) that is removed afterwards, with every daemon and job
(they all run on the hosts, so removing the hosts ends them), whatever happened in the test.

Choices, and why:
- One munged serves every host through its socket in that directory, which all hosts see (the
  file system is shared, like an NFS home); a real cluster runs one per node with the same key.
- ``ip netns exec`` gives each host a fresh /sys without the cgroup mounts, and slurmd 22.05 will
  not start without a cgroup plugin even when no cgroup feature is used: each slurmd gets an empty
  tmpfs on /sys/fs/cgroup in its own mount namespace and ``CgroupPlugin=cgroup/v1``.
  Processes are tracked by ``proctrack/linuxproc`` (the process tree), which like the cgroup
  tracker of production clusters signals every process a job started, not only its group.
- Accounting without a database: ``JobCompType=jobcomp/filetxt`` records each finished job
  (state, exit code, nodes) in a text file that ``sacct --completion`` reads. slurmdbd would
  need MariaDB running for the tests; the job completion record is what ``sacct`` needs to show
  a job's outcome.

Use: ``from tests.slurm_cluster import slurm_cluster`` in a test module, then
``cluster = slurm_cluster(nodes=2)``.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from hvdtrain.launch.testhosts import TestHosts
from tests.conftest import require

# command: the Debian package that has it
NEEDED = {
    "munged": "munge",
    "mungekey": "munge",
    "slurmctld": "slurmctld",
    "slurmd": "slurmd",
    "sbatch": "slurm-client",
    "salloc": "slurm-client",
    "sacct": "slurm-client",
    "scancel": "slurm-client",
}
START_TIMEOUT_S = 30


def unavailable_reason() -> str | None:
    missing = sorted({pkg for cmd, pkg in NEEDED.items() if shutil.which(cmd) is None})
    if missing:
        return f"Slurm tests need {', '.join(missing)} (apt-get install {' '.join(missing)})"
    return None


@dataclass(frozen=True)
class Completed:
    """A finished job as ``sacct`` shows it."""

    state: str
    exit_code: str  # "status:signal"
    nodes: str


class SlurmCluster:
    def __init__(self, hosts: TestHosts, root: Path):
        self.hosts = hosts
        self.root = root
        self.login, *self.nodes = hosts.names

    @property
    def conf(self) -> Path:
        return self.root / "slurm.conf"

    def env(self, **extra: str) -> dict[str, str]:
        """This process's environment, Slurm's configuration and ``extra``: what a user logged
        in to the login node has (sbatch passes it on to the job)."""
        return {**os.environ, "SLURM_CONF": str(self.conf), **extra}

    def up(self) -> SlurmCluster:
        self.root.chmod(0o755)  # slurmd runs batch scripts from its spool directory in here
        self._write_config()
        _run(["mungekey", "--create", f"--keyfile={self.root / 'munge.key'}"])
        self._daemon(
            self.login, "munged", ["munged", "--foreground", "--force", *self._munge_paths()]
        )
        self._wait(lambda: (self.root / "munge.socket").exists(), "munged")
        self._daemon(self.login, "slurmctld", ["slurmctld", "-D", "-f", str(self.conf)])
        for node in self.nodes:
            (self.root / f"spool-{node}").mkdir()
            self._daemon(
                node,
                f"slurmd-{node}",
                [
                    "unshare",
                    "--mount",
                    "--propagation",
                    "private",
                    "sh",
                    "-c",
                    f"mount -t tmpfs none /sys/fs/cgroup && exec slurmd -D -f {self.conf}",
                ],
            )
        self._wait(
            lambda: self.sinfo() == {node: "idle" for node in self.nodes}, "compute nodes idle"
        )
        return self

    def run(
        self, argv: list[str], timeout: float = 60, cwd: Path | None = None, **extra_env: str
    ) -> subprocess.CompletedProcess:
        """A command on the login node, in ``cwd`` (default: ``root``)."""
        return self.hosts.run(
            self.login,
            ["env", "-C", str(cwd or self.root), *argv],
            timeout=timeout,
            env=self.env(**extra_env),
        )

    def sinfo(self) -> dict[str, str]:
        out = self.hosts.run(
            self.login, ["sinfo", "-h", "-N", "-o", "%N %T"], env=self.env()
        ).stdout
        return dict(line.split() for line in out.splitlines() if line.strip())

    def completed(self, job_id: str, timeout: float = 60) -> Completed:
        """The job's record in ``sacct`` once it has ended (its processes too: no longer running
        nor completing in ``squeue``)."""
        deadline = time.monotonic() + timeout
        while True:
            active = self.run(
                ["squeue", "-h", "-j", job_id, "-t", "PD,R,CG,S", "-o", "%T"]
            ).stdout.strip()
            out = self.run(
                [
                    "sacct",
                    "--completion",
                    "-j",
                    job_id,
                    "-n",
                    "-P",
                    "-o",
                    "JobID,State,ExitCode,NodeList",
                ]
            ).stdout
            rows = [line.split("|") for line in out.splitlines() if line.startswith(f"{job_id}|")]
            if rows and not active:
                return Completed(*rows[-1][1:])
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"job {job_id} not ended after {timeout} s ({active or 'no sacct record'}); "
                    f"{self.log_tails()}"
                )
            time.sleep(0.5)

    def log_tails(self) -> str:
        return "\n".join(
            f"--- {log.name} ---\n" + "\n".join(log.read_text(errors="replace").splitlines()[-15:])
            for log in sorted(self.root.glob("*.log"))
        )

    # --- internals -------------------------------------------------------------------------------
    def _munge_paths(self) -> list[str]:
        r = self.root
        return [
            f"--socket={r / 'munge.socket'}",
            f"--key-file={r / 'munge.key'}",
            f"--pid-file={r / 'munged.pid'}",
            f"--log-file={r / 'munged.log'}",
            f"--seed-file={r / 'munged.seed'}",
        ]

    def _write_config(self) -> None:
        r = self.root
        (r / "state").mkdir()
        prefix = os.path.commonprefix(self.nodes)
        numbers = [n[len(prefix) :] for n in self.nodes]
        nodelist = (
            f"{prefix}[{','.join(numbers)}]"
            if all(x.isdigit() for x in numbers)
            else ",".join(self.nodes)
        )
        self.conf.write_text(
            "\n".join(
                [
                    "ClusterName=hvdtrain-test",
                    f"SlurmctldHost={self.login}",
                    "SlurmUser=root",
                    "AuthType=auth/munge",
                    "CredType=cred/munge",
                    f"AuthInfo=socket={r / 'munge.socket'}",
                    f"StateSaveLocation={r / 'state'}",
                    f"SlurmdSpoolDir={r / 'spool-%n'}",
                    f"SlurmctldPidFile={r / 'slurmctld.pid'}",
                    f"SlurmdPidFile={r / 'slurmd-%n.pid'}",
                    f"SlurmctldLogFile={r / 'slurmctld.log'}",
                    f"SlurmdLogFile={r / 'slurmd-%n.log'}",
                    "ProctrackType=proctrack/linuxproc",
                    "TaskPlugin=task/none",
                    "JobAcctGatherType=jobacct_gather/none",
                    "AccountingStorageType=accounting_storage/none",
                    "JobCompType=jobcomp/filetxt",
                    f"JobCompLoc={r / 'jobcomp.txt'}",
                    "SchedulerType=sched/builtin",
                    "SelectType=select/cons_tres",
                    "SelectTypeParameters=CR_Core",
                    "ReturnToService=2",
                    "MpiDefault=none",
                    "KillWait=30",
                    # Each node has the machine's cores; without this slurmd refuses a config that
                    # names fewer.
                    "SlurmdParameters=config_overrides",
                    f"NodeName={nodelist} CPUs={os.cpu_count()} State=UNKNOWN",
                    "PartitionName=main Nodes=ALL Default=YES MaxTime=INFINITE State=UP",
                    "",
                ]
            )
        )
        (r / "cgroup.conf").write_text("CgroupPlugin=cgroup/v1\n")

    def _daemon(self, host: str, name: str, argv: list[str]) -> None:
        with open(self.root / f"{name}.out", "ab") as out:
            self.hosts.spawn(
                host,
                argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=self.env(),
                start_new_session=True,
            )

    def _wait(self, ready, what: str) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while not ready():
            if time.monotonic() > deadline:
                outs = "\n".join(
                    f"--- {p.name} ---\n{p.read_text(errors='replace')[-1500:]}"
                    for p in sorted(self.root.glob("*.out"))
                )
                raise RuntimeError(
                    f"Slurm test cluster: {what} not ready within {START_TIMEOUT_S} s\n"
                    f"{outs}\n{self.log_tails()}"
                )
            time.sleep(0.2)


def _run(argv: list[str]) -> None:
    done = subprocess.run(argv, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed: {(done.stderr or done.stdout).strip()}")


def job_id_of(sbatch_output: str) -> str:
    """The id ``sbatch --parsable`` printed (``12`` or ``12;cluster``)."""
    match = re.match(r"\s*(\d+)", sbatch_output)
    if not match:
        raise AssertionError(f"sbatch printed no job id: {sbatch_output!r}")
    return match.group(1)


@pytest.fixture
def slurm_cluster(test_hosts):
    """``slurm_cluster(nodes=2)``: a login/controller host and ``nodes`` compute hosts; removed
    (daemons, jobs, the temporary directory) when the test ends."""
    require(unavailable_reason())
    made: list[SlurmCluster] = []

    def make(nodes: int = 2) -> SlurmCluster:
        hosts = test_hosts(nodes + 1)
        cluster = SlurmCluster(hosts, Path(tempfile.mkdtemp(prefix="hvdtrain-slurm-")))
        made.append(cluster)
        return cluster.up()

    yield make
    for cluster in made:
        cluster.hosts.down()  # every daemon and job runs on the hosts: they end with them
        shutil.rmtree(cluster.root, ignore_errors=True)
