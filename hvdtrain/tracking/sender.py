"""Background sender: tracking calls return at once, MLflow is talked to off the training thread.

Records wait in a buffer until sent, so nothing is lost while the server is down: the thread
retries with growing pauses and sends the backlog when the server is back. At ``close`` it makes
one more attempt; if the server is still down what is left goes to a JSONL spill file, which
``hvdtrain mlflow-sync FILE`` uploads later.
"""
from __future__ import annotations

import collections
import json
import logging
import os
import shutil
import tempfile
import threading
from pathlib import Path
from typing import Any

from mlflow.tracking import MlflowClient

from . import records
from .records import RunSpec

log = logging.getLogger("hvdtrain.tracking")
log.setLevel(logging.WARNING)  # some imports (mlflow.pytorch's) raise the root logger to ERROR
THREAD_NAME = "hvdtrain-mlflow-sender"


class _QuietRetries(logging.Filter):
    """urllib3 logs a warning per retry; on the sender thread one warning per outage is enough."""

    def filter(self, record: logging.LogRecord) -> bool:
        return threading.current_thread().name != THREAD_NAME


logging.getLogger("urllib3.connectionpool").addFilter(_QuietRetries())


class Sender:
    """Owns rank 0's MLflow traffic: opens the run, then sends queued records in order."""

    def __init__(self, client: MlflowClient, spec: RunSpec, spill_path: Path,
                 retry_interval: float = 1.0, max_retry_interval: float = 10.0):
        self.client, self.spec, self.spill_path = client, spec, spill_path
        self.retry_interval, self.max_retry_interval = retry_interval, max_retry_interval
        self._pending: collections.deque[dict[str, Any]] = collections.deque()
        self._cond = threading.Condition()
        self._closing = False
        self._abandoned = False
        self._down = False
        self._run_open = False
        self._previous_params: dict[str, str] = {}  # the run's params before this job (a resumed leg)
        self.first_attempt = threading.Event()  # set once opening the run was tried
        self.spilled: Path | None = None
        self._staging: Path | None = None
        self._staged = 0
        self._thread = threading.Thread(target=self._loop, name=THREAD_NAME, daemon=True)
        self._thread.start()

    def put(self, record: dict[str, Any]) -> None:
        with self._cond:
            self._pending.append(record)
            self._cond.notify()

    def put_artifact(self, path: str | os.PathLike, artifact_path: str | None, per_leg: bool = False) -> None:
        """Queue a file or directory, linked or copied now: the caller may replace or prune it."""
        try:
            self._stage(Path(path), artifact_path, per_leg)
        except OSError as err:  # a missing or unreadable file is a warning, never a crash
            log.warning("hvdtrain: artifact %s not logged: %s", path, err)

    def _stage(self, source: Path, artifact_path: str | None, per_leg: bool) -> None:
        if self._staging is None:
            self._staging = Path(tempfile.mkdtemp(prefix="hvdtrain-mlflow-"))
        staged = self._staging / str(self._staged) / source.name
        self._staged += 1
        staged.parent.mkdir()
        if source.is_dir():
            shutil.copytree(source, staged, copy_function=_link_or_copy)
        else:
            _link_or_copy(source, staged)
        self.put(records.artifact_record(str(staged), artifact_path, per_leg))

    def close(self, timeout: float) -> Path | None:
        """Send what is left; spill it if the server is down or ``timeout`` passes. Returns the
        spill file, if one was written."""
        with self._cond:
            self._closing = True
            self._cond.notify()
        self._thread.join(timeout)
        with self._cond:
            if self._pending and not self._abandoned:
                # Still busy (a slow upload) or the thread died: keep the backlog, record in flight included.
                try:
                    self._spill()
                except OSError as err:
                    log.warning("hvdtrain: could not write the tracking spill file %s: %s", self.spill_path, err)
            if self._staging is not None and self.spilled is None:
                shutil.rmtree(self._staging, ignore_errors=True)
        return self.spilled

    def _loop(self) -> None:
        delay = self.retry_interval
        while True:
            with self._cond:
                while not self._pending and not self._closing:
                    self._cond.wait()
                if not self._pending or self._abandoned:
                    return
                batch = self._head()
            try:
                self._send(batch)
            except Exception as err:  # noqa: BLE001 - any tracking failure is a warning, never a crash
                if self._run_open and not records.is_retryable(err):
                    log.warning("hvdtrain: MLflow rejected a %s record, dropping it: %s", batch[0]["kind"], err)
                    self._pop(len(batch))
                    continue
                self._note_down(err)
                with self._cond:
                    if self._closing:
                        if not self._abandoned:  # close() may have spilled already
                            self._spill()
                        return
                    self._cond.wait(delay)
                delay = min(2 * delay, self.max_retry_interval)
                continue
            self._pop(len(batch))
            delay = self.retry_interval
            if self._down:
                self._down = False
                log.warning("hvdtrain: MLflow tracking server is reachable again; buffered data sent")

    def _head(self) -> list[dict[str, Any]]:
        """The next record, or the run of consecutive metrics records at the head as one batch."""
        first = self._pending[0]
        if first["kind"] != "metrics":
            return [first]
        batch = []
        for record in self._pending:
            if record["kind"] != "metrics" or len(batch) >= 100:
                break
            batch.append(record)
        return batch

    def _send(self, batch: list[dict[str, Any]]) -> None:
        if not self._run_open:
            try:
                self._previous_params = records.open_run(self.client, self.spec)
                self._run_open = True
            finally:
                self.first_attempt.set()
        record = batch[0] if len(batch) == 1 else {"kind": "metrics", "metrics": records.merge_metrics(batch)}
        records.send(self.client, self.spec, record, self._previous_params)

    def _pop(self, count: int) -> None:
        with self._cond:
            if self._abandoned:
                return
            for _ in range(count):
                self._pending.popleft()

    def _note_down(self, err: Exception) -> None:
        if not self._down:
            self._down = True
            log.warning("hvdtrain: MLflow tracking at %s is unreachable (%s); training continues, tracking "
                        "data is buffered and retried in the background, and written to a spill file if "
                        "the server is still down at the end", self.client.tracking_uri, str(err)[:300])

    def _spill(self) -> None:
        """Write the run spec and every pending record to the spill file (caller holds the lock)."""
        self.spill_path.parent.mkdir(parents=True, exist_ok=True)
        if self._staging is not None:
            # Staged artifacts move next to the spill file, where mlflow-sync finds them.
            kept = self.spill_path.with_name(self.spill_path.stem + "-artifacts")
            shutil.move(self._staging, kept)
            for record in self._pending:
                if record["kind"] == "artifact":
                    record["path"] = str(kept / Path(record["path"]).relative_to(self._staging))
            self._staging = None
        with open(self.spill_path, "w", encoding="utf-8") as f:
            for record in (self.spec.as_record(), *self._pending):
                f.write(json.dumps(record) + "\n")
        self.spilled = self.spill_path
        self._pending.clear()
        self._abandoned = True  # nothing is left to send
        log.warning("hvdtrain: MLflow tracking server still unreachable at the end of training; "
                    "tracking data written to %s, upload it with: hvdtrain mlflow-sync %s",
                    self.spill_path, self.spill_path)


def _link_or_copy(source: str | os.PathLike, target: str | os.PathLike) -> None:
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)
