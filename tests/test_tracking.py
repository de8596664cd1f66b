"""Issue 5, single process (a one-worker job): params policy, the local store, resume, nesting,
rejected records, artifact staging, spill files; issue 8: run files and a resumed job's legs.
Multi-rank jobs are in test_tracking_torch/keras, resumed examples in test_resume."""

import argparse
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time

import pytest
from mlflow.tracking import MlflowClient

from hvdtrain import tracking
from hvdtrain.cli.tracking import register
from hvdtrain.core import context
from hvdtrain.core.checkpoint import CheckpointDir, CheckpointError, CheckpointMeta
from hvdtrain.core.errors import UsageError
from hvdtrain.core.options import DistributedOptions
from hvdtrain.tracking.params import flatten
from hvdtrain.tracking.sync import sync
from tests import docs_table
from tests.launch import REPO
from tests.mlflow_server import (  # noqa: F401 - fixtures
    QUIET_SERVER,
    free_port,
    mlflow_server,
    mlflow_server_session,
    wait_healthy,
)


def one_worker(framework="torch", size=1, on_gpu=False):
    return context.Context(
        framework,
        0,
        size,
        0,
        size,
        "cuda:0" if on_gpu else "cpu",
        broadcast_object=lambda obj, root: obj,
        average=dict,
    )


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
    config = {
        "lr": 0.1,
        "db_password": "x",
        "api_key": "x",
        "auth": {"user": "x"},
        "hf_token": "x",
        "aws": {"secret_access_key": "x", "region": "eu"},
        "key": "x",
        "keys_per_batch": 3,
        "nested": {"private_key": "x", "depth": 2},
    }
    assert flatten(config) == {
        "lr": "0.1",
        "aws.region": "eu",
        "keys_per_batch": "3",
        "nested.depth": "2",
    }


def test_training_params_follow_the_lr_policy():
    options = DistributedOptions(lr_scaling="sqrt", accumulation_steps=2, compression="fp16")
    params = tracking.training_params(
        one_worker(size=4), options, base_lr=0.1, per_rank_batch_size=32
    )
    assert params == {
        "framework": "torch",
        "world_size": 4,
        "lr_scaling": "sqrt",
        "warmup_steps": 0,
        "compression": "fp16",
        "op": "average",
        "accumulation_steps": 2,
        "shard_optimizer_state": False,
        "shard_gradients": False,
        "base_lr": 0.1,
        "scaled_lr": pytest.approx(0.2),
        "per_rank_batch_size": 32,
        "global_batch_size": 256,
    }
    adasum = tracking.training_params(
        one_worker(size=4), DistributedOptions(op="adasum"), base_lr=0.1, per_rank_batch_size=32
    )
    assert adasum["scaled_lr"] == 0.1  # Adasum on CPU: no scaling


def test_prepare_local_store_is_idempotent_and_exports_the_store(local_store, monkeypatch):
    cwd, uri = local_store
    assert uri == f"sqlite:///{cwd / 'mlflow.db'}" and (cwd / "mlflow.db").is_file()
    # what prepare_local_store exported to the launcher's env
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.chdir(cwd.parent)  # a worker started elsewhere still finds the same store
    assert tracking.prepare_local_store() == uri


def test_default_store_run_with_config_artifact_and_staged_checkpoint(store, tmp_path):
    tracker = tracking.start(
        config={"opt": {"lr": 0.1}, "token": "x"}, experiment="local", tags={"team": "a"}
    )
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
    assert json.loads(open(client.download_artifacts(tracker.run_id, "config.json")).read()) == {
        "opt": {"lr": 0.1}
    }
    assert (
        open(client.download_artifacts(tracker.run_id, "checkpoints/step-1.pt")).read() == "weights"
    )


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
    assert [(m.step, m.value) for m in client.get_metric_history(first.run_id, "loss")] == [
        (0, 2.0),
        (1, 1.0),
    ]
    assert client.get_run(first.run_id).info.status == "FINISHED"
    assert client.get_run(child.run_id).data.tags["mlflow.parentRunId"] == first.run_id


