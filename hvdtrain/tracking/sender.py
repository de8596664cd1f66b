"""Background sender: tracking calls return at once, MLflow is talked to off the training thread.

Every record goes to the journal on disk first (``journal``), then to a queue the thread sends
from in order, with growing pauses between retries while the server is down. At most
``MAX_QUEUED`` records wait in memory: during a long outage the rest wait only in the journal
and are read back from it as the queue drains. Whatever happens to the process, the journal holds
every record not yet acknowledged, and ``hvdtrain mlflow-sync JOURNAL`` sends them; a job that
sent everything deletes its journal at the end.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import os
import re
import shutil
import tempfile
import threading
from pathlib import Path
from typing import Any

from mlflow.tracking import MlflowClient

from . import delivery, records
from .journal import Journal, records_between
from .legs import log
from .records import RunSpec

THREAD_NAME = "hvdtrain-mlflow-sender"
MAX_QUEUED = 10_000  # records held in memory; the journal holds any more
BATCH = 100  # metrics records sent in one request


class _QuietRetries(logging.Filter):
    """urllib3 logs a warning per retry; on the sender thread one warning per outage is enough."""

    def filter(self, record: logging.LogRecord) -> bool:
        return threading.current_thread().name != THREAD_NAME


logging.getLogger("urllib3.connectionpool").addFilter(_QuietRetries())


class Sender:
    """Owns rank 0's MLflow traffic: opens the run, then sends journalled records in order."""

    def __init__(
        self,
        client: MlflowClient,
        spec: RunSpec,
        journal_path: Path | None,
        retry_interval: float = 1.0,
        max_retry_interval: float = 10.0,
        max_queued: int = MAX_QUEUED,
    ):
        """``journal_path`` None: no journal, records wait in memory only (what the journal's cost
        is measured against)."""
        self.client, self.spec = client, spec
        self.retry_interval, self.max_retry_interval, self.max_queued = (
            retry_interval,
            max_retry_interval,
            max_queued,
        )
        self._queue: collections.deque[tuple[int, dict[str, Any]]] = collections.deque()
        self._on_disk_from: int | None = None  # journal offset of the first record not in the queue
        self._cond = threading.Condition()
        self._closing = False
        self._abandoned = False
        self._down = False
        self._last_error: Exception | None = None  # why the last send failed
        self._run_open = False
        self._previous_params: dict[
            str, str
        ] = {}  # the run's params before this job (a resumed leg)
        self.first_attempt = threading.Event()  # set once opening the run was tried
        self.kept: Path | None = None  # the journal, when it still holds unsent records at close
        self._journal = _open_journal(journal_path, spec) if journal_path is not None else None
        self._writable = self._journal is not None
        self._artifacts = (
            journal_path.with_name(journal_path.stem + "-artifacts")
            if journal_path is not None
            else Path(tempfile.mkdtemp(prefix="hvdtrain-mlflow-"))
        )
        self._staged = 0
        self._thread = threading.Thread(target=self._loop, name=THREAD_NAME, daemon=True)
        self._thread.start()

    def put(self, record: dict[str, Any]) -> None:
        """Journal ``record``, then queue it
        (or leave it to the journal while the queue is full)."""
        with self._cond:
            if not self._writable:  # no journal (a warning said why): memory only, unbounded
                self._queue.append((0, record))
            else:
                offset = self._journal.size
                seq = self._append(record)
                if seq is None:
                    self._queue.append((0, record))
                elif self._on_disk_from is None and len(self._queue) < self.max_queued:
                    self._queue.append((seq, record))
                elif self._on_disk_from is None:
                    self._on_disk_from = offset
            self._cond.notify()

    def put_artifact(
        self, path: str | os.PathLike, artifact_path: str | None, per_leg: bool = False
    ) -> None:
        """Queue a file or directory, linked or copied now next to the journal: the caller may
        replace or prune it, and a killed job's ``mlflow-sync`` still finds it."""
        source = Path(path)
        staged = self._artifacts / str(self._staged) / source.name
        self._staged += 1
        try:
            staged.parent.mkdir(parents=True)
            if source.is_dir():
                shutil.copytree(source, staged, copy_function=_link_or_copy)
            else:
                _link_or_copy(source, staged)
        except OSError as err:  # a missing or unreadable file is a warning, never a crash
            log.warning("hvdtrain: artifact %s not logged: %s", path, err)
            return
        self.put(records.artifact_record(str(staged), artifact_path, per_leg))

    def close(self, timeout: float) -> Path | None:
        """Send what is left within ``timeout`` s. Returns the journal if it still holds unsent
        records (the server is down or slow); otherwise the journal is deleted."""
        with self._cond:
            self._closing = True
            self._cond.notify()
        self._thread.join(timeout)
        with self._cond:
            self._abandoned = True  # a send still in flight may finish; nothing new starts
            unsent = bool(self._queue) or self._on_disk_from is not None
            if self._writable and unsent:
                self.kept = self._journal.path
                log.warning(
                    "hvdtrain: MLflow tracking %s at the end of training; unsent tracking data is "
                    "kept in %s, upload it with: hvdtrain mlflow-sync %s",
                    "still refused the run"
                    if isinstance(self._last_error, delivery.ExperimentDeleted)
                    else "server still answers with a web page"
                    if self._last_error is not None and _web_page_status(self._last_error)
                    else "server still unreachable",
                    self.kept,
                    self.kept,
                )
            elif unsent:
                log.warning(
                    "hvdtrain: MLflow tracking data not sent: the server is unreachable and there "
                    "is no journal to keep it in (see the warning above)"
                )
            if not unsent:
                shutil.rmtree(self._artifacts, ignore_errors=True)
            if self._journal is not None and not unsent:
                self._journal.close(delete=True)
                _remove_if_empty(self._journal.path.parent)
                self._journal, self._writable = None, False
            elif self._journal is not None and not self._thread.is_alive():
                # nothing in flight: the lock is released for a sync
                self._journal.close(delete=False)
                self._journal, self._writable = None, False
        return self.kept

    def _append(self, record: dict[str, Any]) -> int | None:
        try:
            return self._journal.append(record)
        except OSError as err:  # a full disk: keep tracking in memory, as without a journal
            log.warning(
                "hvdtrain: tracking journal %s cannot be written (%s); unsent tracking data is "
                "kept in memory only from now on",
                self._journal.path,
                err,
            )
            self._writable = False
            return None

    def _loop(self) -> None:
        delay = self.retry_interval
        while True:
            with self._cond:
                while not self._queue and self._on_disk_from is None and not self._closing:
                    self._cond.wait()
                if self._abandoned:
                    return
            self._refill()
            with self._cond:
                if not self._queue:
                    return  # closing, everything sent
                batch = self._head()
            try:
                self._send([record for _, record in batch])
            # any tracking failure is a warning, never a crash
            except Exception as err:  # noqa: BLE001
                if self._run_open and not delivery.is_retryable(err):
                    log.warning(
                        "hvdtrain: MLflow rejected a %s record, dropping it: %s",
                        batch[0][1]["kind"],
                        err,
                    )
                    self._done(batch)
                    continue
                self._note_down(err)
                with self._cond:
                    if self._closing:
                        return  # close() keeps the journal
                    self._cond.wait(delay)
                delay = min(2 * delay, self.max_retry_interval)
                continue
            self._done(batch)
            delay = self.retry_interval
            if self._down:
                self._down = False
                log.warning(
                    "hvdtrain: MLflow tracking server is reachable again; buffered data sent"
                )

    def _refill(self) -> None:
        """Move records that waited only in the journal back into the emptied queue."""
        with self._cond:
            if self._queue or self._on_disk_from is None or self._journal is None:
                return
            start, end = self._on_disk_from, self._journal.size
            path = self._journal.path
        found, stop = records_between(path, start, end, self.max_queued)
        with self._cond:
            self._queue.extend(found)
            caught_up = self._journal is not None and stop >= self._journal.size
            self._on_disk_from = None if caught_up else stop

    def _head(self) -> list[tuple[int, dict[str, Any]]]:
        """The next record, or the run of consecutive metrics records at the head as one batch."""
        first = self._queue[0]
        if first[1]["kind"] != "metrics":
            return [first]
        batch = []
        for entry in self._queue:
            if entry[1]["kind"] != "metrics" or len(batch) >= BATCH:
                break
            batch.append(entry)
        return batch

    def _send(self, batch: list[dict[str, Any]]) -> None:
        if not self._run_open:
            try:
                self._previous_params = delivery.open_run(self.client, self.spec)
                self._run_open = True
                # unrecorded: sync finds the run by its tag
                with (
                    self._cond,
                    contextlib.suppress(OSError),
                ):
                    if self._writable:
                        self._journal.mark_opened(self.spec)
            finally:
                self.first_attempt.set()
        record = (
            batch[0]
            if len(batch) == 1
            else {"kind": "metrics", "metrics": records.merge_metrics(batch)}
        )
        delivery.send(self.client, self.spec, record, self._previous_params)

    def _done(self, batch: list[tuple[int, dict[str, Any]]]) -> None:
        """``batch`` was acknowledged: mark it sent in the journal, then drop it from the queue."""
        with self._cond:
            if self._writable and batch[-1][0]:
                try:
                    self._journal.mark_sent(batch[-1][0])
                except OSError:
                    pass  # the records stay unmarked: a later sync skips what MLflow already has
            for _ in batch:
                self._queue.popleft()

    def _note_down(self, err: Exception) -> None:
        """Say once, in one line, why tracking data waits: a deleted experiment, a server that is
        not MLflow (a web page where the REST API should be), or an outage."""
        self._last_error = err
        if self._down:
            return
        self._down = True
        page = _web_page_status(err)
        if isinstance(err, delivery.ExperimentDeleted):
            problem = f"MLflow tracking cannot open this job's run: {err}"
        elif page is not None:
            problem = (
                f"MLflow tracking at {self.client.tracking_uri} is not an MLflow server (it "
                f"answers HTTP {page} with a web page): check MLFLOW_TRACKING_URI"
            )
        else:
            problem = (
                f"MLflow tracking at {self.client.tracking_uri} is unreachable "
                f"({' '.join(str(err).split())[:300]})"
            )
        log.warning(
            "hvdtrain: %s; training continues, tracking data is kept in the journal and retried "
            "in the background",
            problem,
        )


def _web_page_status(err: Exception) -> str | None:
    """The HTTP status of an answer that was a web page (HTML) rather than MLflow's JSON, which
    MLflow's error quotes whole: ten lines of markup where one line should be."""
    found = re.search(r"code (\d+).*?<(?:!doctype|html)", str(err), re.IGNORECASE | re.DOTALL)
    return found.group(1) if found else None


def _open_journal(path: Path, spec: RunSpec) -> Journal | None:
    try:
        return Journal(path, spec)
    except OSError as err:
        log.warning(
            "hvdtrain: tracking journal %s cannot be created (%s); unsent tracking data is kept in "
            "memory only",
            path,
            err,
        )
        return None


def _remove_if_empty(directory: Path) -> None:
    try:
        directory.rmdir()
    except OSError:
        pass  # not empty (other jobs' journals) or already gone


def _link_or_copy(source: str | os.PathLike, target: str | os.PathLike) -> None:
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)
