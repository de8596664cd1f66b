"""Shared by the bad-input workers:
the flags, and each rank's record of the error that stopped it."""

from __future__ import annotations

import contextlib
import hashlib
import resource
from collections.abc import Iterator
from pathlib import Path

from tests.workers.common import parse_args, report


def args():
    """``--mode``, ``--ckpt``, ``--epochs``, ``--width`` (model size: another width is another
    model) and ``--fsize`` (rank 0 may write no file larger than this many bytes: a full disk)."""
    return parse_args(mode=str, ckpt=str, epochs=int, width=int, fsize=int)


@contextlib.contextmanager
def recorded(out, rank: int) -> Iterator[dict]:
    """Write this rank's report (the values put in the yielded dict, and the error that stopped
    it if any) before the error propagates: the test sees that every rank stopped by itself."""
    values: dict = {}
    try:
        yield values
    except Exception as err:
        report(out, rank, error=str(err), error_type=type(err).__name__, **values)
        raise
    report(out, rank, error=None, **values)


def snapshot(directory) -> dict[str, str]:
    """File name -> content hash of a directory's files."""
    return {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(Path(directory).iterdir())
    }


def limit_file_size(rank: int, size: int | None) -> None:
    """RLIMIT_FSIZE on rank 0: a larger write fails with EFBIG (Python ignores SIGXFSZ), as on a
    full disk, without needing one."""
    if size and rank == 0:
        resource.setrlimit(resource.RLIMIT_FSIZE, (size, size))
