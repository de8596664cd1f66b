"""The tracking journal: a write-ahead log of everything rank 0 tracks, so nothing is lost.

Each record is appended to the journal (and flushed to the operating system) before it is queued
for sending; once MLflow acknowledged it, a ``sent`` mark follows. A process killed at any moment
(SIGKILL included) leaves a journal whose unmarked records are exactly what MLflow may not have;
``hvdtrain mlflow-sync JOURNAL`` sends those. A job whose records were all sent deletes its
journal at the end. The file survives the process, not the machine losing power (no fsync).

Format, one JSON object a line:
  ``{"kind": "run", ...}``       first line: the ``RunSpec`` (the run may not exist yet)
  ``{..., "seq": N}``            a record (``records``), numbered from 1
  ``{"kind": "opened", ...}``    the run now exists: its id, leg and experiment
  ``{"kind": "sent", "upto": N}`` records up to N were acknowledged

A live journal is locked (``flock``) by its process, so a sync cannot race the job writing it.
"""

from __future__ import annotations

import fcntl
import json
from collections.abc import Iterator
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from .records import RunSpec

OPENED_FIELDS = ("run_id", "leg", "experiment_id")


class JournalInUse(RuntimeError):
    """The journal is still being written by a running job."""


class NotAJournal(ValueError):
    """The path holds no hvdtrain tracking journal: nothing in it to send, or to keep."""


class Journal:
    """Append side of a journal; one per tracked job, on rank 0. Not thread-safe: the sender
    serialises calls under its own lock."""

    def __init__(self, path: Path, spec: RunSpec | None = None):
        """A new journal for ``spec``; with no ``spec``, the existing journal at ``path``, to
        append ``sent`` marks to (``JournalInUse`` while its job still writes it)."""
        self.path = path
        if spec is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(path, "x" if spec is not None else "r+", encoding="utf-8")
        self._file.seek(0, 2)  # appends only
        try:
            fcntl.flock(self._file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._file.close()
            raise JournalInUse(
                f"{path} is still being written by a running job; sync it once the job ended"
            ) from None
        self._seq = 0
        if spec is not None:
            self._write(spec.as_record())

    @property
    def size(self) -> int:
        """Bytes written so far: where the next line starts."""
        return self._file.tell()

    def append(self, record: dict[str, Any]) -> int:
        """Write ``record`` with the next sequence number; returns that number."""
        self._seq += 1
        self._write({**record, "seq": self._seq})
        return self._seq

    def mark_opened(self, spec: RunSpec) -> None:
        self._write({"kind": "opened", **{name: getattr(spec, name) for name in OPENED_FIELDS}})

    def mark_sent(self, upto: int) -> None:
        self._write({"kind": "sent", "upto": upto})

    def close(self, delete: bool) -> None:
        if delete:
            self.path.unlink(missing_ok=True)
        self._file.close()

    def _write(self, line: dict[str, Any]) -> None:
        self._file.write(json.dumps(line) + "\n")
        self._file.flush()


def records_between(
    path: Path, start: int, end: int, limit: int
) -> tuple[list[tuple[int, dict]], int]:
    """Up to ``limit`` records written between byte offsets ``start`` and ``end``, with their
    sequence numbers, and the offset after the last one taken."""
    found: list[tuple[int, dict]] = []
    with open(path, "rb") as f:
        f.seek(start)
        offset = start
        while offset < end and len(found) < limit:
            line = f.readline()
            offset += len(line)
            entry = json.loads(line)
            if "seq" in entry:
                seq = entry.pop("seq")
                found.append((seq, entry))
    return found, offset


@dataclass
class Replay:
    """What a journal holds: its run (updated by any ``opened`` line), the records MLflow has not
    acknowledged, in order, with their sequence numbers, and whether the job ended its run."""

    spec: RunSpec
    unsent: list[tuple[int, dict[str, Any]]]
    has_end: bool


def replay(path: Path) -> Replay:
    """Read a journal. A last line cut short (the job killed while writing it) is ignored: its
    record was never queued. ``NotAJournal`` for a path that holds no journal."""
    check_is_journal(path)
    lines = list(_lines(path))
    known = {f.name for f in fields(RunSpec)}
    spec = RunSpec(**{k: v for k, v in lines[0].items() if k in known})
    sent, records = 0, []
    for entry in lines[1:]:
        if entry.get("kind") == "opened":
            for name in OPENED_FIELDS:
                setattr(spec, name, entry[name])
        elif entry.get("kind") == "sent":
            sent = max(sent, entry["upto"])
        else:
            records.append((entry.pop("seq"), entry))
    unsent = [(seq, record) for seq, record in records if seq > sent]
    return Replay(spec, unsent, any(record["kind"] == "end" for _, record in records))


def check_is_journal(path: Path) -> None:
    """``NotAJournal`` unless ``path`` is a file whose first line describes a run (read alone)."""
    if path.is_dir():
        raise NotAJournal("a directory, not a journal: name a .jsonl file the job wrote")
    if not path.exists():
        raise NotAJournal("no such file: the job names its journal in its last lines")
    with open(path, "rb") as f:
        first = f.readline()
    try:
        record = json.loads(first)
    except (UnicodeDecodeError, json.JSONDecodeError):
        record = None
    if not isinstance(record, dict) or record.get("kind") != "run":
        raise NotAJournal(
            "not an hvdtrain tracking journal (its first line describes the job's run)"
        )


def _lines(path: Path) -> Iterator[dict[str, Any]]:
    text = path.read_text(encoding="utf-8")
    complete = text if text.endswith("\n") else text[: text.rfind("\n") + 1]
    for line in complete.splitlines():
        if line.strip():
            yield json.loads(line)
