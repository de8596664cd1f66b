"""``hvdtrain run`` on Slurm: the allocation's hosts and slots, refused launches, and real jobs on a
Slurm cluster made on test hosts (``tests/slurm_cluster.py``): a 2-node batch job that trains,
scancel mid-run, and what ``sacct`` then shows."""

from __future__ import annotations

import json
import secrets
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hvdtrain.core.slurm import check_direct_launch
from hvdtrain.launch import slurm
from tests.conftest import require
from tests.launch import REPO
from tests.mlflow_server import MlflowServer
from tests.multihost import CommandLineWatch
from tests.slurm_cluster import job_id_of, slurm_cluster  # noqa: F401 (fixture)

HVDTRAIN = str(Path(sys.executable).parent / "hvdtrain")
SBATCH = str(REPO / "slurm" / "train.sbatch")
CHANCE = 0.1


# --- the allocation, read from Slurm's variables --------------------------------------------------

HOSTLISTS = {
    "t0h[2-3]": ["t0h2", "t0h3"],
    "node7": ["node7"],
    "gpu[01,07-08],login": ["gpu01", "gpu07", "gpu08", "login"],
    "x[098-101]": ["x098", "x099", "x100", "x101"],
    "rack[1-2]-n[1-2]": ["rack1-n1", "rack1-n2", "rack2-n1", "rack2-n2"],
    "a[9-11],b": ["a9", "a10", "a11", "b"],
}


@pytest.mark.parametrize("hostlist", HOSTLISTS)
def test_hostlist_expansion(hostlist):
    assert slurm.expand_hostlist(hostlist) == HOSTLISTS[hostlist]


def test_hostlist_expansion_matches_scontrol(tmp_path):
    """The same lists through Slurm's own parser (no daemon needed: a two-line config)."""
    require(None if shutil.which("scontrol") else "needs scontrol (apt-get install slurm-client)")
    conf = tmp_path / "slurm.conf"
    conf.write_text("ClusterName=x\nSlurmctldHost=localhost\n")
    for hostlist, expected in HOSTLISTS.items():
        out = subprocess.run(
            ["scontrol", "show", "hostnames", hostlist],
            capture_output=True,
            text=True,
            env={"SLURM_CONF": str(conf), "PATH": "/usr/bin:/bin"},
            check=True,
        ).stdout
        assert out.split() == expected == slurm.expand_hostlist(hostlist)


@pytest.mark.parametrize("hostlist", ["a[1-", "a]1[", "a[2-1]", "a[x]", "a,,b", ""])
def test_bad_hostlists_are_one_line_errors(hostlist):
    with pytest.raises(slurm.SlurmError, match="Slurm hostlist"):
        slurm.expand_hostlist(hostlist)


def test_task_counts():
    assert slurm.expand_counts("2(x3),1") == [2, 2, 2, 1]
    assert slurm.expand_counts("4") == [4]
    with pytest.raises(slurm.SlurmError, match=r"bad Slurm task count list '2\(3\)'"):
        slurm.expand_counts("2(3)")


JOB = {"SLURM_JOB_ID": "41", "SLURM_JOB_NODELIST": "n[1-3]", "SLURM_TASKS_PER_NODE": "2(x2),1"}


def test_allocation_gives_hosts_slots_and_world_size():
    alloc = slurm.allocation(JOB)
    assert alloc.hosts == [("n1", 2), ("n2", 2), ("n3", 1)]
    assert slurm.check_world_size(alloc, None) == 5 == slurm.check_world_size(alloc, 5)
    assert slurm.allocation({"PATH": "/bin"}) is None  # not in a job


@pytest.mark.parametrize(
    "env, message",
    [
        (
            {**JOB, "SLURM_TASKS_PER_NODE": "2"},
            "Slurm job 41: SLURM_TASKS_PER_NODE=2 gives 1 counts for 3 nodes in "
            "SLURM_JOB_NODELIST=n[1-3]",
        ),
        (
            {**JOB, "SLURM_TASKS_PER_NODE": ""},
            "Slurm job 41: SLURM_TASKS_PER_NODE is not set (allocate tasks, e.g. "
            "--ntasks-per-node=1, or pass -H)",
        ),
        (
            {**JOB, "SLURM_STEP_ID": "0"},
            "inside srun step 41.0 the job's hosts are not visible: run hvdtrain run in the batch "
            "script or salloc shell, not under srun (or pass -H)",
        ),
    ],
)
def test_unusable_allocations_are_one_line_errors(env, message):
    with pytest.raises(slurm.SlurmError) as err:
        slurm.allocation(env)
    assert str(err.value) == message


def test_world_size_must_match_the_allocation():
    with pytest.raises(slurm.SlurmError) as err:
        slurm.check_world_size(slurm.allocation(JOB), 4)
    assert str(err.value) == (
        "-np 4 differs from the allocation: Slurm job 41 has 5 tasks on n[1-3]; hvdtrain run "
        "starts one worker per task (leave out -np, or change --ntasks/--ntasks-per-node)"
    )


