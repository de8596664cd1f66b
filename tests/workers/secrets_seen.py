"""What a worker of a job launched with secrets in its environment sees (issue 26): the value of
each variable named by ``--names``, and every process's command line on its host (real ``ps``,
taken while its launcher, ssh sessions and guard run). Rank 0 also opens an MLflow run whose
config holds a secret the way configs are often built, from the environment; with system metrics
on, every host logs its own to the run."""

import os
import socket
import subprocess
import time

import hvdtrain.torch as ht
from hvdtrain import tracking
from tests.workers.common import parse_args, report


def wait_for_system_metrics(run_id: str, hosts: set[str], timeout: float = 120) -> None:
    """Until the run holds system metrics of every host (another host's monitor starts once its
    worker has imported MLflow)."""
    from mlflow.tracking import MlflowClient

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        metrics = MlflowClient().get_run(run_id).data.metrics
        if {key.split("/")[1] for key in metrics if key.startswith("system/")} >= hosts:
            return
        time.sleep(0.5)


def main():
    args = parse_args(names=str)
    names = args.names.split(",")
    ctx = ht.init(seed=0)
    seen = {name: os.environ.get(name) for name in names}
    ps = subprocess.run(["ps", "-eww", "-o", "args"], capture_output=True, text=True).stdout
    config = {"lr": 0.1, "mlflow_tracking_password": seen["MLFLOW_TRACKING_PASSWORD"]}
    hosts = {ctx.broadcast_object(socket.gethostname(), r) for r in range(ctx.size)}
    with tracking.tracked(config=config, experiment="secrets") as tracker:
        tracker.log_step(1, {"loss": 0.5})
        if ctx.is_main:
            wait_for_system_metrics(tracker.run_id, hosts)
        ctx.broadcast_object(None, 0)  # every host's monitor runs until then
    report(args.out, ctx.rank, seen=seen, ps=ps, run_id=tracker.run_id if ctx.is_main else None)


if __name__ == "__main__":
    main()