def test_a_rejected_record_is_dropped_with_a_warning_and_the_rest_still_sent(store, caplog):
    tracker = tracking.start(experiment="rejected")
    tracker.log_params({"batch": 32})
    tracker.log_params({"bad#name": 64})  # MLflow refuses a param name with '#'
    tracker.log_metrics({"loss": 0.5}, step=3)
    with caplog.at_level(logging.WARNING, logger="hvdtrain.tracking"):
        assert tracker.finish() is None
    client = MlflowClient(store)
    params = client.get_run(tracker.run_id).data.params
    assert params["batch"] == "32" and "bad#name" not in params
    assert [m.step for m in client.get_metric_history(tracker.run_id, "loss")] == [3]
    assert "rejected a params record" in caplog.text


def test_sync_refuses_what_is_not_a_journal_in_one_line(tmp_path, monkeypatch, capsys):
    """Nothing is opened, renamed or advised to run again: there is nothing to send."""
    from hvdtrain.cli import main

    monkeypatch.chdir(tmp_path)
    (tmp_path / "notes.jsonl").write_text('{"kind": "metrics", "metrics": []}\n')
    (tmp_path / "README.md").write_text("# a readme\n")
    (tmp_path / "runs").mkdir()
    before = sorted(tmp_path.iterdir())
    for command, given in [
        ("hvdtrain mlflow-sync README.md (a file that is not a journal)", "README.md"),
        ("hvdtrain mlflow-sync runs (a directory)", "runs"),
        ("hvdtrain mlflow-sync missing.jsonl (no such file)", "missing.jsonl"),
    ]:
        status = main(["mlflow-sync", given])
        err = capsys.readouterr().err
        assert docs_table.row(command).check(err, status) == err.strip()
    status = main(["mlflow-sync", "notes.jsonl"])
    assert (status, capsys.readouterr().err.strip()) == (
        2,
        "hvdtrain: error: mlflow-sync notes.jsonl: not an hvdtrain tracking journal (its first "
        "line describes the job's run)",
    )
    assert sorted(tmp_path.iterdir()) == before


def test_sync_sends_to_the_jobs_store_and_never_makes_an_empty_run(
    store, tmp_path, monkeypatch, capsys
):
    """Issue 25 (B1): the journal records the store its job tracked to; ``mlflow-sync`` sends
    there, whatever the shell's ``MLFLOW_TRACKING_URI``; a journal with nothing left to send is a
    notice, not an empty run in some store; one that does not say where is refused."""
    from hvdtrain.tracking import records
    from hvdtrain.tracking.journal import Journal
    from hvdtrain.tracking.records import RunSpec

    def sync_command(journal) -> tuple[str, int]:
        """``hvdtrain mlflow-sync JOURNAL`` as the command runs it: (its output, exit status)."""
        parser = argparse.ArgumentParser()
        register(parser.add_subparsers())
        args = parser.parse_args(["mlflow-sync", str(journal)])
        try:
            status = args.func(args)
        except UsageError as err:
            print(f"hvdtrain: error: {err}", file=sys.stderr)
            status = 2
        out, err = capsys.readouterr()
        return out + err, status

    def journal_of_an_outage(name, tracking_uri):
        """What rank 0 leaves when its server was down to the end of the job: nothing sent."""
        journal = Journal(tmp_path / name, RunSpec(experiment="outage", tracking_uri=tracking_uri))
        journal.append(records.metrics_record({"loss": 0.5}, 1))
        journal.append(records.end_record("FINISHED"))
        journal.close(delete=False)
        return tmp_path / name

    other = tmp_path / "other.db"  # the shell's store (MLflow's default ./mlflow.db: as wrong)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{other}")
    journal = journal_of_an_outage("run-1.jsonl", store)
    output, status = sync_command(journal)
    client = MlflowClient(store)
    [run] = client.search_runs([client.get_experiment_by_name("outage").experiment_id])
    assert [m.value for m in client.get_metric_history(run.info.run_id, "loss")] == [0.5]
    docs_table.row(
        "hvdtrain mlflow-sync JOURNAL in a shell whose MLFLOW_TRACKING_URI is unset or another "
        "store"
    ).check(output, status, JOURNAL=str(journal), RUN=run.info.run_id, URI=store, N="2")
    assert not other.exists()

    synced = journal.with_name(journal.name + ".synced")
    output, status = sync_command(synced)  # again: nothing left
    docs_table.row(
        "hvdtrain mlflow-sync JOURNAL on a journal whose records were all delivered"
    ).check(output, status, JOURNAL=str(synced), RUN=run.info.run_id, URI=store)
    assert len(client.search_runs([run.info.experiment_id])) == 1 and synced.exists()

    old = journal_of_an_outage("run-0.jsonl", None)  # a journal of hvdtrain before issue 25
    output, status = sync_command(old)
    docs_table.row(
        "hvdtrain mlflow-sync JOURNAL on a journal that does not record its store (written before "
        "hvdtrain recorded it), without --tracking-uri"
    ).check(output, status, JOURNAL=str(old))
    assert old.exists() and not other.exists()


