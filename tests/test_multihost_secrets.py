"""Issue 26: no secret on any command line, on any host, and tracking to a server that requires a
login. A 2-host job (launched on the first host, Gloo and MPI) with secrets in the launcher's
environment: names that look like secrets and one named with ``--secret-env``, the MLflow password
among them. It tracks to a real ``mlflow server --app-name basic-auth`` on the second host, with
every host's system metrics. Each worker runs ``ps`` while the job's launcher, ssh sessions, remote
shells and guards run, and reads its environment.

Asserted: every worker reads each value intact; no value is in any process's command line (the ps
listings show the job's ssh command to the second host, without them), in the launcher's output,
in any file the job wrote (the tracking journal) or in the server's store (params, tags,
artifacts); the run holds both hosts' system metrics (each host logged with the credentials); the
owner-only file that carried them to the second host is gone when the job ends. A wrong password
is one line before any worker starts; ``hvdtrain mlflow-sync`` sends a journal with the login.
"""

import json
import re
import secrets
import subprocess
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from hvdtrain.launch import secret_files
from hvdtrain.tracking import records
from hvdtrain.tracking.records import RunSpec
from tests import docs_table
from tests.launch import REPO
from tests.multihost import HVDTRAIN, HostMlflowServer, job_env, one_worker_per_host, run

pytestmark = [pytest.mark.multihost, pytest.mark.slow]
PASSWORD, TOKEN = f"pw-{secrets.token_hex(8)}", f"tok-{secrets.token_hex(8)}"  # admin's
WRONG_PASSWORD = "MLFLOW_TRACKING_PASSWORD wrong for a server that requires a login"
SYNC_WRONG_PASSWORD = "hvdtrain mlflow-sync JOURNAL with a wrong MLFLOW_TRACKING_PASSWORD"


@pytest.fixture(scope="module")
def cluster(module_test_hosts, tmp_path_factory):
    hosts = module_test_hosts(2)
    root = tmp_path_factory.mktemp("mlflow")
    server = HostMlflowServer(
        hosts, hosts.names[1], root, admin_password=PASSWORD, admin_token=TOKEN
    )
    yield hosts, server
    server.stop()


@pytest.mark.parametrize(
    "mpi, login", [(False, "password"), (True, "token")], ids=["gloo-password", "mpi-token"]
)
def test_secrets_reach_the_workers_on_no_command_line(cluster, tmp_path, monkeypatch, mpi, login):
    """With MLFLOW_TRACKING_USERNAME MLflow's client logs in with the password, without it with the
    token (a bearer token)."""
    hosts, server = cluster
    h1, h2 = hosts.names
    values = {
        "MLFLOW_TRACKING_PASSWORD": PASSWORD,
        "MLFLOW_TRACKING_TOKEN": TOKEN,
        "AWS_SECRET_ACCESS_KEY": f"aws-{secrets.token_hex(8)}",
        "WAREHOUSE_DSN": f"postgres://etl:dsn-{secrets.token_hex(8)}@db/x",  # --secret-env
    }
    out, cwd = tmp_path / "out", tmp_path / "job"
    out.mkdir()
    cwd.mkdir()
    job = run(
        hosts,
        h1,
        *one_worker_per_host(hosts),
        *(["--mpi"] if mpi else []),
        "--secret-env",
        "WAREHOUSE_DSN",
        str(REPO / "tests" / "workers" / "secrets_seen.py"),
        "--out",
        str(out),
        "--names",
        ",".join(values),
        cwd=cwd,
        env=job_env(
            MLFLOW_TRACKING_URI=server.uri,
            **({"MLFLOW_TRACKING_USERNAME": "admin"} if login == "password" else {}),
            MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING="true",
            MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL="0.5",
            **values,
        ),
    )
    assert job.returncode == 0, job.stderr[-3000:]
    ranks = [json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1)]
    for rank in ranks:
        assert rank["seen"] == values
        # the job's ssh session to h2 (Gloo: Horovod's, with the worker's command; MPI: mpirun's)
        ssh = [
            line for line in rank["ps"].splitlines() if line.split()[0] in ("ssh", "/usr/bin/ssh")
        ]
        assert any(f" {h2} " in line for line in ssh), rank["ps"]
        leaked = [
            line for line in rank["ps"].splitlines() if any(v in line for v in values.values())
        ]
        assert leaked == []
    assert not any(v in job.stdout + job.stderr for v in values.values())
    stores = [server.root / "mlflow.db", *(server.root / "artifacts").rglob("*")]
    written = [*cwd.rglob("*"), *Path(secret_files.path_for_job()).parent.glob("*"), *stores]
    for path in written:
        if path.is_file():
            data = path.read_bytes()
            assert not any(v.encode() in data for v in values.values()), path

    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "admin")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", PASSWORD)
    run_ = MlflowClient(server.uri).get_run(ranks[0]["run_id"])
    assert run_.info.status == "FINISHED"
    assert run_.data.params["lr"] == "0.1"
    assert "mlflow_tracking_password" not in run_.data.params
    assert run_.data.metrics["loss"] == 0.5
    system = {key.split("/")[1] for key in run_.data.metrics if key.startswith("system/")}
    assert system == {h1, h2}


