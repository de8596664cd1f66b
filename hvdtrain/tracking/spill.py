"""Upload a spill file: what a job could not send because the tracking server was down.

The first line describes the run (its id, if it was created before the outage), each further
line is one record, sent in order through the same code as live tracking.
"""
from __future__ import annotations

import json
from itertools import groupby
from pathlib import Path

from mlflow.tracking import MlflowClient

from . import records, store
from .records import RunSpec


def sync(path: str | Path, tracking_uri: str | None = None) -> tuple[str, int]:
    """Send every record of ``path`` to the tracking server; returns (run id, records sent).

    If sending fails part-way the file is rewritten with what is still unsent (and the run id),
    so running it again sends the rest (a batch in flight at the failure may be sent twice). Once
    everything is sent the file is renamed ``<name>.synced``, so a second sync cannot duplicate it.
    """
    path = Path(path)
    lines = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not lines or lines[0].get("kind") != "run":
        raise ValueError(f"{path}: not an hvdtrain MLflow spill file (first line must describe the run)")
    spec = RunSpec(**{k: v for k, v in lines[0].items() if k != "kind"})
    pending = lines[1:]
    store.bound_http_calls()
    client = MlflowClient(tracking_uri or store.tracking_uri())
    previous_params = records.open_run(client, spec)
    sent = 0
    try:
        for is_metrics, group in groupby(pending, key=lambda r: r["kind"] == "metrics"):
            group = list(group)
            batch = [{"kind": "metrics", "metrics": records.merge_metrics(group)}] if is_metrics else group
            for record in batch:
                records.send(client, spec, record, previous_params)
            sent += len(group)
    except BaseException:
        path.write_text("".join(json.dumps(r) + "\n" for r in (spec.as_record(), *pending[sent:])),
                        encoding="utf-8")
        raise
    path.rename(path.with_name(path.name + ".synced"))
    return spec.run_id, sent