def test_system_metrics_when_asked(store, monkeypatch):
    monkeypatch.setenv("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", "0.2")
    tracker = tracking.start(experiment="system", system_metrics=True)
    time.sleep(1.0)
    tracker.finish()
    metrics = MlflowClient(store).get_run(tracker.run_id).data.metrics
    assert metrics["system/cpu_utilization_percentage"] >= 0
    assert metrics["system/system_memory_usage_megabytes"] > 0


def test_another_hosts_system_metrics_stop_quietly_when_the_server_is_dead(monkeypatch):
    """A host's monitor (not rank 0's: its own process talks to MLflow) against a server that is
    gone: it gives up with a warning of MLflow's, never raises into training, and stops in time."""
    from hvdtrain.tracking import store, system

    for name, value in store.HTTP_DEFAULTS.items():  # what the monitor's process sets, undone after
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", "0.2")
    dead = {"uri": f"http://127.0.0.1:{free_port()}", "continued": False}
    started = time.monotonic()
    monitor = system.start_on_this_host(0, ["rank0s-host", "this-host"], "0" * 32, dead)
    assert monitor is not None and monitor.node_id == socket.gethostname()
    time.sleep(0.5)  # training goes on meanwhile
    system.stop(monitor)
    assert time.monotonic() - started < system.STOP_TIMEOUT_S
    # finished: the sampling thread ended, the last flush failed quietly
    assert monitor._process is None
    # local rank 1: none
    assert system.start_on_this_host(1, ["rank0s-host", "this-host"], "0" * 32, dead) is None
    # rank 0's host: none
    assert system.start_on_this_host(0, [socket.gethostname(), "h2"], "0" * 32, dead) is None


