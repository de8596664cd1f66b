"""Issue 5: a 2-rank torch job tracked in a real MLflow server: one run, outages, spill + sync."""

import argparse
import json
import subprocess
import threading
import time
from pathlib import Path

import mlflow
import mlflow.pytorch
import pytest
import torch

from hvdtrain.cli.tracking import register
from hvdtrain.tracking.journal import replay
from tests import docs_table
from tests.launch import REPO, horovodrun, results
from tests.mlflow_server import (  # noqa: F401 - fixtures
    free_port,
    mlflow_server,
    mlflow_server_session,
)

STEPS = 12


def run_job(server_uri, out, experiment, *args, **kwargs):
    horovodrun(
        "tracking_torch.py",
        "--experiment",
        experiment,
        *args,
        out=out,
        env={"MLFLOW_TRACKING_URI": server_uri},
        **kwargs,
    )
    return results(out)


def steps_of(client, run_id, key):
    return [m.step for m in sorted(client.get_metric_history(run_id, key), key=lambda m: m.step)]


def mlflow_sync(spill, uri):
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    args = parser.parse_args(["mlflow-sync", str(spill), "--tracking-uri", uri])
    assert args.func(args) == 0


@pytest.fixture(scope="module")
def normal_job(tmp_path_factory, mlflow_server_session):
    server = mlflow_server_session
    if not server.running:
        server.start()
    return server, run_job(
        server.uri,
        tmp_path_factory.mktemp("torch_normal"),
        "torch-normal",
        "--mode",
        "normal",
        "--steps",
        str(STEPS),
    )


