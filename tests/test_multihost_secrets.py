"""Issue 26: no secret on any command line, on any host. A 2-host job (launched on the first host,
Gloo and MPI) with secrets in the launcher's environment: names that look like secrets and one
named with ``--secret-env``. Each worker runs ``ps`` while the job's launcher, ssh sessions, remote
shells and guards run, and reads its environment; rank 0 also tracks to MLflow.

Asserted: every worker reads each value intact; no value is in any process's command line (the ps
listings show the job's ssh command to the second host, without them), in the launcher's output,
or in any file the job wrote (the MLflow store: params, tags, artifacts; the tracking journal);
the owner-only file that carried them to the second host is gone when the job ends.
"""

import json
import secrets
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from hvdtrain.launch import secret_files
from tests.launch import REPO
from tests.multihost import job_env, run

pytestmark = [pytest.mark.multihost, pytest.mark.slow]


@pytest.fixture(scope="module")
def hosts(module_test_hosts):
    return module_test_hosts(2)


@pytest.mark.parametrize("mpi", [False, True], ids=["gloo", "mpi"])
def test_secrets_reach_the_workers_on_no_command_line(hosts, tmp_path, mpi):
    h1, h2 = hosts.names
    values = {
        "MLFLOW_TRACKING_PASSWORD": f"pw-{secrets.token_hex(8)}",
        "MLFLOW_TRACKING_TOKEN": f"tok-{secrets.token_hex(8)}",
        "AWS_SECRET_ACCESS_KEY": f"aws-{secrets.token_hex(8)}",
        "WAREHOUSE_DSN": f"postgres://etl:dsn-{secrets.token_hex(8)}@db/x",  # --secret-env
    }
    out, cwd = tmp_path / "out", tmp_path / "job"
    out.mkdir()
    cwd.mkdir()
    job = run(
        hosts,
        h1,
        "-np",
        "2",
        "-H",
        f"{h1}:1,{h2}:1",
        *(["--mpi"] if mpi else []),
        "--secret-env",
        "WAREHOUSE_DSN",
        str(REPO / "tests" / "workers" / "secrets_seen.py"),
        "--out",
        str(out),
        "--names",
        ",".join(values),
        cwd=cwd,
        env=job_env(**values),
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
    for path in [*cwd.rglob("*"), *Path(secret_files.path_for_job()).parent.glob("*")]:
        if path.is_file():
            data = path.read_bytes()
            assert not any(v.encode() in data for v in values.values()), path

    store = f"sqlite:///{cwd / 'mlflow.db'}"
    client = MlflowClient(store)
    run_ = client.get_run(ranks[0]["run_id"])
    assert run_.data.params["lr"] == "0.1"
    assert "mlflow_tracking_password" not in run_.data.params