@pytest.mark.slow
def test_ui_command_serves_the_local_store(store, local_store):
    tracker = tracking.start(experiment="shown", run_name="in-the-ui")
    tracker.finish()
    port = free_port()
    # The subcommand through its own parser: the test does not depend on how hvdtrain/cli wires it.
    cli = (
        "import argparse, sys; from hvdtrain.cli.tracking import register; p = "
        "argparse.ArgumentParser(); register(p.add_subparsers()); a = p.parse_args(sys.argv[1:]); "
        "sys.exit(a.func(a))"
    )
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    env = {**env, **QUIET_SERVER, "PYTHONPATH": str(REPO)}
    ui = subprocess.Popen(
        [sys.executable, "-c", cli, "ui", "--port", str(port)],
        text=True,
        stdout=subprocess.PIPE,
        env=env,
        cwd=local_store[0],
        start_new_session=True,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        assert ui.stdout.readline().startswith(f"MLflow UI on {url} (store: {store})")
        wait_healthy(url, ui, timeout=120)
        assert MlflowClient(url).get_run(tracker.run_id).info.run_name == "in-the-ui"
    finally:
        os.killpg(ui.pid, signal.SIGKILL)
        ui.wait()


def test_spilled_artifacts_survive_and_sync_creates_the_run(store, tmp_path, monkeypatch):
    # nothing listens there
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{free_port()}")
    tracker = tracking.start(config={"lr": 0.1}, experiment="spilled", spill_dir=tmp_path / "spill")
    checkpoint = tmp_path / "step-7.pt"
    checkpoint.write_text("weights")
    tracker.log_artifact(checkpoint, "checkpoints")
    tracker.log_metrics({"loss": 0.25}, step=7)
    spill = tracker.finish()
    checkpoint.unlink()
    assert tracker.run_id is None and spill.parent == tmp_path / "spill"
    run_id, sent, _ = sync(spill, tracking_uri=store)
    client = MlflowClient(store)
    run = client.get_run(run_id)
    assert (
        client.get_experiment(run.info.experiment_id).name == "spilled"
        and run.data.params["lr"] == "0.1"
    )
    assert [(m.step, m.value) for m in client.get_metric_history(run_id, "loss")] == [(7, 0.25)]
    assert open(client.download_artifacts(run_id, "checkpoints/step-7.pt")).read() == "weights"
    # params, config.json, checkpoint, metrics, end
    assert run.info.status == "FINISHED" and sent == 5
    # A synced file is set aside, so syncing again cannot duplicate the run.
    assert not spill.exists() and spill.with_name(spill.name + ".synced").exists()


def test_a_broken_artifact_or_store_is_a_warning_not_a_crash(store, tmp_path, monkeypatch, caplog):
    # MLflow cannot even build a client
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "unknownscheme://nowhere")
    tracker = tracking.start(config={"lr": 0.1})
    tracker.log_artifact(tmp_path / "missing.pt")
    tracker.log_metrics({"loss": 1.0}, step=0)
    assert tracker.run_id is None and tracker.finish() is None
    messages = "\n".join(record.getMessage() for record in caplog.records)
    docs_table.row("MLFLOW_TRACKING_URI with an unknown scheme").check(messages, 0)


def test_an_unwritable_local_store_is_one_line_at_once(store, tmp_path, monkeypatch, caplog):
    """Issue 25 (B3, B4): a local store the job cannot write (a read-only working directory, a
    sqlite file under one) turns tracking off in one line at start, not after MLflow's 100 s of
    retries; the launcher, which prepares the default store in the working directory, leaves it
    to the job (a script run with ``--no-tracking`` must still run)."""
    from hvdtrain.launch.environment import _prepared_local_store

    not_a_dir = tmp_path / "notes.txt"  # root writes anywhere: a file where a directory should be
    not_a_dir.write_text("my notes")
    uri = f"sqlite:///{not_a_dir}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    started = time.monotonic()
    tracker = tracking.start(config={"lr": 0.1})
    tracker.log_metrics({"loss": 1.0}, step=0)
    assert tracker.run_id is None and tracker.finish() is None
    assert time.monotonic() - started < 5
    messages = "\n".join(record.getMessage() for record in caplog.records)
    docs_table.row(
        "MLFLOW_TRACKING_URI=sqlite:///DIR/mlflow.db in a directory the job cannot write "
        "(read-only, or not a directory)"
    ).check(messages, 0, DIR=str(not_a_dir))
    assert _prepared_local_store() == ""  # the launcher: no store to export, no error
    assert not_a_dir.read_text() == "my notes"


def test_a_deleted_experiment_is_named_not_taken_for_an_outage(store, tmp_path, caplog):
    """Issue 25: ``--experiment`` naming an experiment in MLflow's trash read "unreachable"."""
    client = MlflowClient(store)
    client.delete_experiment(client.create_experiment("binned"))
    tracker = tracking.start(experiment="binned", spill_dir=tmp_path / "spill", start_timeout=5)
    tracker.log_metrics({"loss": 1.0}, step=1)
    journal = tracker.finish()
    messages = "\n".join(record.getMessage() for record in caplog.records)
    docs_table.row("--experiment naming a deleted experiment").check(
        messages, 0, URI=store, ID=client.get_experiment_by_name("binned").experiment_id
    )
    assert "unreachable" not in messages
    assert journal is not None and journal.exists()  # kept for mlflow-sync once it is restored


