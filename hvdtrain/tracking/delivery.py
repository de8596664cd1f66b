"""Sending records to MLflow: open (or reopen) the run, then send one record at a time. Used by
the live sender and by ``hvdtrain mlflow-sync``, so both deliver a record the same way."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from mlflow.entities import LifecycleStage, Metric, Param, Run, RunTag
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import RESOURCE_DOES_NOT_EXIST, ErrorCode
from mlflow.tracking import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID
from mlflow.utils.validation import MAX_METRICS_PER_BATCH, MAX_PARAMS_TAGS_PER_BATCH

from . import legs
from .legs import log
from .records import RunSpec

JOURNAL_TAG = "hvdtrain.journal"
# An experiment hvdtrain creates opens in MLflow 3's model-training view, not the GenAI one.
EXPERIMENT_TAGS = {"mlflow.experimentKind": "custom_model_development"}


class ExperimentDeleted(ValueError):
    """The run's experiment exists only in MLflow's trash: no run can be created in it, and the
    server is not down. Retried all the same (it may be restored while the job runs)."""


def is_retryable(err: Exception) -> bool:
    """Server or network trouble is retried; a request the server rejects (4xx) never succeeds."""
    if isinstance(err, MlflowException):
        status = err.get_http_status_code()
        return not (400 <= status < 500) or status == 429
    return True


def open_run(client: MlflowClient, spec: RunSpec) -> dict[str, str]:
    """Create the run ``spec`` describes, or reopen it (RUNNING again) when it has an id: the next
    leg of a resumed job. Records the run's id in ``spec.run_files`` and ``$HVDTRAIN_RUN_FILE``.
    Returns the params the run already had (none for a new run), for ``send``."""
    run = _run_to_continue(client, spec)
    if run is not None:
        spec.experiment_id = run.info.experiment_id
        if spec.leg is None:  # already set when syncing the journal of a leg opened before
            spec.leg = int(run.data.tags.get(legs.LEG_TAG, "1")) + 1
        client.update_run(spec.run_id, status="RUNNING")
        client.set_tag(spec.run_id, legs.LEG_TAG, str(spec.leg))
        previous = dict(run.data.params)
    else:
        spec.experiment_id = _experiment_id(client, spec)
        spec.run_id = _created_before(client, spec) or _create(client, spec)
        spec.leg, previous = 1, {}
    legs.write_run_files(spec.run_files, spec.run_id, client.tracking_uri, spec.experiment_id)
    return previous


def _run_to_continue(client: MlflowClient, spec: RunSpec) -> Run | None:
    """The run ``spec`` names, if any. One the store does not have (deleted, or recorded by
    another store at the same relative URI) gives way to a new run with a warning, rather than
    failing every retry until the job ends."""
    if not spec.run_id:
        return None
    try:
        run = client.get_run(spec.run_id)
        if run.info.lifecycle_stage == LifecycleStage.ACTIVE:
            return run
    except MlflowException as err:
        if err.error_code != ErrorCode.Name(RESOURCE_DOES_NOT_EXIST):
            raise
    log.warning(
        "hvdtrain: MLflow run %s to continue is not in %s (or deleted); this job logs to a new run",
        spec.run_id,
        client.tracking_uri,
    )
    spec.run_id, spec.leg = None, None
    return None


def _created_before(client: MlflowClient, spec: RunSpec) -> str | None:
    """The run this journal already created, if any: one whose creation was not recorded (the
    answer lost to a timeout, or the job killed right after) must not be created twice."""
    found = client.search_runs(
        [spec.experiment_id], f"tags.`{JOURNAL_TAG}` = '{spec.journal_id}'", max_results=1
    )
    return found[0].info.run_id if found else None


def _create(client: MlflowClient, spec: RunSpec) -> str:
    tags = {**spec.tags, legs.LEG_TAG: "1", JOURNAL_TAG: spec.journal_id}
    if spec.parent_run_id:
        tags[MLFLOW_PARENT_RUN_ID] = spec.parent_run_id
    return client.create_run(spec.experiment_id, run_name=spec.run_name, tags=tags).info.run_id


def _experiment_id(client: MlflowClient, spec: RunSpec) -> str:
    """The experiment named in ``spec`` (created if missing, with ``EXPERIMENT_TAGS``; one that
    exists keeps its own), else its id, else MLflow's default."""
    if not spec.experiment:
        return spec.experiment_id or "0"
    found = client.get_experiment_by_name(spec.experiment)
    if found is not None and found.lifecycle_stage == LifecycleStage.DELETED:
        raise ExperimentDeleted(
            f"experiment {spec.experiment!r} is deleted in {client.tracking_uri}: restore it "
            f"(mlflow experiments restore --experiment-id {found.experiment_id}) or choose "
            "another --experiment"
        )
    if found is not None:
        return found.experiment_id
    try:
        return client.create_experiment(spec.experiment, tags=EXPERIMENT_TAGS)
    except MlflowException:  # another job created it meanwhile
        return client.get_experiment_by_name(spec.experiment).experiment_id


def send(
    client: MlflowClient, spec: RunSpec, record: dict[str, Any], previous_params: Mapping[str, str]
) -> None:
    """Send ``record`` to the opened run; ``previous_params``: what ``open_run`` returned."""
    kind, run_id = record["kind"], spec.run_id
    if kind == "metrics":
        metrics = [Metric(k, v, ts, step) for k, v, ts, step in record["metrics"]]
        for i in range(0, len(metrics), MAX_METRICS_PER_BATCH):
            client.log_batch(
                run_id, metrics=metrics[i : i + MAX_METRICS_PER_BATCH], synchronous=True
            )
    elif kind in ("params", "tags"):
        values = record[kind]
        if kind == "params":
            values = legs.leg_params(values, previous_params, spec.leg or 1)
        entity = Param if kind == "params" else RunTag
        items = [entity(k, v) for k, v in values.items()]
        for i in range(0, len(items), MAX_PARAMS_TAGS_PER_BATCH):
            client.log_batch(
                run_id, **{kind: items[i : i + MAX_PARAMS_TAGS_PER_BATCH]}, synchronous=True
            )
    elif kind == "artifact":
        artifact_path = record["artifact_path"]
        if record.get("per_leg"):
            artifact_path = legs.leg_artifact_path(artifact_path, spec.leg or 1)
        if Path(record["path"]).is_dir():
            client.log_artifacts(run_id, record["path"], artifact_path)
        else:
            client.log_artifact(run_id, record["path"], artifact_path)
    elif kind == "end":
        client.set_terminated(run_id, record["status"], record["end_time"])
    else:
        raise ValueError(
            f"unknown tracking record kind {kind!r}; allowed: metrics, params, tags, artifact, end"
        )
