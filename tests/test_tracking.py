"""Issue 5, single process (a one-worker job): params policy, the local store, resume, nesting,
rejected records, artifact staging, spill files. Multi-rank jobs are in test_tracking_torch/keras."""
import argparse
import json
import logging
import os
import signal
import subprocess
import sys
import time

import pytest
from mlflow.tracking import MlflowClient

from hvdtrain import tracking
from hvdtrain.cli.errors import CliError
from hvdtrain.core import context
from hvdtrain.core.options import DistributedOptions
from hvdtrain.tracking.cli import register
from hvdtrain.tracking.params import flatten
from hvdtrain.tracking.spill import sync
from tests.launch import REPO
from tests.mlflow_server import QUIET_SERVER, free_port, wait_healthy


def one_worker(framework="torch", size=1, on_gpu=False):
    return context.Context(framework, 0, size, 0, size, "cuda:0" if on_gpu else "cpu",
                           broadcast_object=lambda obj, root: obj, average=dict)


@pytest.fixture(scope="module")
def local_store(tmp_path_factory):
    """MLflow's default local store, made by ``prepare_local_store`` in a fresh working directory
    (one per module: creating the sqlite schema takes seconds)."""
    with pytest.MonkeyPatch.context() as mp:
        cwd = tmp_path_factory.mktemp("local_store")
        mp.chdir(cwd)
        mp.setenv("MLFLOW_TRACKING_URI", "")  # records the original, restored after the module
        mp.delenv("MLFLOW_TRACKING_URI")
        uri = tracking.prepare_local_store()
        yield cwd, uri


@pytest.fixture
def store(local_store, monkeypatch):
    """A one-worker job on the local store."""
    cwd, uri = local_store
    monkeypatch.chdir(cwd)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.delenv("MLFLOW_RUN_ID", raising=False)
    context.set_current(one_worker())
    yield uri
    context.set_current(None)


def test_secrets_never_become_params():
    config = {"lr": 0.1, "db_password": "x", "api_key": "x", "auth": {"user": "x"}, "hf_token": "x",
              "aws": {"secret_access_key": "x", "region": "eu"}, "key": "x", "keys_per_batch": 3,
              "nested": {"private_key": "x", "depth": 2}}
    assert flatten(config) == {"lr": "0.1", "aws.region": "eu", "keys_per_batch": "3", "nested.depth": "2"}


def test_training_params_follow_the_lr_policy():
    options = DistributedOptions(lr_scaling="sqrt", accumulation_steps=2, compression="fp16")
    params = tracking.training_params(one_worker(size=4), options, base_lr=0.1, per_rank_batch_size=32)
    assert params == {"framework": "torch", "world_size": 4, "lr_scaling": "sqrt", "warmup_steps": 0,
                      "compression": "fp16", "op": "average", "accumulation_steps": 2, "base_lr": 0.1,
                      "scaled_lr": pytest.approx(0.2), "per_rank_batch_size": 32, "global_batch_size": 256}
    adasum = tracking.training_params(one_worker(size=4), DistributedOptions(op="adasum"), base_lr=0.1,
                                      per_rank_batch_size=32)
    assert adasum["scaled_lr"] == 0.1  # Adasum on CPU: no scaling


def test_prepare_local_store_is_idempotent_and_exports_the_store(local_store, monkeypatch):
    cwd, uri = local_store
    assert uri == f"sqlite:///{cwd / 'mlflow.db'}" and (cwd / "mlflow.db").is_file()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)  # what prepare_local_store exported to the launcher's env
    monkeypatch.chdir(cwd.parent)  # a worker started elsewhere still finds the same store
    assert tracking.prepare_local_store() == uri


def test_default_store_run_with_config_artifact_and_staged_checkpoint(store, tmp_path):
    tracker = tracking.start(config={"opt": {"lr": 0.1}, "token": "x"}, experiment="local", tags={"team": "a"})
    checkpoint = tmp_path / "step-1.pt"
    checkpoint.write_text("weights")
    tracker.log_artifact(checkpoint, "checkpoints")
    checkpoint.unlink()  # pruned right away: the queued upload still has its copy
    for step in range(5):
        tracker.log_metrics({"loss": 1.0 / (step + 1)}, step=step)
    assert tracker.finish() is None
    client = MlflowClient(store)
    run = client.get_run(tracker.run_id)
    assert run.data.params["opt.lr"] == "0.1" and "token" not in run.data.params
    assert run.data.tags["team"] == "a" and run.info.status == "FINISHED"
    assert [m.step for m in client.get_metric_history(tracker.run_id, "loss")] == list(range(5))
    assert {a.path for a in client.list_artifacts(tracker.run_id)} == {"config.json", "checkpoints"}
    assert json.loads(open(client.download_artifacts(tracker.run_id, "config.json")).read()) == {"opt": {"lr": 0.1}}
    assert open(client.download_artifacts(tracker.run_id, "checkpoints/step-1.pt")).read() == "weights"


