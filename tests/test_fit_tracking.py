"""Issue 23, item 3: ``fit(..., tracker=)`` logs the run's data-parallel params itself, and an
experiment hvdtrain creates is tagged for MLflow 3's model-training view (one the user made keeps
its own kind). Each digits example, in one process, without a script-side ``log_params`` of them."""

import os
import subprocess
import sys

import pytest

from tests.launch import REPO

KIND = "mlflow.experimentKind"
EXPECTED = {
    "world_size": "1",
    "base_lr": "0.003",
    "scaled_lr": "0.003",
    "per_rank_batch_size": "16",
    "global_batch_size": "32",
    "lr_scaling": "linear",
    "warmup_steps": "0",
    "compression": "none",
    "op": "average",
    "accumulation_steps": "2",
    "shard_optimizer_state": "False",
    "shard_gradients": "False",
}


@pytest.mark.parametrize(
    "framework, examples, experiment, kind",
    [
        ("torch", "torch_examples", "made-by-hvdtrain", "custom_model_development"),
        ("keras", "tf_examples", "made-by-the-user", "genai_development"),
    ],
)
def test_fit_logs_the_training_params_and_the_experiment_kind(
    tmp_path, framework, examples, experiment, kind
):
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    if experiment == "made-by-the-user":
        client.create_experiment(experiment, tags={KIND: kind})
    proc = subprocess.run(
        [
            sys.executable,
            str(REPO / examples / "digits.py"),
            "--epochs",
            "1",
            "--train-samples",
            "64",
            "--batch-size",
            "16",
            "--lr",
            "0.003",
            "--accumulation-steps",
            "2",
            "--experiment",
            experiment,
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
        env={**os.environ, "MLFLOW_TRACKING_URI": uri, "TF_CPP_MIN_LOG_LEVEL": "3"},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    found = client.get_experiment_by_name(experiment)
    assert found.tags[KIND] == kind
    [run] = client.search_runs([found.experiment_id])
    assert {key: run.data.params[key] for key in EXPECTED} == EXPECTED
    assert run.data.params["framework"] == framework
    assert "already logged" not in proc.stderr  # each param sent once
