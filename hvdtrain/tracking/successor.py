"""The sender of a process that became rank 0 during an elastic job (rank 0's host was lost).

A module of its own so that ``tracker`` imports no MLflow: only the process that takes over does.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from mlflow.tracking import MlflowClient

from . import legs, store
from .records import RunSpec
from .sender import Sender


class Successor(Sender):
    """The sender of a process that became rank 0 during an elastic job: it continues the job's
    run, found by its ``legs.JOB_TAG`` (retried like any send while the server does not answer),
    instead of creating one."""

    def __init__(self, client: MlflowClient, spec: RunSpec, journal: Path, job: str):
        self.job = job
        super().__init__(client, spec, journal)

    def _send(self, batch):
        if self.spec.run_id is None:
            experiment = (
                self.client.get_experiment_by_name(self.spec.experiment)
                if self.spec.experiment
                else None
            )
            experiment_id = (
                experiment.experiment_id if experiment else (self.spec.experiment_id or "0")
            )
            found = self.client.search_runs(
                [experiment_id],
                f"tags.`{legs.JOB_TAG}` = '{self.job}' and attributes.status = 'RUNNING'",
                max_results=1,
                order_by=["attributes.start_time DESC"],
            )
            if not found:
                raise LookupError(
                    f"no RUNNING run tagged {legs.JOB_TAG}={self.job} in experiment {experiment_id}"
                )
            self.spec.run_id, self.spec.leg = (
                found[0].info.run_id,
                int(found[0].data.tags.get(legs.LEG_TAG, "1")),
            )
        return super()._send(batch)


def successor(job: str, experiment: str | None) -> Sender:
    store.bound_http_calls()
    spec = RunSpec(
        experiment=experiment,
        experiment_id=os.environ.get("MLFLOW_EXPERIMENT_ID"),
        tracking_uri=store.absolute(store.tracking_uri()),
    )
    journal = (
        store.default_spill_dir() / f"run-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.jsonl"
    )
    return Successor(MlflowClient(store.tracking_uri()), spec, journal, job)
