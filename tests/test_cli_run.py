"""Issue 6: ``hvdtrain run`` launches, passes MLflow settings, returns the job's status, refuses bad input."""
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

HVDTRAIN = str(Path(sys.executable).parent / "hvdtrain")

WORKER = """
import json, os, sys
rank = int(os.environ["HOROVOD_RANK"])
out = sys.argv[1]
json.dump({"rank": rank, "size": int(os.environ["HOROVOD_SIZE"]), "argv": sys.argv[2:],
           "uri": os.environ.get("MLFLOW_TRACKING_URI")}, open(f"{out}/rank{rank}.json", "w"))
if rank == int(sys.argv[2]):
    sys.exit(int(sys.argv[3]))
"""


def _run(*args, cwd, env=None):
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    return subprocess.run([HVDTRAIN, "run", *args], capture_output=True, text=True, cwd=cwd, timeout=300,
                          env={**full_env, **(env or {})})


@pytest.fixture
def worker(tmp_path):
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    return script


@pytest.mark.slow
def test_success_runs_every_worker_with_one_tracking_store(tmp_path, worker):
    proc = _run("-np", "2", str(worker), str(tmp_path), "-1", "0", "--flag", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert [r["size"] for r in ranks] == [2, 2]
    assert ranks[0]["argv"] == ["-1", "0", "--flag"]  # script arguments pass through untouched
    # The embedded store was created once before the workers started, and both were told about it.
    assert ranks[0]["uri"] == ranks[1]["uri"] == f"sqlite:///{tmp_path}/mlflow.db"
    assert (tmp_path / "mlflow.db").stat().st_size > 0


@pytest.mark.slow
def test_a_failing_worker_sets_the_exit_status_and_is_named(tmp_path, worker):
    proc = _run("-np", "2", str(worker), str(tmp_path), "1", "3", cwd=tmp_path)
    assert proc.returncode == 3
    assert proc.stderr.strip().splitlines()[-1].startswith(
        "hvdtrain: worker 1 on localhost exited with status 3; job stopped after ")
    assert "Traceback" not in proc.stderr  # horovodrun's own traceback is replaced by that line


@pytest.mark.parametrize("args,message", [
    (["-np", "0", "{worker}"], "-np must be >= 1, got 0"),
    (["-np", "2", "missing.py"], "script not found: missing.py"),
    (["-np", "3", "-H", "localhost:2", "{worker}"], "-np 3 needs 3 slots but the hosts offer 2 (localhost:2)"),
    (["-np", "1", "-H", "127.0.0.2:1", "--ssh-port", "1", "{worker}"],
     "host 127.0.0.2 is unreachable on SSH port 1 (Connection refused)"),
    (["-np", "2", "--framework", "jax", "{worker}"], "unknown framework 'jax'; allowed: auto, torch, keras"),
    (["-np", "2", "-H", "node1:two", "{worker}"], "bad host 'node1:two': use host:slots, e.g. node1:4"),
    (["-np", "2", "--hostfile", "nofile", "{worker}"], "hostfile not found: nofile"),
    (["-np", "2", "--hostfile", "{empty}", "{worker}"], "hostfile {empty} lists no hosts ('host slots=N' lines)"),
    (["-np", "2", "--hostfile", "{comment}", "{worker}"], "hostfile {comment} line 2: 'node1 slots' is not "
                                                            "'host slots=N'"),
])
def test_bad_input_is_one_line_and_exit_2(tmp_path, worker, args, message):
    """Checked before any worker starts: the message is the whole of stderr (the bad-input table)."""
    files = {"worker": worker, "empty": tmp_path / "empty", "comment": tmp_path / "comment"}
    files["empty"].write_text("")
    files["comment"].write_text("# my nodes\nnode1 slots\n")
    proc = _run(*[a.format(**files) for a in args], cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith(f"hvdtrain: error: {message.format(**files)}")
    assert len(proc.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "rank0.json").exists()  # nothing was launched


def test_unroutable_host_is_refused_within_seconds(tmp_path, worker):
    """192.0.2.1 is TEST-NET-1: never routed, so the SSH probe fails (refused or timed out)."""
    started = time.monotonic()
    proc = _run("-np", "2", "-H", "192.0.2.1:2", str(worker), cwd=tmp_path)
    assert time.monotonic() - started < 30  # the probe's own bound is a few seconds; startup is the rest
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith("hvdtrain: error: host 192.0.2.1 is unreachable on SSH port 22 (")


def test_hostfile_comments_and_default_slots(tmp_path):
    from hvdtrain.cli.run import _read_hostfile

    hostfile = tmp_path / "hosts"
    hostfile.write_text("# the cluster\nnode1 slots=4  # big one\n\nnode2\nnode3 slots = 2\n")
    assert _read_hostfile(hostfile) == [("node1", 4), ("node2", 1), ("node3", 2)]
