"""Tracking records: small JSON-able dicts, so the same record can be sent now, kept in the
journal while the server is down, and sent by ``hvdtrain mlflow-sync`` later: one code path
(sending them is ``delivery``). Nothing here imports MLflow.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class RunSpec:
    """The run records belong to; ``run_id`` stays None until the run exists on the server."""

    experiment: str | None = None
    experiment_id: str | None = None
    run_name: str | None = None
    tags: dict[str, str] = field(default_factory=dict)
    parent_run_id: str | None = None
    run_id: str | None = None
    leg: int | None = None  # 1 for a new run, +1 each time a resumed job reopens it
    # where to record the run's id once it exists
    run_files: list[str] = field(default_factory=list)
    # Tags the run when it is created, so a journal synced after a crash between creating the run
    # and recording its id finds that run instead of creating a second one.
    journal_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    # The store the job tracks to (absolute), so ``hvdtrain mlflow-sync`` delivers a journal there
    # and not to whatever store the shell it runs in would pick.
    tracking_uri: str | None = None

    def as_record(self) -> dict[str, Any]:
        return {"kind": "run", **asdict(self)}


def now_ms() -> int:
    return int(time.time() * 1000)


def metrics_record(metrics: Mapping[str, float], step: int) -> dict[str, Any]:
    timestamp = now_ms()
    return {
        "kind": "metrics",
        "metrics": [[k, float(v), timestamp, int(step)] for k, v in metrics.items()],
    }


def params_record(params: Mapping[str, Any]) -> dict[str, Any]:
    return {"kind": "params", "params": {k: str(v) for k, v in params.items()}}


def tags_record(tags: Mapping[str, Any]) -> dict[str, Any]:
    return {"kind": "tags", "tags": {k: str(v) for k, v in tags.items()}}


def artifact_record(path: str, artifact_path: str | None, per_leg: bool = False) -> dict[str, Any]:
    """``per_leg``: a later leg of a resumed job logs it under ``leg<N>/``
    instead of replacing it."""
    return {"kind": "artifact", "path": path, "artifact_path": artifact_path, "per_leg": per_leg}


def end_record(status: str) -> dict[str, Any]:
    return {"kind": "end", "status": status, "end_time": now_ms()}


def merge_metrics(records: Iterable[dict[str, Any]]) -> list[list]:
    return [m for record in records for m in record["metrics"]]
