"""What a worker of a job launched with secrets in its environment sees (issue 26): the value of
each variable named by ``--names``, and every process's command line on its host (real ``ps``,
taken while its launcher, ssh sessions and guard run). Rank 0 also opens an MLflow run whose
config holds a secret the way configs are often built, from the environment."""

import os
import subprocess

import hvdtrain.torch as ht
from hvdtrain import tracking
from tests.workers.common import parse_args, report


def main():
    args = parse_args(names=str)
    names = args.names.split(",")
    ctx = ht.init(seed=0)
    seen = {name: os.environ.get(name) for name in names}
    ps = subprocess.run(["ps", "-eww", "-o", "args"], capture_output=True, text=True).stdout
    config = {"lr": 0.1, "mlflow_tracking_password": seen["MLFLOW_TRACKING_PASSWORD"]}
    with tracking.tracked(config=config, experiment="secrets") as tracker:
        tracker.log_step(1, {"loss": 0.5})
    report(args.out, ctx.rank, seen=seen, ps=ps, run_id=tracker.run_id if ctx.is_main else None)


if __name__ == "__main__":
    main()