def test_launches_that_make_lone_rank_zero_workers_are_refused():
    step = {**JOB, "SLURM_STEP_ID": "3", "SLURM_STEP_NUM_TASKS": "2", "SLURM_PROCID": "1"}
    with pytest.raises(slurm.SlurmError) as err:
        slurm.check_launcher(step)
    assert str(err.value) == (
        "started by srun as task 1 of 2 (step 41.3): each task would launch its own job; run "
        "hvdtrain run once, in the batch script or salloc shell, without srun"
    )
    slurm.check_launcher({**step, "SLURM_STEP_NUM_TASKS": "1"})  # a one-task step launches one job
    with pytest.raises(slurm.SlurmError) as err:
        check_direct_launch(step)
    assert str(err.value) == (
        "srun started 2 tasks (step 41.3) without a launcher: each would train alone as rank 0; "
        "launch with hvdtrain run, once, in the batch script or salloc shell (not under srun)"
    )
    # horovodrun; srun --mpi=pmix or pmi2
    for started_by in (
        "HOROVOD_RANK",
        "PMIX_RANK",
        "PMI_RANK",
    ):
        check_direct_launch({**step, started_by: "1"})
    check_direct_launch(JOB)  # not in a step


# --- a real cluster -------------------------------------------------------------------------------


def submit(
    cluster, *argv: str, uri: str, wait: bool, **env: str
) -> tuple[str, subprocess.CompletedProcess]:
    """``sbatch`` the template from the repository, as a user would; (job id, sbatch's result)."""
    done = cluster.run(
        [
            "sbatch",
            "--parsable",
            *(["--wait"] if wait else []),
            "--output",
            str(cluster.root / "job-%j.out"),
            SBATCH,
            *argv,
        ],
        cwd=REPO,
        timeout=600,
        MLFLOW_TRACKING_URI=uri,
        HVDTRAIN=HVDTRAIN,
        OMP_NUM_THREADS="1",
        **env,
    )
    return job_id_of(done.stdout), done


def job_output(cluster, job_id: str) -> str:
    return (cluster.root / f"job-{job_id}.out").read_text()


def hvdtrain_lines(output: str) -> list[str]:
    return [line for line in output.splitlines() if line.startswith("hvdtrain:")]


def assert_nothing_left(cluster) -> None:
    """No job process on any compute node (only slurmd and its mount-namespace shell)."""
    deadline = time.monotonic() + 15
    for node in cluster.nodes:
        while (
            left := [p for p in cluster.hosts.job_processes(node) if "slurmd" not in p]
        ) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert left == [], f"{node}: {left}"


@pytest.fixture
def bridge_mlflow(tmp_path):
    """An MLflow server the test hosts reach, started once the hosts (and their bridge) exist."""
    servers = []

    def start(cluster) -> MlflowServer:
        server = MlflowServer(tmp_path, host=f"10.77.{cluster.hosts.instance}.1")
        servers.append(server)
        server.start()
        return server

    yield start
    for server in servers:
        server.stop()


@pytest.mark.multihost
@pytest.mark.slow
def test_batch_job_trains_digits_on_two_nodes(slurm_cluster, bridge_mlflow):
    cluster = slurm_cluster(nodes=2)
    mlflow = bridge_mlflow(cluster)
    results = cluster.root / "results.json"
    token = f"hf-{secrets.token_hex(8)}"  # issue 26: a secret in the environment sbatch exports
    with CommandLineWatch([token]) as watch:
        job_id, done = submit(
            cluster,
            "torch_examples/digits.py",
            "--epochs",
            "4",
            "--seed",
            "1",
            "--experiment",
            "slurm",
            "--results",
            str(results),
            uri=mlflow.uri,
            wait=True,
            HF_TOKEN=token,
        )
    output = job_output(cluster, job_id)
    assert done.returncode == 0, output[-3000:] + cluster.log_tails()
    assert watch.found == [] and token not in output  # on no command line of any node
    with CommandLineWatch([token]) as seen:  # the watch does see a command line that holds it
        subprocess.run(["sh", "-c", "sleep 0.5", "sh", token], check=True)
    assert seen.found
    result = json.loads(results.read_text())
    assert result["workers"] == 2 and result["test_accuracy"] >= 8 * CHANCE
    assert output.count("test accuracy:") == 1
    k = cluster.hosts.instance
    [run] = mlflow.client().search_runs(
        [mlflow.client().get_experiment_by_name("slurm").experiment_id]
    )
    assert run.info.status == "FINISHED" and run.info.run_id == result["run_id"]
    # one worker on each node of the allocation
    assert run.data.params["hostnames"] == f"t{k}h2,t{k}h3"
    assert run.data.params["world_size"] == "2"
    assert run.data.metrics["test_accuracy"] == result["test_accuracy"]
    completed = cluster.completed(job_id)
    assert (completed.state, completed.exit_code, completed.nodes) == (
        "COMPLETED",
        "0:0",
        f"t{k}h[2-3]",
    )
    assert_nothing_left(cluster)


