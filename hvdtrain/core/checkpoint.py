"""Checkpoint layout and atomicity, shared by both adapters.

A checkpoint is a payload written by the framework (``step-00000120.pt`` or ``.keras``) plus a
JSON sidecar with the training position, written last: the sidecar is the commit marker, so a
job killed mid-save leaves at most an orphan payload, never a checkpoint that looks complete.
Both files are written to a temporary name and renamed, which is atomic on POSIX.

Data parallelism keeps every rank's weights identical, so a checkpoint holds one full copy and
resumes on any number of workers; ``base_lrs`` lets the adapter re-scale the LR for the new size.
"""
from __future__ import annotations

import json
import os
import re
import tempfile
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

from .context import Context

_NAME = re.compile(r"^step-(\d+)\.json$")


class CheckpointError(ValueError):
    """A checkpoint file that cannot be used; the message names the file."""


@dataclass
class CheckpointMeta:
    step: int
    epoch: int
    world_size: int
    framework: str
    payload: str
    base_lrs: list[float] = field(default_factory=list)
    config: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)
    created: float = field(default_factory=time.time)


def atomic_write(path: str | os.PathLike, write: Callable[[str], None], suffix: str = "") -> Path:
    """Call ``write(tmp_path)`` then rename ``tmp_path`` over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=f".tmp{suffix}")
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


class CheckpointDir:
    """``root/step-N.<ext>`` payloads with ``root/step-N.json`` sidecars; keeps the newest ``keep``."""

    def __init__(self, root: str | os.PathLike, extension: str, keep: int = 3):
        if keep < 1:
            raise ValueError(f"keep must be >= 1, got {keep}")
        self.root = Path(root)
        self.extension = extension
        self.keep = keep

    def payload_path(self, step: int) -> Path:
        return self.root / f"step-{step:08d}{self.extension}"

    def save(self, meta: CheckpointMeta, write_payload: Callable[[str], None]) -> Path:
        newest = self.checkpoints()[-1:]
        if newest and newest[0][0] > meta.step:
            # Pruning keeps the highest steps: this save would be deleted at once, and a resume
            # would pick up the other run.
            raise CheckpointError(f"{self.root} holds a checkpoint of a later step ({newest[0][0]} > {meta.step}), "
                                  f"from another run: resume from it or use a new checkpoint directory")
        payload = self.payload_path(meta.step)
        atomic_write(payload, write_payload, suffix=self.extension)
        meta.payload = payload.name
        sidecar = payload.with_suffix(".json")
        atomic_write(sidecar, lambda tmp: Path(tmp).write_text(json.dumps(asdict(meta), indent=1)))
        self._prune()
        return payload

    def checkpoints(self) -> list[tuple[int, Path]]:
        """Committed checkpoints (sidecar present), oldest first."""
        if not self.root.is_dir():
            return []
        found = [(int(m.group(1)), p) for p in self.root.iterdir() if (m := _NAME.match(p.name))]
        return sorted(found)

    def latest(self) -> tuple[Path, CheckpointMeta] | None:
        """The newest checkpoint whose sidecar and payload are intact; broken ones are skipped."""
        for _, sidecar in reversed(self.checkpoints()):
            try:
                return read_meta(sidecar)
            except CheckpointError as err:
                warnings.warn(f"skipping checkpoint: {err}", stacklevel=2)
        return None

    def _prune(self) -> None:
        for _, sidecar in self.checkpoints()[: -self.keep]:
            meta = json.loads(sidecar.read_text())
            (self.root / meta.get("payload", "")).unlink(missing_ok=True)
            sidecar.unlink(missing_ok=True)


def find(path: str | os.PathLike, extension: str) -> tuple[Path, CheckpointMeta] | None:
    """A checkpoint file (payload or sidecar), or the newest valid one in a directory; ``None`` for
    a directory without checkpoints, or not created yet (a fresh start)."""
    path = Path(path)
    if path.suffix in (extension, ".json"):
        return read_meta(path)
    return CheckpointDir(path, extension).latest()


def load_on_main(ctx: Context, path: str | os.PathLike, extension: str,
                 restore: Callable[[Path], None]) -> CheckpointMeta | None:
    """Rank 0 finds the checkpoint and ``restore``s its payload; every rank returns its metadata
    (``None``: nothing to resume) or raises the same ``CheckpointError``, so no rank is left
    waiting in a collective while another has failed. The caller broadcasts the restored state."""
    outcome: tuple[CheckpointMeta | None, str | None] = (None, None)
    if ctx.is_main:
        try:
            found = find(path, extension)
            if found is not None:
                restore(found[0])
                outcome = (found[1], None)
        except Exception as err:
            outcome = (None, str(err) if isinstance(err, CheckpointError) else
                       f"{path}: cannot be loaded ({type(err).__name__}: {first_line(err)})")
    meta, error = ctx.broadcast_object(outcome, 0)
    if error:
        raise CheckpointError(error)
    return meta


def first_line(err: BaseException) -> str:
    return str(err).splitlines()[0] if str(err) else "no detail"


def read_meta(path: str | os.PathLike) -> tuple[Path, CheckpointMeta]:
    """(payload path, metadata) for a sidecar or payload path; ``CheckpointError`` if unusable."""
    path = Path(path)
    sidecar = path if path.suffix == ".json" else path.with_suffix(".json")
    if not sidecar.exists():
        raise CheckpointError(f"{path}: no checkpoint metadata ({sidecar.name} missing)")
    try:
        meta = CheckpointMeta(**json.loads(sidecar.read_text()))
    except (ValueError, TypeError) as err:
        raise CheckpointError(f"{sidecar}: unreadable checkpoint metadata ({err})") from None
    payload = sidecar.parent / meta.payload
    if not payload.exists():
        raise CheckpointError(f"{payload}: checkpoint payload missing")
    return payload, meta