def test_a_web_server_that_is_not_mlflow_is_one_line(store, tmp_path, monkeypatch, caplog):
    """Issue 25: a tracking URI naming a plain web server put MLflow's quote of its HTML error
    page (ten lines of markup) into the warning."""
    import functools
    import http.server
    import threading

    page_server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0),
        functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path)),
    )
    threading.Thread(target=page_server.serve_forever, daemon=True).start()
    uri = f"http://127.0.0.1:{page_server.server_address[1]}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    try:
        tracker = tracking.start(experiment="web", spill_dir=tmp_path / "spill", start_timeout=5)
        tracker.log_metrics({"loss": 1.0}, step=1)
        journal = tracker.finish()
    finally:
        page_server.shutdown()
    messages = "\n".join(record.getMessage() for record in caplog.records)
    docs_table.row("MLFLOW_TRACKING_URI naming a web server that is not MLflow").check(
        messages, 0, URI=uri
    )
    assert "<" not in messages and journal is not None


def committed_checkpoint(directory, step):
    """A checkpoint as the adapters commit it
    (payload, then sidecar): what a resume continues from."""
    meta = CheckpointMeta(step=step, epoch=1, world_size=2, framework="torch", payload="")
    CheckpointDir(directory, ".pt").save(meta, lambda tmp: open(tmp, "w").write("weights"))


def test_the_run_is_recorded_in_the_run_file_and_the_checkpoint_dir(store, tmp_path, monkeypatch):
    monkeypatch.setenv("HVDTRAIN_RUN_FILE", str(tmp_path / "launcher" / "run.json"))
    tracker = tracking.start(experiment="recorded", checkpoint_dir=tmp_path / "ckpt")
    tracker.finish()
    expected = {
        "run_id": tracker.run_id,
        "tracking_uri": store,
        "experiment_id": MlflowClient(store).get_run(tracker.run_id).info.experiment_id,
    }
    for path in (tmp_path / "launcher" / "run.json", tmp_path / "ckpt" / "mlflow-run.json"):
        assert json.loads(path.read_text()) == expected


def test_a_job_not_resuming_opens_no_run_on_an_earlier_jobs_checkpoints(store, tmp_path):
    """Issue 25 (B2): the directory's run file stays the earlier job's, so a later ``--resume``
    logs to the run of the weights it loads; no run is created for a job that cannot train."""
    ckpt = tmp_path / "ckpt"
    first = tracking.start(experiment="owned", checkpoint_dir=ckpt)
    committed_checkpoint(ckpt, step=1)
    first.finish()
    recorded = (ckpt / "mlflow-run.json").read_text()
    with pytest.raises(CheckpointError, match="holds checkpoints of an earlier job"):
        # another job: this process's claim forgotten
        with_claims_forgotten(
            lambda: tracking.start(experiment="owned", checkpoint_dir=ckpt, resume=False)
        )
    assert (ckpt / "mlflow-run.json").read_text() == recorded
    client = MlflowClient(store)
    assert len(client.search_runs([client.get_experiment_by_name("owned").experiment_id])) == 1


def with_claims_forgotten(start):
    """Run ``start`` as a new job would: without this process's claims on checkpoint
    directories (a process keeps what it claimed until it exits)."""
    from hvdtrain.core import checkpoint

    held = dict(checkpoint._claimed)
    checkpoint._claimed.clear()
    for handle in held.values():
        os.close(handle)
    return start()


