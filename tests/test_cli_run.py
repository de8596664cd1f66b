"""Issue 6: ``hvdtrain run`` launches, passes MLflow settings,
returns the job's status, refuses bad input."""

import json
import os
import shlex
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests import docs_table

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
    full_env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "HVDTRAIN_"))}
    return subprocess.run(
        [HVDTRAIN, "run", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=300,
        env={**full_env, **(env or {})},
    )


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
    row = docs_table.row("a script that fails on one rank (sys.exit(3))")
    assert row.check(proc.stderr, proc.returncode) == proc.stderr.strip().splitlines()[-1]
    assert "Traceback" not in proc.stderr  # horovodrun's own traceback is replaced by that line


LAUNCH_ROWS = docs_table.rows_for("test_cli_run.py::test_bad_launch_command_is_one_line_and_exit_2")


@pytest.mark.parametrize("row", LAUNCH_ROWS, ids=[r.command for r in LAUNCH_ROWS])
def test_bad_launch_command_is_one_line_and_exit_2(tmp_path, row):
    """The README's command, run as it reads: refused before any worker starts, the answer the
    whole of stderr."""
    (tmp_path / "train.py").write_text(f"open({str(tmp_path / 'started')!r}, 'w')\n")
    (tmp_path / "hosts.txt").write_text("# my nodes\nnode1 slots\n")
    (tmp_path / "empty.txt").write_text("")
    (tmp_path / "colon.txt").write_text("localhost:2\n")
    (tmp_path / "somedir").mkdir()
    (tmp_path / "notes.txt").write_text("my notes on the runs\n")
    (tmp_path / "broken.py").write_text("print('hi'\n")
    (tmp_path / "torchy.py").write_text("import torch\nimport hvdtrain.torch as ht\n")
    (tmp_path / "discover.sh").write_text("#!/bin/sh\necho localhost:2\n")
    (tmp_path / "discover.sh").chmod(0o755)
    words = shlex.split(row.command)
    at = words.index("hvdtrain")  # VAR=value words before it are the environment
    proc = _run(*words[at + 2 :], cwd=tmp_path, env=dict(word.split("=", 1) for word in words[:at]))
    assert row.check(proc.stderr, proc.returncode) == proc.stderr.strip()
    assert not (tmp_path / "started").exists()  # nothing was launched


def test_unroutable_host_is_refused_within_seconds(tmp_path, worker):
    """192.0.2.1 is TEST-NET-1: never routed, so the SSH probe fails (refused or timed out)."""
    row = docs_table.row("hvdtrain run -np 2 -H 192.0.2.1:2 train.py (an unroutable host)")
    started = time.monotonic()
    proc = _run(*shlex.split(row.command)[2:-1], str(worker), cwd=tmp_path)
    # the probe's own bound is a few seconds; startup is the rest
    assert time.monotonic() - started < 30
    assert row.check(proc.stderr, proc.returncode) == proc.stderr.strip()


def test_ui_on_a_port_in_use_is_refused_before_its_url(tmp_path, monkeypatch, capsys):
    """Issue 25 (B11): the URL printed would be another server's page; refused in this process
    before the store is prepared or mlflow ui started."""
    from hvdtrain.cli import main

    row = docs_table.row("hvdtrain ui --port P while another server holds port P")
    monkeypatch.chdir(tmp_path)
    with socket.socket() as other_server:
        other_server.bind(("127.0.0.1", 0))
        other_server.listen()
        port = other_server.getsockname()[1]
        status = main(["ui", "--port", str(port)])
    out, err = capsys.readouterr()
    assert row.check(err, status, P=str(port)) == err.strip()
    assert out == ""  # no URL
    assert list(tmp_path.iterdir()) == []  # no store made
    # a port number no socket has: before name resolution wraps it round to another port
    row = docs_table.row("hvdtrain ui --port 99999")
    status = main(["ui", "--port", "99999"])
    out, err = capsys.readouterr()
    assert (row.check(err, status), out) == (err.strip(), "")
    assert list(tmp_path.iterdir()) == []


def test_hostfile_comments_and_default_slots(tmp_path):
    from hvdtrain.launch.hosts import read_hostfile

    hostfile = tmp_path / "hosts"
    hostfile.write_text("# the cluster\nnode1 slots=4  # big one\n\nnode2\nnode3 slots = 2\n")
    assert read_hostfile(hostfile) == [("node1", 4), ("node2", 1), ("node3", 2)]