def test_wrong_mlflow_password_is_one_line_before_any_worker_starts(cluster, tmp_path):
    hosts, server = cluster
    h1 = hosts.names[0]
    script = tmp_path / "train.py"
    script.write_text(f"open({str(tmp_path / 'started')!r}, 'w')\n")
    job = run(
        hosts,
        h1,
        *one_worker_per_host(hosts),
        str(script),
        cwd=tmp_path,
        env=job_env(
            MLFLOW_TRACKING_URI=server.uri,
            MLFLOW_TRACKING_USERNAME="admin",
            MLFLOW_TRACKING_PASSWORD="not-the-password",
        ),
    )
    line = docs_table.row(WRONG_PASSWORD).check(job.stderr, job.returncode, URI=server.uri)
    assert line == job.stderr.strip()
    job = run(
        hosts,
        h1,
        "-np",
        "1",
        str(script),
        cwd=tmp_path,
        env=job_env(MLFLOW_TRACKING_URI=server.uri, MLFLOW_TRACKING_TOKEN="not-the-token"),
    )
    assert job.returncode == 2
    assert job.stderr.strip() == (
        f"hvdtrain: error: the MLflow server at {server.uri} refused the token in "
        "MLFLOW_TRACKING_TOKEN (HTTP 401): check the credentials"
    )
    assert not (tmp_path / "started").exists()


def test_mlflow_sync_sends_a_journal_with_the_login(cluster, tmp_path, monkeypatch):
    """A journal left by a job (here: written as a job writes it, the run not created yet) is
    sent to the server that requires a login; a wrong password changes nothing."""
    hosts, server = cluster
    journal = tmp_path / "run.jsonl"
    lines = [
        RunSpec(experiment="sync-login", tracking_uri=server.uri).as_record(),
        {**records.metrics_record({"loss": 1.0}, 0), "seq": 1},
        {**records.metrics_record({"loss": 0.5}, 1), "seq": 2},
    ]
    journal.write_text("".join(json.dumps(line) + "\n" for line in lines))
    before = journal.read_text()
    wrong = sync(journal, "not-the-password")
    row = docs_table.row(SYNC_WRONG_PASSWORD)
    assert row.check(wrong.stderr, wrong.returncode, URI=server.uri, JOURNAL=str(journal)) == (
        wrong.stderr.strip()
    )
    assert journal.read_text() == before
    right = sync(journal, PASSWORD)
    run_id = re.fullmatch(
        rf"uploaded 2 records from {re.escape(str(journal))} to run (\w+) at "
        + re.escape(server.uri),
        right.stdout.strip().splitlines()[-1],
    ).group(1)
    assert PASSWORD not in right.stdout + right.stderr
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "admin")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", PASSWORD)
    client = MlflowClient(server.uri)
    assert [m.value for m in client.get_metric_history(run_id, "loss")] == [1.0, 0.5]


def sync(journal: Path, password: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [HVDTRAIN, "mlflow-sync", str(journal)],
        capture_output=True,
        text=True,
        env=job_env(MLFLOW_TRACKING_USERNAME="admin", MLFLOW_TRACKING_PASSWORD=password),
        timeout=120,
    )
