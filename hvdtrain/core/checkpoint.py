"""Checkpoint layout and atomicity, shared by both adapters.

A checkpoint is a payload written by the framework (``step-00000120.pt`` or ``.keras``) plus a
JSON sidecar with the training position, written last: the sidecar is the commit marker, so a
job killed mid-save leaves at most an orphan payload, never a checkpoint that looks complete.
Both files are written to a temporary name and renamed, which is atomic on POSIX.

Data parallelism keeps every rank's weights identical, so a checkpoint holds one full copy and
resumes on any number of workers; ``base_lrs`` lets the adapter re-scale the LR for the new size.

Bad input: resuming from a directory skips (with a one-line warning) a partial or corrupt newest
checkpoint in favour of the previous good one; a checkpoint of another model or framework stops
the job on every rank; a failed save (full disk, a directory that is a file) removes its temporary
file, keeps the checkpoints already written and stops the job, all with one line naming the file.

A directory belongs to one job at a time (``claim``): a second job, started at once or reusing it
without resuming, would interleave its checkpoints with the first's and record its own MLflow run
there, so a later resume would load one job's weights into the other's run.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import re
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .context import Context, main_process_only
from .guards import UserError
from .on_main import on_main

_NAME = re.compile(r"^step-(\d+)\.json$")
_claimed: dict[Path, int] = {}  # directory -> its open, locked descriptor, held until exit
# Without logging configured, Python prints a warning as its bare message: one line.
log = logging.getLogger("hvdtrain.checkpoint")
log.setLevel(logging.WARNING)  # importing mlflow.pytorch raises the root logger's level to ERROR


class CheckpointError(UserError, ValueError):
    """A checkpoint file that cannot be used, or written; the message names the file."""


class CorruptCheckpointError(CheckpointError):
    """A payload that cannot be read at all (truncated, not a checkpoint): an older one may do."""


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
    """``root/step-N.<ext>`` payloads with ``root/step-N.json`` sidecars;
    keeps the newest ``keep``."""

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
            raise CheckpointError(
                f"{self.root} holds a checkpoint of a later step ({newest[0][0]} > {meta.step}), "
                f"from another run: resume from it or use a new checkpoint directory"
            )
        payload = self.payload_path(meta.step)
        meta.payload = payload.name
        sidecar = payload.with_suffix(".json")
        try:
            atomic_write(payload, write_payload, suffix=self.extension)
            atomic_write(
                sidecar, lambda tmp: Path(tmp).write_text(json.dumps(asdict(meta), indent=1))
            )
        except Exception as err:  # a full disk surfaces as OSError, or as the framework's own error
            if payload.exists() and not sidecar.exists():
                payload.unlink()  # never committed: it would only be a partial checkpoint
            kept = self.checkpoints()
            raise CheckpointError(
                f"{payload}: cannot write checkpoint ({type(err).__name__}: {first_line(err)})"
                + (f"; {kept[-1][1].stem} and older are kept" if kept else "")
            ) from None
        self._prune()
        return payload

    def checkpoints(self) -> list[tuple[int, Path]]:
        """Committed checkpoints (sidecar present), oldest first."""
        if not self.root.is_dir():
            return []
        found = [(int(m.group(1)), p) for p in self.root.iterdir() if (m := _NAME.match(p.name))]
        return sorted(found)

    def latest(self) -> tuple[Path, CheckpointMeta] | None:
        """The newest checkpoint whose sidecar and payload are present; broken ones are skipped."""
        return next(self.candidates(), None)

    def candidates(self) -> Iterator[tuple[Path, CheckpointMeta]]:
        """(payload, metadata) of each checkpoint, newest first; a partial one (a payload whose
        save was cut short before its sidecar) or one with a broken sidecar is
        skipped with a warning."""
        committed = {sidecar.with_suffix(self.extension) for _, sidecar in self.checkpoints()}
        if self.root.is_dir():
            for orphan in sorted(self.root.glob(f"step-*{self.extension}")):
                if orphan not in committed:
                    warn_skipped(
                        orphan, f"partial checkpoint ({orphan.with_suffix('.json').name} missing)"
                    )
        for _, sidecar in reversed(self.checkpoints()):
            try:
                yield read_meta(sidecar)
            except CheckpointError as err:
                warn_skipped(sidecar, str(err))

    def check_writable(self) -> None:
        """``CheckpointError`` now, rather than after an epoch of training, if saving must fail."""
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            tempfile.TemporaryFile(dir=self.root).close()
        except OSError as err:
            raise CheckpointError(
                f"{self.root}: cannot write checkpoints there ({type(err).__name__}: "
                f"{first_line(err)})"
            ) from None

    def _prune(self) -> None:
        for step, sidecar in self.checkpoints()[: -self.keep]:
            self.payload_path(step).unlink(missing_ok=True)
            sidecar.unlink(missing_ok=True)


def find(path: str | os.PathLike, extension: str) -> tuple[Path, CheckpointMeta] | None:
    """A checkpoint file (payload or sidecar), or the newest valid one in a directory; ``None`` for
    a directory without checkpoints, or not created yet (a fresh start)."""
    return next(_found(Path(path), extension), None)


def _found(path: Path, extension: str) -> Iterator[tuple[Path, CheckpointMeta]]:
    """The checkpoint a file names, or a directory's checkpoints newest first."""
    if _names_a_file(path, extension):
        yield read_meta(path)
    else:
        yield from CheckpointDir(path, extension).candidates()


def _names_a_file(path: Path, extension: str) -> bool:
    return path.suffix in (extension, ".json") or path.is_file()