def test_resume_with_mlflow_run_id_and_nested_runs(store, monkeypatch):
    first = tracking.start(experiment="resume")
    first.log_metrics({"loss": 2.0}, step=0)
    first.finish(status="KILLED")
    monkeypatch.setenv("MLFLOW_RUN_ID", first.run_id)
    resumed = tracking.start(experiment="resume")
    resumed.log_metrics({"loss": 1.0}, step=1)
    resumed.finish()
    monkeypatch.delenv("MLFLOW_RUN_ID")
    child = tracking.start(experiment="resume", parent_run_id=first.run_id)
    child.finish()
    client = MlflowClient(store)
    assert resumed.run_id == first.run_id
    assert [(m.step, m.value) for m in client.get_metric_history(first.run_id, "loss")] == [(0, 2.0), (1, 1.0)]
    assert client.get_run(first.run_id).info.status == "FINISHED"
    assert client.get_run(child.run_id).data.tags["mlflow.parentRunId"] == first.run_id


def test_a_rejected_record_is_dropped_with_a_warning_and_the_rest_still_sent(store, caplog):
    tracker = tracking.start(experiment="rejected")
    tracker.log_params({"batch": 32})
    tracker.log_params({"batch": 64})  # MLflow refuses to change a logged param
    tracker.log_metrics({"loss": 0.5}, step=3)
    with caplog.at_level(logging.WARNING, logger="hvdtrain.tracking"):
        assert tracker.finish() is None
    client = MlflowClient(store)
    assert client.get_run(tracker.run_id).data.params["batch"] == "32"
    assert [m.step for m in client.get_metric_history(tracker.run_id, "loss")] == [3]
    assert "rejected a params record" in caplog.text


def test_sync_refuses_what_is_not_a_spill_file_in_one_line(tmp_path):
    bad = tmp_path / "notes.jsonl"
    bad.write_text('{"kind": "metrics", "metrics": []}\n')
    with pytest.raises(ValueError, match="not an hvdtrain MLflow spill file"):
        sync(bad)
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    args = parser.parse_args(["mlflow-sync", str(tmp_path / "missing.jsonl")])
    with pytest.raises(CliError, match="missing.jsonl"):
        args.func(args)


def test_system_metrics_when_asked(store, monkeypatch):
    monkeypatch.setenv("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", "0.2")
    tracker = tracking.start(experiment="system", system_metrics=True)
    time.sleep(1.0)
    tracker.finish()
    metrics = MlflowClient(store).get_run(tracker.run_id).data.metrics
    assert metrics["system/cpu_utilization_percentage"] >= 0
    assert metrics["system/system_memory_usage_megabytes"] > 0


@pytest.mark.slow
def test_ui_command_serves_the_local_store(store, local_store):
    tracker = tracking.start(experiment="shown", run_name="in-the-ui")
    tracker.finish()
    port = free_port()
    # The subcommand through its own parser: the test does not depend on how hvdtrain/cli wires it.
    cli = ("import argparse, sys; from hvdtrain.tracking.cli import register; p = argparse.ArgumentParser(); "
           "register(p.add_subparsers()); a = p.parse_args(sys.argv[1:]); sys.exit(a.func(a))")
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    env = {**env, **QUIET_SERVER, "PYTHONPATH": str(REPO)}
    ui = subprocess.Popen([sys.executable, "-c", cli, "ui", "--port", str(port)], text=True, stdout=subprocess.PIPE,
                          env=env, cwd=local_store[0], start_new_session=True)
    try:
        url = f"http://127.0.0.1:{port}"
        assert ui.stdout.readline().startswith(f"MLflow UI on {url} (store: {store})")
        wait_healthy(url, ui, timeout=120)
        assert MlflowClient(url).get_run(tracker.run_id).info.run_name == "in-the-ui"
    finally:
        os.killpg(ui.pid, signal.SIGKILL)
        ui.wait()



def test_spilled_artifacts_survive_and_sync_creates_the_run(store, tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{free_port()}")  # nothing listens there
    tracker = tracking.start(config={"lr": 0.1}, experiment="spilled", spill_dir=tmp_path / "spill")
    checkpoint = tmp_path / "step-7.pt"
    checkpoint.write_text("weights")
    tracker.log_artifact(checkpoint, "checkpoints")
    tracker.log_metrics({"loss": 0.25}, step=7)
    spill = tracker.finish()
    checkpoint.unlink()
    assert tracker.run_id is None and spill.parent == tmp_path / "spill"
    run_id, sent = sync(spill, tracking_uri=store)
    client = MlflowClient(store)
    run = client.get_run(run_id)
    assert client.get_experiment(run.info.experiment_id).name == "spilled" and run.data.params["lr"] == "0.1"
    assert [(m.step, m.value) for m in client.get_metric_history(run_id, "loss")] == [(7, 0.25)]
    assert open(client.download_artifacts(run_id, "checkpoints/step-7.pt")).read() == "weights"
    assert run.info.status == "FINISHED" and sent == 5  # params, config.json, checkpoint, metrics, end
    # A synced file is set aside, so syncing again cannot duplicate the run.
    assert not spill.exists() and spill.with_name(spill.name + ".synced").exists()


def test_a_broken_artifact_or_store_is_a_warning_not_a_crash(store, tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "unknownscheme://nowhere")  # MLflow cannot even build a client
    tracker = tracking.start(config={"lr": 0.1})
    tracker.log_artifact(tmp_path / "missing.pt")
    tracker.log_metrics({"loss": 1.0}, step=0)
    assert tracker.run_id is None and tracker.finish() is None
    assert "MLflow tracking disabled for this job" in caplog.text
