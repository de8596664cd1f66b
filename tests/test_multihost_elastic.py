"""Issue 12: elastic training across hosts. A whole host is lost (its workers and sshd killed) and
training goes on; it comes back and rejoins; then rank 0's host is lost, training goes on and the
job's one MLflow run keeps receiving metrics, from the new rank 0, until it is finished. After
every membership change every rank holds the same model and optimizer state, and every rollback
restores exactly the last committed state (checksums of the state's bytes).

Hosts 1-3 train as the discovery script lists them (a file the test edits, as a cluster manager
would); host 4 runs the launcher and the MLflow server.
"""

import json
import time

import pytest
from mlflow.tracking import MlflowClient

from tests.launch import WORKERS
from tests.multihost import HostMlflowServer, finish, job_env, launch, wait_clean

pytestmark = [pytest.mark.multihost, pytest.mark.slow]


def records(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def wait_for(condition, proc, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if found := condition():
            return found
        assert proc.poll() is None, f"the job ended before {what}: {proc.communicate()[1][-3000:]}"
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def test_hosts_lost_and_back_and_rank0s_host_lost(test_hosts, tmp_path):
    hosts = test_hosts(4)
    h1, h2, h3, h4 = hosts.names
    server = HostMlflowServer(hosts, h4, tmp_path)
    available = tmp_path / "hosts"
    available.write_text(f"{h1}:1\n{h2}:1\n")
    discover = tmp_path / "discover.sh"
    discover.write_text(f"#!/bin/sh\ncat {available}\n")
    discover.chmod(0o755)
    out = tmp_path / "out"
    out.mkdir()
    proc = launch(
        hosts,
        h4,
        "--elastic",
        "-np",
        "2",
        "--min-np",
        "1",
        "--max-np",
        "2",
        "--host-discovery-script",
        str(discover),
        "--blacklist-cooldown-range",
        "1",
        "2",
        str(WORKERS / "elastic_hosts.py"),
        "--out",
        str(out),
        "--framework",
        "torch",
        "--epochs",
        "6",
        "--train-samples",
        "400",
        "--batch-sleep",
        "0.1",
        "--commit-every",
        "5",
        "--tracking",
        "1",
        cwd=tmp_path,
        env=job_env(MLFLOW_TRACKING_URI=server.uri),
    )
    progress = lambda: records(out / "progress.jsonl")  # noqa: E731
    try:
        wait_for(
            lambda: len([p for p in progress() if p["size"] == 2]) >= 20,
            proc,
            240,
            "10 steps on 2 hosts",
        )
        # A whole host is lost: its processes (sshd too) die, and the cluster no longer lists it.
        available.write_text(f"{h1}:1\n")
        hosts.stop(h2)
        lost = time.time()
        alone = wait_for(
            lambda: [p for p in progress() if p["time"] > lost and p["size"] == 1],
            proc,
            120,
            f"training on {h1} alone",
        )
        # It comes back.
        hosts.start(h2)
        available.write_text(f"{h1}:1\n{h2}:1\n")
        back = time.time()
        rejoined = wait_for(
            lambda: [p for p in progress() if p["time"] > back and p["host"] == h2],
            proc,
            180,
            f"{h2} training again",
        )
        wait_for(
            lambda: len([p for p in progress() if p["time"] > back and p["size"] == 2]) >= 10,
            proc,
            60,
            "5 steps on 2 hosts again",
        )
        # Rank 0's host is lost.
        available.write_text(f"{h2}:1\n")
        hosts.stop(h1)
        rank0_lost = time.time()
        taken_over = wait_for(
            lambda: [p for p in progress() if p["time"] > rank0_lost and p["rank"] == 0],
            proc,
            120,
            f"rank 0 on {h2}",
        )
        (out / "finish").touch()
        output, err, _ = finish(proc, time.monotonic(), timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    print(
        f"\nhost lost -> training alone {alone[0]['time'] - lost:.1f} s later; back -> rejoined "
        f"{rejoined[0]['time'] - back:.1f} s later; rank 0's host lost -> new rank 0 trained "
        f"{taken_over[0]['time'] - rank0_lost:.1f} s later"
    )
    assert proc.returncode == 0, err[-3000:]
    assert taken_over[0]["host"] == h2

    sizes = [p["size"] for p in progress()]
    assert [s for i, s in enumerate(sizes) if i == 0 or s != sizes[i - 1]] == [2, 1, 2, 1]
    assert_state_checked(out)

    result = json.loads((out / "result.json").read_text())
    assert result["size"] == 1 and progress()[-1]["host"] == h2
    assert [e["epoch"] for e in result["epochs"]] == list(range(1, 7))
    assert result["test_accuracy"] > 0.8  # chance: 0.1

    client = MlflowClient(server.uri)
    [run] = client.search_runs([client.get_experiment_by_name("elastic").experiment_id])
    assert run.info.status == "FINISHED" and run.data.params["framework"] == "torch"
    sizes_logged = [
        m.value
        for m in sorted(
            client.get_metric_history(run.info.run_id, "world_size"),
            key=lambda m: (m.timestamp, m.step),
        )
    ]
    assert sizes_logged == [2, 1, 2, 1]
    last_change = max(m.step for m in client.get_metric_history(run.info.run_id, "world_size"))
    losses = {m.step for m in client.get_metric_history(run.info.run_id, "loss")}
    assert set(range(last_change + 1, result["steps"] + 1)) <= losses  # all sent by the new rank 0
    assert len(client.get_metric_history(run.info.run_id, "epoch_loss")) == 6
    wait_clean(hosts, [h2], timeout=15)


def assert_state_checked(out) -> None:
    """Every rollback restores its process's last commit; after every change all ranks agree."""
    events = sorted(records(out / "state.jsonl"), key=lambda e: e["time"])
    restores = 0
    for pid in {e["pid"] for e in events}:
        mine = [e for e in events if e["pid"] == pid]
        for i, event in enumerate(mine):
            if event["event"] == "restore":
                restores += 1
                committed = next(e for e in reversed(mine[:i]) if e["event"] in ("save", "sync"))
                assert (event["step"], event["digest"]) == (
                    committed["step"],
                    committed["digest"],
                ), event
    groups: dict[tuple[int, int], list[dict]] = {}
    for event in events:
        if event["event"] == "sync":
            groups.setdefault((event["size"], event["step"]), []).append(event)
    # rollbacks: lost, rank 0's host lost; syncs: the start and each change
    assert restores >= 2 and len(groups) >= 4
    for (size, _step), group in groups.items():
        # a rank may sync twice at one step (a retried change)
        latest = {e["rank"]: e for e in group}
        assert sorted(latest) == list(range(size)), group
        assert len({e["digest"] for e in latest.values()}) == 1, group
