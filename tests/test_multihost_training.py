"""Issue 12: training across hosts, as on a cluster. Both frameworks' digits examples on 2 hosts x 1
slot (torch: under MPI), then resumed on 2 hosts x 2 slots (Gloo) from a checkpoint directory only
rank 0's host can write; the torch GPT example on 3 hosts x 1 slot. Every job logs to one MLflow
server on a fourth host and is launched on the first host, with tiny budgets.

Asserted: metrics far better than chance, one MLflow run per job (a resumed job continues its
run), the run's ``hostnames``, and the checkpoints written by rank 0's host alone.
"""

import json
import math

import pytest
from mlflow.tracking import MlflowClient

from hvdtrain.datasets import text
from tests.launch import REPO
from tests.multihost import HostMlflowServer, job_env, run, wait_clean

pytestmark = [pytest.mark.multihost, pytest.mark.slow]


@pytest.fixture(scope="module")
def cluster(module_test_hosts, tmp_path_factory):
    hosts = module_test_hosts(4)
    server = HostMlflowServer(hosts, hosts.names[3], tmp_path_factory.mktemp("mlflow"))
    yield hosts, server
    server.stop()


def the_run(server, experiment: str):
    """The experiment's only run."""
    client = MlflowClient(server.uri)
    [run] = client.search_runs([client.get_experiment_by_name(experiment).experiment_id])
    return client, run


def succeeded(job) -> dict:
    assert job.returncode == 0, job.stderr[-3000:]
    return job


# example, checkpoint suffix, the first job's launcher flags (torch's first job runs under MPI)
DIGITS = {
    "torch": ("torch_examples/digits.py", ".pt", ["--mpi"]),
    "keras": ("tf_examples/digits.py", ".keras", []),
}


@pytest.mark.parametrize("framework", sorted(DIGITS))
def test_digits_on_2x1_then_resumed_on_2x2_from_rank0s_checkpoints(cluster, tmp_path, framework):
    hosts, server = cluster
    h1, h2 = hosts.names[:2]
    script, suffix, first_flags = DIGITS[framework]
    checkpoints = tmp_path / "ckpt"
    checkpoints.mkdir()
    hosts.start(h2, hide=[str(checkpoints)])  # h2 sees an empty directory it cannot write to
    experiment = f"digits-{framework}-hosts"
    env = job_env(MLFLOW_TRACKING_URI=server.uri, MLFLOW_EXPERIMENT_NAME=experiment)
    common = [
        str(REPO / script),
        "--train-samples",
        "600",
        "--batch-size",
        "16",
        "--seed",
        "1",
        "--checkpoint-dir",
        str(checkpoints),
        "--resume",
        "--results",
        "results.json",
    ]
    try:
        succeeded(
            run(
                hosts,
                h1,
                *first_flags,
                "-np",
                "2",
                "-H",
                f"{h1}:1,{h2}:1",
                *common,
                "--epochs",
                "2",
                cwd=tmp_path,
                env=env,
            )
        )
        first = json.loads((tmp_path / "results.json").read_text())
        assert hosts.run(h2, ["ls", "-A", str(checkpoints)]).stdout == ""
        succeeded(
            run(
                hosts,
                h1,
                "-np",
                "4",
                "-H",
                f"{h1}:2,{h2}:2",
                *common,
                "--epochs",
                "3",
                cwd=tmp_path,
                env=env,
            )
        )
        second = json.loads((tmp_path / "results.json").read_text())
    finally:
        hosts.start(h2)
    print(
        f"\n{framework}: test accuracy {first['test_accuracy']:.3f} after 2 epochs on 2 hosts x 1"
        f"{' (MPI)' if first_flags else ''}, {second['test_accuracy']:.3f} after the third on 2 x 2"
    )
    assert (first["workers"], second["workers"]) == (2, 4)
    assert first["test_accuracy"] > 0.7 and second["test_accuracy"] > 0.8, second  # chance: 0.1
    # written by h1, rank 0's host
    assert {p.suffix for p in checkpoints.glob("step-*")} == {suffix, ".json"}
    client, run_ = the_run(server, experiment)
    assert (
        run_.info.run_id == first["run_id"] == second["run_id"] and run_.info.status == "FINISHED"
    )
    assert run_.data.params["hostnames"] == f"{h1},{h2}"
    assert (run_.data.params["world_size"], run_.data.params["leg2.world_size"]) == ("2", "4")
    epochs = sorted(m.step for m in client.get_metric_history(run_.info.run_id, "val_accuracy"))
    assert epochs == [0, 1, 2]  # the second job trained the third epoch only: it resumed
    wait_clean(hosts, [h1, h2], timeout=10)


def test_gpt_on_3_hosts(cluster, tmp_path):
    hosts, server = cluster
    h1, h2, h3 = hosts.names[:3]
    env = job_env(MLFLOW_TRACKING_URI=server.uri, MLFLOW_EXPERIMENT_NAME="gpt-hosts")
    succeeded(
        run(
            hosts,
            h1,
            "-np",
            "3",
            "-H",
            f"{h1}:1,{h2}:1,{h3}:1",
            str(REPO / "torch_examples/gpt.py"),
            "--max-bytes",
            "300000",
            "--val-bytes",
            "20000",
            "--windows",
            "4800",
            "--block",
            "32",
            "--d-model",
            "64",
            "--layers",
            "2",
            "--heads",
            "2",
            "--lr",
            "3e-3",
            "--warmup-steps",
            "10",
            "--epochs",
            "1",
            "--results",
            "results.json",
            cwd=tmp_path,
            env=env,
        )
    )
    found = json.loads((tmp_path / "results.json").read_text())
    chance = math.log(text.VOCAB_SIZE)
    assert found["workers"] == 3 and found["val_loss"] < 0.5 * chance and found["metric"] < 0.9, (
        found
    )
    client, run_ = the_run(server, "gpt-hosts")
    assert run_.info.run_id == found["run_id"] and run_.info.status == "FINISHED"
    assert run_.data.params["hostnames"] == f"{h1},{h2},{h3}"
    assert [m.value for m in client.get_metric_history(run_.info.run_id, "world_size")] == [3]
    wait_clean(hosts, [h1, h2, h3], timeout=10)