def load_on_main(
    ctx: Context, path: str | os.PathLike, extension: str, restore: Callable[[Path], None]
) -> CheckpointMeta | None:
    """Rank 0 finds the checkpoint and ``restore``s its payload; every rank returns its metadata
    (``None``: nothing to resume) or raises the same ``CheckpointError``. The caller broadcasts
    the restored state.

    In a directory, a checkpoint that ``restore`` finds corrupt (``CorruptCheckpointError``) is
    skipped with a warning for the next older one; one that does not fit the model is an error.
    """
    return _on_main(ctx, path, lambda: _restore_newest(Path(path), extension, restore))


def check_writable(ctx: Context, directory: str | os.PathLike, resume: bool = True) -> None:
    """Collective, before training: every rank raises the same ``CheckpointError`` if rank 0
    cannot write checkpoints into ``directory``, or cannot ``claim`` it for this job, instead of
    rank 0 alone after an epoch."""
    _on_main(ctx, directory, lambda: claim(directory, resume))


def claim(directory: str | os.PathLike, resume: bool) -> None:
    """Rank 0, before training or tracking touch ``directory``: take it for this job, for the rest
    of the process (an flock on the directory itself, released when the process ends, however it
    ends; no file is added). ``CheckpointError`` when another job holds it (naming its process),
    or, without ``resume``, when it already holds checkpoints of an earlier job. A directory this
    process holds already is left as it is."""
    root = Path(directory)
    key = root.absolute()
    if key in _claimed:
        return
    CheckpointDir(root, "").check_writable()
    handle = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = _lock_holder(root)
        os.close(handle)
        raise CheckpointError(
            f"{root}: in use by another job ({holder}); wait for it to end, or use another "
            "checkpoint directory"
        ) from None
    found = CheckpointDir(root, "").checkpoints()
    if found and not resume:
        os.close(handle)  # releases the lock
        raise CheckpointError(
            f"{root} holds checkpoints of an earlier job (newest: {found[-1][1].stem}); resume it "
            "(--resume, resume=True) or use another checkpoint directory"
        )
    _claimed[key] = handle


def _lock_holder(root: Path) -> str:
    """The process holding ``root``'s flock, as the kernel lists it (``/proc/locks``): its pid and
    command line; "another process" where that cannot be read (another host, another pid
    namespace)."""
    st = os.stat(root)
    try:
        entries = Path("/proc/locks").read_text().splitlines()
    except OSError:
        return "another process"
    for entry in entries:
        fields = entry.split()
        # e.g. 1: FLOCK ADVISORY WRITE <pid> <major>:<minor>:<inode> 0 EOF
        if len(fields) < 6 or fields[1] != "FLOCK":
            continue
        major, minor, inode = fields[5].split(":")
        if (int(major, 16), int(minor, 16), int(inode)) != (
            os.major(st.st_dev),
            os.minor(st.st_dev),
            st.st_ino,
        ):
            continue
        pid = fields[4]
        try:
            command = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            command = ""
        return f"pid {pid}: {command.strip()[:120]}" if command.strip() else f"pid {pid}"
    return "another process"


def _on_main(ctx: Context, path: str | os.PathLike, work: Callable[[], Any]) -> Any:
    """``work()``'s result on rank 0, broadcast; or the same ``CheckpointError`` on every rank,
    so no rank is left waiting in a collective while another has failed. The others wait in
    ``on_main``, so a load longer than half the hang timeout is not taken for a hang."""

    def guarded() -> Any:
        try:
            return work()
        except CheckpointError:
            raise
        except Exception as err:
            raise CheckpointError(
                f"{path}: cannot be loaded ({type(err).__name__}: {first_line(err)})"
            ) from None

    result = on_main(ctx, guarded, f"reading {path}")
    return ctx.broadcast_object(result if ctx.is_main else None, 0)


def _restore_newest(
    path: Path, extension: str, restore: Callable[[Path], None]
) -> CheckpointMeta | None:
    for payload, meta in _found(path, extension):
        if not payload.name.endswith(extension):
            raise CheckpointError(
                f"{payload}: a {meta.framework} checkpoint; this job needs a {extension} file"
            )
        try:
            restore(payload)
            return meta
        except CorruptCheckpointError as err:
            if _names_a_file(path, extension):
                raise
            warn_skipped(payload, f"{err}; kept as {_set_aside(payload).name}")
    log.warning(
        "hvdtrain: warning: no checkpoint to resume from in %s; training from scratch", path
    )
    return None


def _set_aside(payload: Path) -> Path:
    """Rename a corrupt checkpoint's files ``*.corrupt``: kept for inspection, but no longer seen
    by later saves (a newer step would refuse them) or pruning. Returns the payload's new path."""
    for path in (payload.with_suffix(".json"), payload):
        path.rename(path.with_name(path.name + ".corrupt"))
    return payload.with_name(payload.name + ".corrupt")


@main_process_only
def warn_skipped(path: Path, reason: str) -> None:
    log.warning(
        "hvdtrain: warning: skipping checkpoint %s: %s", path.name, reason.replace(f"{path}: ", "")
    )


def first_line(err: BaseException, limit: int = 300) -> str:
    """An error's message as one line: its first line, plus the next when the first is only a
    heading ("Error(s) in loading state_dict for Sequential:"), cut at ``limit`` characters."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()] or ["no detail"]
    line = f"{lines[0]} {lines[1]}" if lines[0].endswith(":") and len(lines) > 1 else lines[0]
    return line if len(line) <= limit else line[: limit - 3] + "..."


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