@pytest.mark.multihost
@pytest.mark.slow
def test_scancel_ends_the_job_with_one_line_and_a_failed_run(slurm_cluster, bridge_mlflow):
    cluster = slurm_cluster(nodes=2)
    mlflow = bridge_mlflow(cluster)
    job_id, _ = submit(
        cluster,
        "torch_examples/digits.py",
        "--epochs",
        "200",
        "--experiment",
        "cancelled",
        "--log-every",
        "5",
        uri=mlflow.uri,
        wait=False,
    )
    client = mlflow.client()
    deadline = time.monotonic() + 180
    while True:  # training is under way: rank 0 has logged a step's loss
        experiment = client.get_experiment_by_name("cancelled")
        runs = client.search_runs([experiment.experiment_id]) if experiment else []
        if runs and "loss" in runs[0].data.metrics:
            break
        assert time.monotonic() < deadline, (
            job_output(cluster, job_id)[-3000:] + cluster.log_tails()
        )
        time.sleep(0.5)
    cancelled = time.monotonic()
    assert cluster.run(["scancel", job_id]).returncode == 0
    completed = cluster.completed(job_id)
    ended = time.monotonic() - cancelled
    k = cluster.hosts.instance
    # jobcomp/filetxt writes the record when the job is cancelled, before hvdtrain run has exited:
    # the state says it, the exit code is 0:0 (hvdtrain run's own 143 comes later).
    assert (completed.state, completed.exit_code, completed.nodes) == (
        "CANCELLED",
        "0:0",
        f"t{k}h[2-3]",
    )
    lines = hvdtrain_lines(job_output(cluster, job_id))
    assert len(lines) == 1, job_output(cluster, job_id)[-3000:]
    assert lines[0].startswith(
        "hvdtrain: job cancelled: SIGTERM (scancel, time limit or preemption); job stopped after "
    ), lines
    run = client.get_run(runs[0].info.run_id)
    assert run.info.status == "FAILED"
    assert run.data.tags["hvdtrain.failure"] == lines[0][len("hvdtrain: ") :]
    assert ended < 30  # within Slurm's KillWait: nothing had to be SIGKILLed
    assert_nothing_left(cluster)


@pytest.mark.multihost
def test_refused_launches_in_an_allocation(slurm_cluster):
    """One line and exit 2 before anything starts; a batch job's status reaches sacct."""
    cluster = slurm_cluster(nodes=2)
    k = cluster.hosts.instance
    salloc = ["salloc", "-N2", "--ntasks-per-node=1"]
    script = str(REPO / "torch_examples" / "digits.py")
    wrong = cluster.run([*salloc, HVDTRAIN, "run", "-np", "1", script], cwd=REPO)
    assert wrong.returncode == 2
    assert hvdtrain_lines(wrong.stderr) == [
        f"hvdtrain: error: -np 1 differs from the allocation: Slurm job {_granted(wrong)} has 2 "
        f"tasks on t{k}h[2-3]; hvdtrain run starts one worker per task (leave out -np, or change "
        "--ntasks/--ntasks-per-node)"
    ]
    per_task = cluster.run([*salloc, "srun", HVDTRAIN, "run", script], cwd=REPO)
    lines = hvdtrain_lines(per_task.stderr)
    assert per_task.returncode == 2 and len(lines) == 2, per_task.stderr
    assert {line.split("(step")[0] for line in lines} == {
        f"hvdtrain: error: started by srun as task {i} of 2 " for i in (0, 1)
    }
    lone = cluster.run(
        [*salloc, "srun", sys.executable, script, "--epochs", "1", "--no-tracking"],
        cwd=REPO,
        timeout=300,
    )
    assert lone.returncode == 1
    assert (
        sorted(hvdtrain_lines(lone.stderr))
        == [  # one line per task, before Horovod (MPI_Init) starts
            f"hvdtrain: error: srun started 2 tasks (step {_granted(lone)}.0) without a launcher: "
            "each would train alone as rank 0; launch with hvdtrain run, once, in the batch "
            "script or salloc shell (not under srun)"
        ]
        * 2
    )
    job_id, done = submit(cluster, "-np", "3", "torch_examples/digits.py", uri="", wait=True)
    assert done.returncode == 2
    assert hvdtrain_lines(job_output(cluster, job_id)) == [
        f"hvdtrain: error: -np 3 differs from the allocation: Slurm job {job_id} has 2 tasks on "
        f"t{k}h[2-3]; hvdtrain run starts one worker per task (leave out -np, or change "
        "--ntasks/--ntasks-per-node)"
    ]
    completed = cluster.completed(job_id)
    assert (completed.state, completed.exit_code) == ("FAILED", "2:0")


def _granted(done: subprocess.CompletedProcess) -> str:
    """The job id from salloc's "Granted job allocation N" line."""
    return next(
        line.split()[-1] for line in done.stderr.splitlines() if "Granted job allocation" in line
    )
