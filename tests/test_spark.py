"""``hvdtrain.spark``: Parquet shards, and the digits examples' Spark twins on a real Spark 4 in
local mode and on a standalone cluster on loopback (``tests/spark_cluster.py``): trained, tracked
into one MLflow run; a lost executor is one line and a FAILED run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from hvdtrain.core.guards import UserError
from hvdtrain.spark import read_shard
from tests.launch import REPO
from tests.mlflow_server import mlflow_server, mlflow_server_session  # noqa: F401 (fixtures)
from tests.spark_cluster import spark_env, spark_standalone  # noqa: F401 (fixture)

CHANCE = 0.1


# --- each rank's shard of a Parquet dataset -------------------------------------------------------


@pytest.fixture
def uneven_parquet(tmp_path):
    """Rows 0..9 in three files of 5, 1 and 4 rows (Spark's part files are of any sizes)."""
    path = tmp_path / "data.parquet"
    path.mkdir()
    for name, rows in (
        ("part-00000", range(0, 5)),
        ("part-00001", range(5, 6)),
        ("part-00002", range(6, 10)),
    ):
        pq.write_table(
            pa.table({"id": list(rows), "x": [r * 10 for r in rows]}), path / f"{name}.parquet"
        )
    return path


def ids(table) -> list[int]:
    return table.column("id").to_pylist()


def test_shards_are_equal_contiguous_blocks_across_files(uneven_parquet):
    # ceil(10 / 3) = 4 rows each, the last block wraps
    assert [ids(read_shard(uneven_parquet, rank=r, size=3)) for r in range(3)] == [
        [0, 1, 2, 3],
        [4, 5, 6, 7],
        [8, 9, 0, 1],
    ]
    assert [ids(read_shard(uneven_parquet, rank=r, size=4)) for r in range(4)] == [
        [0, 1, 2],
        [3, 4, 5],
        [6, 7, 8],
        [9, 0, 1],
    ]
    assert ids(read_shard(uneven_parquet, rank=0, size=1)) == list(range(10))
    assert read_shard(uneven_parquet, ["x"], rank=1, size=2).column_names == ["x"]


def test_missing_or_empty_dataset_is_one_line(tmp_path):
    with pytest.raises(
        UserError, match=r"Parquet dataset not found: .*nowhere \(the executors must see"
    ):
        read_shard(tmp_path / "nowhere", rank=0, size=1)
    (tmp_path / "empty").mkdir()
    pq.write_table(
        pa.table({"id": pa.array([], pa.int64())}), tmp_path / "empty" / "part-0.parquet"
    )
    with pytest.raises(UserError, match="has no rows"):
        read_shard(tmp_path / "empty", rank=0, size=1)


# --- the examples on Spark ------------------------------------------------------------------------


def run_example(
    framework_dir: str,
    *args: str,
    tmp_path,
    uri: str,
    timeout: float = 600,
    background: bool = False,
):
    command = [
        sys.executable,
        str(REPO / framework_dir / "spark_digits.py"),
        "--parquet",
        str(tmp_path / "train.parquet"),
        "--seed",
        "1",
        *args,
    ]
    env = spark_env(MLFLOW_TRACKING_URI=uri, OMP_NUM_THREADS="1", TF_CPP_MIN_LOG_LEVEL="3")
    if background:
        return subprocess.Popen(
            command,
            cwd=tmp_path,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
    return subprocess.run(
        command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=timeout
    )


def hvdtrain_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("hvdtrain:")]


def assert_one_tracked_run(mlflow, experiment: str, results: dict, framework: str) -> None:
    assert results["framework"] == framework and results["workers"] == 2
    assert results["test_accuracy"] >= 8 * CHANCE and results["test_samples"] == 360
    client = mlflow.client()
    [run] = client.search_runs([client.get_experiment_by_name(experiment).experiment_id])
    assert run.info.run_id == results["run_id"] and run.info.status == "FINISHED"
    assert run.data.params["world_size"] == "2"
    assert run.data.metrics["test_accuracy"] == results["test_accuracy"]
    # Each rank trained on its own half of the Parquet rows: ceil(1257 / 2 / 32) = 20 steps an epoch
    # (the whole split on each rank would take 40).
    [final] = client.get_metric_history(run.info.run_id, "test_accuracy")
    assert final.step == 4 * 20


@pytest.mark.slow
def test_local_mode_trains_the_torch_example_into_one_run(tmp_path, mlflow_server):
    done = run_example(
        "torch_examples",
        "--epochs",
        "4",
        "--experiment",
        "spark-local",
        "--results",
        str(tmp_path / "results.json"),
        tmp_path=tmp_path,
        uri=mlflow_server.uri,
    )
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    results = json.loads((tmp_path / "results.json").read_text())
    assert_one_tracked_run(mlflow_server, "spark-local", results, "torch")
    assert (done.stdout + done.stderr).count("test accuracy:") == 1  # rank 0 only


@pytest.mark.slow
def test_standalone_cluster_trains_the_keras_example_into_one_run(
    tmp_path, mlflow_server, spark_standalone
):
    done = run_example(
        "tf_examples",
        "--master",
        spark_standalone.url,
        "--nics",
        "lo",
        "--epochs",
        "4",
        "--experiment",
        "spark-standalone",
        "--results",
        str(tmp_path / "results.json"),
        tmp_path=tmp_path,
        uri=mlflow_server.uri,
    )
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:] + spark_standalone.log_tails()
    results = json.loads((tmp_path / "results.json").read_text())
    assert_one_tracked_run(mlflow_server, "spark-standalone", results, "keras")
    assert (done.stdout + done.stderr).count("test accuracy:") == 1


@pytest.mark.slow
def test_a_lost_executor_is_one_line_and_a_failed_run(tmp_path, mlflow_server, spark_standalone):
    job = run_example(
        "torch_examples",
        "--master",
        spark_standalone.url,
        "--nics",
        "lo",
        "--epochs",
        "500",
        "--log-every",
        "5",
        "--experiment",
        "spark-lost",
        tmp_path=tmp_path,
        uri=mlflow_server.uri,
        background=True,
    )
    client = mlflow_server.client()
    deadline = time.monotonic() + 300
    try:
        while True:  # training is under way: rank 0 logged a loss
            experiment = client.get_experiment_by_name("spark-lost")
            runs = client.search_runs([experiment.experiment_id]) if experiment else []
            if runs and "loss" in runs[0].data.metrics:
                break
            assert job.poll() is None and time.monotonic() < deadline, spark_standalone.log_tails()
            time.sleep(1)
        executors = spark_standalone.executors()
        assert sorted(executors) == ["worker1", "worker2"]
        os.kill(executors["worker2"], 9)
        out, err = job.communicate(timeout=180)
    finally:
        if job.poll() is None:
            job.kill()
    assert job.returncode == 1, (out + err)[-4000:]
    lines = hvdtrain_lines(err)
    assert len(lines) == 1 and lines[0] in [
        f"hvdtrain: error: Spark job failed: worker {rank} lost with its Spark executor (no exit "
        "status: the executor or its host died)"
        for rank in (0, 1)
    ], err[-4000:]
    run = client.get_run(runs[0].info.run_id)
    assert run.info.status == "FAILED"
    assert run.data.tags["hvdtrain.failure"] == lines[0][len("hvdtrain: error: ") :]
