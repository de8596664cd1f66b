"""Issue 6: ``hvdtrain run`` launches, passes MLflow settings, returns the job's status, refuses bad input."""
import json
import os
import subprocess
import sys
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
    assert proc.stderr.strip().splitlines()[-1] == "hvdtrain: worker 1 exited with status 3; the job was stopped"
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
])
def test_bad_input_is_one_line_and_exit_2(tmp_path, worker, args, message):
    proc = _run(*[a.format(worker=worker) for a in args], cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.strip() == f"hvdtrain: error: {message}"
    assert not (tmp_path / "rank0.json").exists()  # nothing was launched
