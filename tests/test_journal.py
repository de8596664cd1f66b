"""Issue 13, item 3: tracking never loses a point. Every record is in the journal before it is
queued; a worker SIGKILLed during a tracking outage loses nothing, and ``hvdtrain mlflow-sync``
restores every logged point exactly once. Real MLflow server, real 2-worker job under
``hvdtrain run``. The journal's cost on step time is measured in ``hvdtrain bench --parts
overhead`` (BENCHMARKS.md), not here."""

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hvdtrain.core import context
from hvdtrain.tracking import records
from hvdtrain.tracking.journal import replay
from hvdtrain.tracking.records import RunSpec
from hvdtrain.tracking.sender import Sender
from tests.launch import REPO, WORKERS, worker_process
from tests.mlflow_server import mlflow_server, mlflow_server_session  # noqa: F401 - fixtures

HVDTRAIN = str(Path(sys.executable).parent / "hvdtrain")


def logged(out: Path, rank: int = 0) -> list[int]:
    path = out / f"logged{rank}"
    return [int(line) for line in path.read_text().split()] if path.exists() else []


def wait_for(condition, proc: subprocess.Popen, what: str, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert proc.poll() is None, f"the job ended before {what}: {proc.communicate()}"
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


@pytest.mark.slow
def test_sigkill_during_an_outage_loses_nothing_and_sync_restores_each_point_once(
    tmp_path, mlflow_server
):
    env = {
        **{
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("MLFLOW_", "HVDTRAIN_", "HOROVOD_"))
        },
        "MLFLOW_TRACKING_URI": mlflow_server.uri,
        "PYTHONPATH": str(REPO),
        "OMP_NUM_THREADS": "1",
    }
    proc = subprocess.Popen(
        [
            HVDTRAIN,
            "run",
            "-np",
            "2",
            str(WORKERS / "journal_train.py"),
            "--out",
            str(tmp_path),
            "--experiment",
            "journal",
            "--steps",
            "100000",
        ],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_for(lambda: len(logged(tmp_path)) >= 10, proc, "10 steps tracked")
        mlflow_server.stop()  # an outage: what follows waits in the journal
        before_kill = len(logged(tmp_path)) + 20
        wait_for(lambda: len(logged(tmp_path)) >= before_kill, proc, "20 steps during the outage")
        worker_process(proc, 0).send_signal(signal.SIGKILL)  # rank 0 holds the tracking data
        proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 137
    steps = logged(tmp_path)
    [journal] = (tmp_path / "journal").glob("*.jsonl")
    assert replay(journal).unsent and not replay(journal).has_end

    mlflow_server.start()
    sync = subprocess.run(
        [HVDTRAIN, "mlflow-sync", str(journal), "--tracking-uri", mlflow_server.uri],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert sync.returncode == 0, sync.stderr
    client = mlflow_server.client()
    [run] = client.search_runs([client.get_experiment_by_name("journal").experiment_id])
    got = [m.step for m in client.get_metric_history(run.info.run_id, "loss")]
    assert len(got) == len(set(got)), "a point was sent twice"
    # Every step whose log_step returned is there; at most the one being logged at the kill more.
    assert set(steps) <= set(got) <= set(steps) | {max(steps) + 1}
    assert sorted(got)[: len(steps)] == list(range(len(steps)))
    assert run.info.status == "FAILED"  # the job never ended its run
    assert re.fullmatch(
        rf"uploaded \d+ records from {journal} to run {run.info.run_id} at "
        + re.escape(mlflow_server.uri),
        sync.stdout.strip().splitlines()[-1],
    )
    assert not journal.exists() and journal.with_name(journal.name + ".synced").exists()


def one_worker() -> context.Context:
    return context.Context(
        "torch", 0, 1, 0, 1, "cpu", broadcast_object=lambda obj, root: obj, average=dict
    )


@pytest.mark.slow
def test_a_long_outage_keeps_a_bounded_queue_and_sends_everything_in_order(tmp_path, mlflow_server):
    mlflow_server.stop()
    context.set_current(one_worker())
    try:
        sender = Sender(
            mlflow_server.client(),
            RunSpec(experiment="bounded"),
            tmp_path / "run.jsonl",
            retry_interval=0.2,
            max_retry_interval=0.5,
            max_queued=5,
        )
        for step in range(50):
            sender.put(records.metrics_record({"loss": 1.0 / (step + 1)}, step))
            assert len(sender._queue) <= 5  # the rest waits in the journal only
        assert len(replay(tmp_path / "run.jsonl").unsent) == 50
        mlflow_server.start()
        sender.put(records.end_record("FINISHED"))
        assert sender.close(timeout=120) is None
    finally:
        context.set_current(None)
    client = mlflow_server.client()
    history = client.get_metric_history(sender.spec.run_id, "loss")
    assert [(m.step, m.value) for m in history] == [(step, 1.0 / (step + 1)) for step in range(50)]
    assert not (tmp_path / "run.jsonl").exists()  # all sent: the journal is gone


def test_a_journal_cut_short_mid_line_replays_its_complete_records(tmp_path):
    path = tmp_path / "cut.jsonl"
    lines = [
        RunSpec(experiment="e").as_record(),
        {**records.metrics_record({"loss": 1.0}, 0), "seq": 1},
        {"kind": "sent", "upto": 1},
        {**records.metrics_record({"loss": 0.5}, 1), "seq": 2},
    ]
    path.write_text("".join(json.dumps(line) + "\n" for line in lines) + '{"kind": "metr')
    found = replay(path)
    assert [seq for seq, _ in found.unsent] == [2] and not found.has_end