@pytest.mark.slow
def test_one_run_with_data_parallel_params(normal_job):
    server, ranks = normal_job
    client = server.client()
    assert ranks[0]["run_id"] and ranks[0]["run_id"] == ranks[1]["run_id"]
    experiment = client.get_experiment_by_name("torch-normal")
    runs = client.search_runs([experiment.experiment_id])
    assert [r.info.run_id for r in runs] == [ranks[0]["run_id"]]
    run = runs[0]
    assert run.info.status == "FINISHED"
    assert run.data.tags["suite"] == "hvdtrain"
    params = run.data.params
    assert {
        k: params[k]
        for k in (
            "framework",
            "world_size",
            "lr_scaling",
            "base_lr",
            "scaled_lr",
            "warmup_steps",
            "per_rank_batch_size",
            "global_batch_size",
            "accumulation_steps",
            "compression",
            "op",
            "model.kind",
        )
    } == {
        "framework": "torch",
        "world_size": "2",
        "lr_scaling": "linear",
        "base_lr": "0.05",
        "scaled_lr": "0.1",
        "warmup_steps": "0",
        "per_rank_batch_size": "8",
        "global_batch_size": "16",
        "accumulation_steps": "1",
        "compression": "none",
        "op": "average",
        "model.kind": "linear",
    }
    assert (
        params["torch_version"] == torch.__version__
        and params["mlflow_version"] == mlflow.__version__
    )
    assert params["horovod_version"] and params["python_version"] and params["hostnames"]
    head = subprocess.run(
        ["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True
    ).stdout.strip()
    assert params["git_commit"] == head
    assert not [k for k in params if "password" in k]
    config = json.loads(Path(client.download_artifacts(run.info.run_id, "config.json")).read_text())
    assert config == {"model": {"kind": "linear", "inputs": 4}}


@pytest.mark.slow
def test_metric_histories_are_rank_averages_at_each_step(normal_job):
    server, ranks = normal_job
    client, run_id = server.client(), ranks[0]["run_id"]
    loss = sorted(client.get_metric_history(run_id, "loss"), key=lambda m: m.step)
    assert [m.step for m in loss] == list(range(STEPS))
    expected = [(a + b) / 2 for a, b in zip(ranks[0]["losses"], ranks[1]["losses"])]
    assert [m.value for m in loss] == pytest.approx(expected, rel=1e-6)
    assert [m.value for m in client.get_metric_history(run_id, "lr")] == pytest.approx(
        [0.1] * STEPS
    )
    assert steps_of(client, run_id, "samples_per_sec") == list(range(1, STEPS))
    epoch = client.get_metric_history(run_id, "epoch_loss")
    assert [(m.step, m.value) for m in epoch] == [
        (0, pytest.approx(sum(expected) / STEPS, rel=1e-6))
    ]
    assert client.get_metric_history(run_id, "val_loss")[0].value == pytest.approx(
        expected[-1], rel=1e-6
    )


@pytest.mark.slow
def test_logged_model_predicts_like_the_trained_model(normal_job):
    server, ranks = normal_job
    assert ranks[0]["weights"] == ranks[1]["weights"]
    assert ranks[1]["model_uri"] is None  # only rank 0 logs
    inputs = torch.randn(256, 4, generator=torch.Generator().manual_seed(0))[:5]
    mlflow.set_tracking_uri(server.uri)
    try:
        loaded = mlflow.pytorch.load_model(ranks[0]["model_uri"])
    finally:
        mlflow.set_tracking_uri(None)
    assert loaded(inputs).detach().flatten().tolist() == pytest.approx(
        ranks[0]["predictions"], abs=1e-6
    )
    [version] = server.client().search_model_versions("name='hvdtrain-torch'")
    assert version.run_id == ranks[0]["run_id"]


def outage_job(server, out, experiment, restart):
    """Run the outage worker; stop the server when both ranks reach step 10, restart it if asked."""
    done = {}
    job = threading.Thread(
        target=lambda: done.update(
            ranks=run_job(
                server.uri,
                out,
                experiment,
                "--mode",
                "outage",
                "--steps",
                "40",
                "--step-sleep",
                "0.05",
                "--no-restart",
                str(int(not restart)),
            )
        )
    )
    job.start()
    deadline = time.monotonic() + 240
    while not ((out / "ready0").exists() and (out / "ready1").exists()) and job.is_alive():
        assert time.monotonic() < deadline
        time.sleep(0.05)
    server.stop()
    (out / "stopped").touch()
    if restart:
        server.start()
        (out / "restarted").touch()
    job.join(300)
    return done["ranks"]


@pytest.mark.slow
def test_outage_buffers_and_resends_without_slowing_training(tmp_path, mlflow_server):
    ranks = outage_job(mlflow_server, tmp_path, "torch-outage", restart=True)
    for rank in ranks:
        assert rank["max_log_seconds"] < 0.5  # a log call never waits for the server
        assert rank["loop_seconds"] < 40 * 0.05 + 10
    assert ranks[0]["spill"] is None and ranks[0]["finish_seconds"] < 30
    client = mlflow_server.client()
    assert steps_of(client, ranks[0]["run_id"], "loss") == list(range(40))
    assert client.get_run(ranks[0]["run_id"]).info.status == "FINISHED"


@pytest.mark.slow
def test_server_never_back_spills_and_sync_uploads_everything(tmp_path, mlflow_server):
    ranks = outage_job(mlflow_server, tmp_path, "torch-spill", restart=False)
    assert ranks[0]["finish_seconds"] < 30 and ranks[1]["spill"] is None
    journal = replay(Path(ranks[0]["spill"]))  # what the job could not send, kept in its journal
    assert journal.spec.run_id == ranks[0]["run_id"]
    unsent = [record for _, record in journal.unsent]
    unsent_steps = sorted(
        {m[3] for r in unsent if r["kind"] == "metrics" for m in r["metrics"] if m[0] == "loss"}
    )
    assert unsent_steps[-1] == 39 and unsent_steps == list(range(unsent_steps[0], 40))
    assert unsent[-1]["kind"] == "end" and journal.has_end
    spill = Path(ranks[0]["spill"])

    mlflow_server.start()
    mlflow_sync(spill, mlflow_server.uri)
    client = mlflow_server.client()
    assert steps_of(client, ranks[0]["run_id"], "loss") == list(range(40))
    assert client.get_run(ranks[0]["run_id"]).info.status == "FINISHED"


@pytest.mark.slow
def test_unreachable_server_at_start_warns_once_and_training_runs(tmp_path, mlflow_server):
    dead = f"http://127.0.0.1:{free_port()}"
    started = time.monotonic()
    proc = horovodrun(
        "tracking_torch.py",
        "--experiment",
        "torch-offline",
        "--mode",
        "offline",
        "--steps",
        "5",
        out=tmp_path,
        env={"MLFLOW_TRACKING_URI": dead},
    )
    ranks = results(tmp_path)
    assert time.monotonic() - started < 120
    assert ranks[0]["run_id"] is None and ranks[1]["run_id"] is None
    assert ranks[0]["weights"] == ranks[1]["weights"] and len(ranks[0]["losses"]) == 5
    output = proc.stdout + proc.stderr
    docs_table.row("MLFLOW_TRACKING_URI on a dead port").check(output, proc.returncode)
    assert output.count("is unreachable") == 1, output[-3000:]
    assert output.count("hvdtrain mlflow-sync") == 1

    mlflow_sync(ranks[0]["spill"], mlflow_server.uri)
    client = mlflow_server.client()
    [run] = client.search_runs([client.get_experiment_by_name("torch-offline").experiment_id])
    assert run.data.params["world_size"] == "2" and run.info.status == "FINISHED"
    assert steps_of(client, run.info.run_id, "loss") == list(range(5))
