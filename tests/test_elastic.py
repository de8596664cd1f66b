"""Issue 8: elastic training on localhost, both frameworks: a worker is killed, training goes on
with the survivor, a host added back by the discovery script is used again, one MLflow run
records the membership (2, 1, 2) and the LR re-scaled for each size. Issue 13, item 6: after each
rollback and each membership change the model and optimizer state is proven right by digests of
its bytes: the committed state after a rollback, rank 0's on every rank after a change (with rank
0's weights those it had before the change; its LR is re-scaled for the new size)."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import pytest

from tests.launch import REPO, WORKERS

EPOCHS, TRAIN_SAMPLES, BASE_LR = 8, 600, 1e-3
# Three names for this machine, each a "host" with one slot; the third joins after the kill.
FIRST_HOSTS, ADDED_HOST = ("localhost", "127.0.0.1"), os.uname().nodename


def progress(out: Path) -> list[dict]:
    path = out / "progress.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def wait_until(condition, proc, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = condition()
        if found:
            return found
        if proc.poll() is not None:
            raise AssertionError(
                f"job ended ({proc.returncode}) before {what}:\n{proc.stdout.read()[-3000:]}"
            )
        time.sleep(0.2)
    proc.kill()
    raise AssertionError(f"timed out waiting for {what}")


@pytest.mark.slow
@pytest.mark.parametrize("framework", ["torch", "keras"])
def test_worker_dies_survivor_continues_and_added_host_rejoins(framework, tmp_path):
    hosts = tmp_path / "hosts"
    hosts.write_text("".join(f"{h}:1\n" for h in FIRST_HOSTS))
    discover = tmp_path / "discover.sh"
    discover.write_text(f"#!/bin/sh\ncat {hosts}\n")
    discover.chmod(0o755)
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "OMP_NUM_THREADS": "1",
        "TF_CPP_MIN_LOG_LEVEL": "3",
        "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path}/mlflow.db",
    }
    command = [
        str(Path(sys.executable).parent / "hvdtrain"),
        "run",
        "--elastic",
        "-np",
        "2",
        "--min-np",
        "1",
        "--max-np",
        "2",
        "--host-discovery-script",
        str(discover),
        str(WORKERS / "elastic_train.py"),
        "--out",
        str(tmp_path),
        "--framework",
        framework,
        "--epochs",
        str(EPOCHS),
        "--train-samples",
        str(TRAIN_SAMPLES),
        "--batch-sleep",
        "0.05",
        "--commit-every",
        "5",
        "--tracking",
        "1",
    ]
    proc = subprocess.Popen(
        command, env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        wait_until(
            lambda: len([p for p in progress(tmp_path) if p["size"] == 2]) >= 40,
            proc,
            240,
            "20 steps on 2 workers",
        )
        victim = next(p for p in reversed(progress(tmp_path)) if p["rank"] == 1)
        os.kill(victim["pid"], signal.SIGKILL)
        killed_at = time.time()
        resumed = wait_until(
            lambda: [p for p in progress(tmp_path) if p["size"] == 1],
            proc,
            120,
            "training on the survivor",
        )
        assert all(p["pid"] != victim["pid"] for p in progress(tmp_path) if p["time"] > killed_at)
        hosts.write_text("".join(f"{h}:1\n" for h in (*FIRST_HOSTS, ADDED_HOST)))
        added_at = time.time()
        joined = wait_until(
            lambda: [p for p in progress(tmp_path) if p["host"] == ADDED_HOST],
            proc,
            180,
            "a worker on the added host",
        )
        output, _ = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, output[-3000:]
    print(
        f"{framework}: survivor trained on alone {resumed[0]['time'] - killed_at:.1f} s after the "
        f"kill; the added host trained {joined[0]['time'] - added_at:.1f} s after it was listed"
    )
    sizes = [p["size"] for p in progress(tmp_path)]
    assert [s for i, s in enumerate(sizes) if i == 0 or s != sizes[i - 1]] == [2, 1, 2]
    assert "workers changed 2 -> 1" in output and "workers changed 1 -> 2" in output

    result = json.loads((tmp_path / "result.json").read_text())
    assert result["size"] == 2
    assert [e["epoch"] for e in result["epochs"]] == list(range(1, EPOCHS + 1))
    assert result["test_accuracy"] > 0.85

    assert_state_checked(tmp_path)

    client = mlflow.MlflowClient(env["MLFLOW_TRACKING_URI"])
    runs = client.search_runs([client.get_experiment_by_name("elastic").experiment_id])
    assert [r.info.run_id for r in runs] == [result["run_id"]] and runs[0].info.status == "FINISHED"
    sizes_logged = [
        m.value
        for m in sorted(
            client.get_metric_history(result["run_id"], "world_size"),
            key=lambda m: (m.step, m.timestamp),
        )
    ]
    assert sizes_logged == [2, 1, 2]
    lrs = {round(m.value, 9) for m in client.get_metric_history(result["run_id"], "lr")}
    assert lrs == {BASE_LR, 2 * BASE_LR}  # linear scaling: 1 worker, 2 workers


def assert_state_checked(out: Path) -> None:
    events = [json.loads(line) for line in (out / "state.jsonl").read_text().splitlines()]
    by_process: dict[int, list[dict]] = {}
    for event in sorted(events, key=lambda e: e["time"]):
        by_process.setdefault(event["pid"], []).append(event)
    restores = syncs = 0
    for mine in by_process.values():
        for i, event in enumerate(mine):
            # the rollback put back the last commit (or sync) of this process
            if event["event"] == "restore":
                restores += 1
                committed = next(e for e in reversed(mine[:i]) if e["event"] == "save")
                assert (event["step"], event["digest"]) == (committed["step"], committed["digest"])
            # rank 0's weights are those it had before the change
            if event["event"] == "sync" and event["rank"] == 0:
                syncs += 1
                # mine[i - 1] is the sync's own save; the LR was re-scaled in between
                before = mine[i - 2]
                assert (event["step"], event["weights"]) == (before["step"], before["weights"]), (
                    before,
                    event,
                )
    assert restores >= 1 and syncs >= 3  # the start, the worker killed, the worker added
    groups: dict[tuple[int, int], list[dict]] = {}
    for event in events:
        if event["event"] == "sync":
            groups.setdefault((event["size"], event["step"]), []).append(event)
    sizes = [size for size, _ in sorted(groups, key=lambda k: k[1])]
    assert [s for i, s in enumerate(sizes) if i == 0 or s != sizes[i - 1]] == [2, 1, 2]
    for (size, _step), group in groups.items():  # after each change every rank holds rank 0's state
        assert sorted(e["rank"] for e in group) == list(range(size)), group
        assert len({e["digest"] for e in group}) == 1, group