def test_a_resumed_job_continues_the_run_of_its_checkpoints_in_legs(store, tmp_path):
    ckpt = tmp_path / "ckpt"
    first = tracking.start(
        config={"epochs": 1, "lr": 0.1}, experiment="legs", checkpoint_dir=ckpt, resume=True
    )
    first.log_params({"world_size": 2})
    first.log_membership(0, 2)
    first.log_metrics({"loss": 2.0}, step=1)
    committed_checkpoint(ckpt, step=1)
    first.finish(status="FAILED")
    second = tracking.start(
        config={"epochs": 2, "lr": 0.1}, experiment="legs", checkpoint_dir=ckpt, resume=True
    )
    # MLflow would refuse this change: logged as leg2.world_size
    second.log_params({"world_size": 1})
    second.log_membership(1, 1)
    second.log_metrics({"loss": 1.0}, step=2)
    assert second.finish() is None
    client = MlflowClient(store)
    run = client.get_run(first.run_id)
    assert second.run_id == first.run_id and run.info.status == "FINISHED"
    assert [r.info.run_id for r in client.search_runs([run.info.experiment_id])] == [first.run_id]
    params = run.data.params
    assert {
        k: params[k] for k in ("epochs", "lr", "world_size", "leg2.epochs", "leg2.world_size")
    } == {"epochs": "1", "lr": "0.1", "world_size": "2", "leg2.epochs": "2", "leg2.world_size": "1"}
    assert "leg2.lr" not in params  # unchanged values are not repeated
    assert run.data.tags["hvdtrain.leg"] == "2"
    assert (
        run.data.tags["hvdtrain.world_size.step-00000000"],
        run.data.tags["hvdtrain.world_size.step-00000001"],
    ) == ("2", "1")
    assert [(m.step, m.value) for m in client.get_metric_history(first.run_id, "loss")] == [
        (1, 2.0),
        (2, 1.0),
    ]
    assert [(m.step, m.value) for m in client.get_metric_history(first.run_id, "world_size")] == [
        (0, 2),
        (1, 1),
    ]
    configs = {
        a: json.loads(open(client.download_artifacts(first.run_id, a)).read())["epochs"]
        for a in ("config.json", "leg2/config.json")
    }
    assert configs == {"config.json": 1, "leg2/config.json": 2}  # each leg's config kept


def test_a_new_run_when_there_is_no_checkpoint_to_resume_or_the_run_is_elsewhere(
    store, tmp_path, caplog
):
    ckpt = tmp_path / "ckpt"
    crashed = tracking.start(experiment="fresh", checkpoint_dir=ckpt)
    crashed.finish(status="FAILED")  # before its first checkpoint: a resume starts from scratch
    fresh = tracking.start(experiment="fresh", checkpoint_dir=ckpt, resume=True)
    fresh.finish()
    assert fresh.run_id != crashed.run_id
    assert json.loads((ckpt / "mlflow-run.json").read_text())["run_id"] == fresh.run_id
    committed_checkpoint(ckpt, step=5)
    recorded = json.loads((ckpt / "mlflow-run.json").read_text())
    (ckpt / "mlflow-run.json").write_text(
        json.dumps({**recorded, "tracking_uri": "http://elsewhere:5000"})
    )
    with caplog.at_level(logging.WARNING, logger="hvdtrain.tracking"):
        other = tracking.start(experiment="fresh", checkpoint_dir=ckpt, resume=True)
    other.finish()
    assert other.run_id not in (fresh.run_id, crashed.run_id)
    assert "is in another tracking store (http://elsewhere:5000)" in caplog.text
    MlflowClient(store).delete_run(other.run_id)  # continuing a deleted run would fail every retry
    with caplog.at_level(logging.WARNING, logger="hvdtrain.tracking"):
        after_delete = tracking.start(experiment="fresh", checkpoint_dir=ckpt, resume=True)
    after_delete.finish()
    assert after_delete.run_id != other.run_id
    assert MlflowClient(store).get_run(after_delete.run_id).info.status == "FINISHED"
    assert f"MLflow run {other.run_id} to continue is not in {store} (or deleted)" in caplog.text


@pytest.mark.slow
def test_the_run_file_is_written_when_the_run_is_created_after_an_outage(
    store, tmp_path, monkeypatch, mlflow_server
):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server.uri)
    monkeypatch.setenv("HVDTRAIN_RUN_FILE", str(tmp_path / "run.json"))
    mlflow_server.stop()
    try:
        tracker = tracking.start(experiment="late", start_timeout=1, spill_dir=tmp_path / "spill")
        tracker.log_metrics({"loss": 1.0}, step=0)
        assert tracker.run_id is None and not (tmp_path / "run.json").exists()
    finally:
        mlflow_server.start()
    assert tracker.finish(timeout=60) is None  # the sender created the run once the server was back
    run_id = tracker.sending_run_id
    experiment_id = mlflow_server.client().get_run(run_id).info.experiment_id
    assert json.loads((tmp_path / "run.json").read_text()) == {
        "run_id": run_id,
        "tracking_uri": mlflow_server.uri,
        "experiment_id": experiment_id,
    }
