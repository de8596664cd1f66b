"""``hvdtrain mlflow-sync JOURNAL``: send what a job's tracking journal holds that MLflow never
acknowledged, exactly once, through the same code as live tracking (``delivery``)."""

from __future__ import annotations

import os
from itertools import groupby
from pathlib import Path
from typing import Any

from mlflow.tracking import MlflowClient

from . import delivery, login, records, store
from .journal import Journal, check_is_journal, replay
from .sender import BATCH

SYNCED_SUFFIX = ".synced"


class NothingToSync(ValueError):
    """Every record of the journal was delivered already: nothing is sent, no run is opened."""


class UnknownStore(ValueError):
    """The journal does not say where its job tracked, and the caller did not either."""


def sync(path: str | Path, tracking_uri: str | None = None) -> tuple[str, int, str]:
    """Send every unacknowledged record of the journal ``path`` to the store its job tracked to
    (recorded in the journal; ``tracking_uri`` overrides it); returns (run id, records sent, the
    store's URI).

    Never to a store it would have to guess: the shell's ``MLFLOW_TRACKING_URI`` or MLflow's
    default local store may be another store than the job's (``UnknownStore`` for a journal that
    does not record it and no ``tracking_uri``). A journal with nothing left to send is left as
    it is (``NothingToSync``): opening its run again, possibly in another store, would only make
    an empty run.

    Each record sent is marked in the journal at once, so a sync cut short sends only the rest
    when run again. Metric points MLflow already holds (a batch acknowledged by the server but
    not yet marked when the job was killed) are not sent twice. A journal without an end record
    (the job was killed) ends its run FAILED. Once everything is sent the file is renamed
    ``<name>.synced``, so a second sync cannot duplicate it.
    """
    path = Path(path)
    check_is_journal(path)  # before opening it to append
    journal = Journal(path)  # the lock: JournalInUse while the job still writes it
    try:
        found = replay(path)
        spec = found.spec
        uri = tracking_uri or spec.tracking_uri
        if uri is None:
            raise UnknownStore(
                "the journal does not record where its job was tracking (written before hvdtrain "
                "recorded it); pass --tracking-uri URI, the job's MLFLOW_TRACKING_URI"
            )
        if not found.unsent:
            raise NothingToSync(
                f"nothing to send: every record was delivered already (run {spec.run_id} at "
                f"{spec.tracking_uri or uri}); the file is left as it is"
            )
        existed = spec.run_id is not None
        # A server that requires a login and refuses this one: one line, the file untouched.
        login.check({**os.environ, "MLFLOW_TRACKING_URI": uri})
        store.bound_http_calls()
        client = MlflowClient(uri)
        previous_params = delivery.open_run(client, spec)
        journal.mark_opened(spec)
        unsent = _not_on_server(client, spec.run_id, found.unsent) if existed else found.unsent
        sent = 0
        for is_metrics, group in groupby(unsent, key=lambda entry: entry[1]["kind"] == "metrics"):
            group = list(group)
            for chunk in (
                [group[i : i + BATCH] for i in range(0, len(group), BATCH)]
                if is_metrics
                else [[entry] for entry in group]
            ):
                record = (
                    chunk[0][1]
                    if not is_metrics
                    else {"kind": "metrics", "metrics": records.merge_metrics(r for _, r in chunk)}
                )
                delivery.send(client, spec, record, previous_params)
                journal.mark_sent(chunk[-1][0])
                sent += len(chunk)
        if not found.has_end:
            client.set_terminated(spec.run_id, "FAILED")
    finally:
        journal.close(delete=False)
    path.rename(path.with_name(path.name + SYNCED_SUFFIX))
    return spec.run_id, sent, uri


def _not_on_server(
    client: MlflowClient, run_id: str, unsent: list[tuple[int, dict[str, Any]]]
) -> list[tuple[int, dict[str, Any]]]:
    """``unsent`` without the metric points the run already has (same key, step, time and value)."""
    keys = {m[0] for _, record in unsent if record["kind"] == "metrics" for m in record["metrics"]}
    stored = {
        (m.key, m.value, m.timestamp, m.step)
        for key in keys
        for m in client.get_metric_history(run_id, key)
    }
    kept = []
    for seq, record in unsent:
        if record["kind"] == "metrics":
            record = {**record, "metrics": [m for m in record["metrics"] if tuple(m) not in stored]}
            if not record["metrics"]:
                continue
        kept.append((seq, record))
    return kept
