"""A pretrained-model directory on every worker, as a hub download would leave it.

Users load Hugging Face and KerasHub models with ``from_pretrained(DIR)`` / ``from_preset(DIR)``.
Nothing may be downloaded here, so the examples' first step writes such a directory from a small
config (``save_pretrained``), standing in for the download; the loading that follows is the code
users run on real checkpoints. Rank 0 writes it; every other rank gets rank 0's files (other
hosts need not see rank 0's disk), written atomically, so a directory is never seen half made.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from .checkpoint import atomic_write
from .context import Context
from .guards import UserError


def prepare(
    ctx: Context, directory: str | os.PathLike, write: Callable[[Path], None], marker: str
) -> Path:
    """``directory`` holding a model on every rank: if ``directory/marker`` is missing on rank 0,
    ``write(directory)`` makes it there first. A collective: every rank must call it."""
    directory = Path(directory)
    files, error = None, None
    if ctx.is_main:
        try:
            if not (directory / marker).is_file():
                directory.mkdir(parents=True, exist_ok=True)
                write(directory)
            files = {
                str(p.relative_to(directory)): p.read_bytes()
                for p in sorted(directory.rglob("*"))
                if p.is_file()
            }
        except OSError as err:
            error = f"{directory}: cannot write the model directory ({type(err).__name__}: {err})"
    files, error = ctx.broadcast_object((files, error), 0)
    if error:
        raise UserError(error, collective=True)
    if not ctx.is_main:
        for name, data in files.items():
            target = directory / name
            if not (target.is_file() and target.read_bytes() == data):
                atomic_write(target, lambda tmp, data=data: Path(tmp).write_bytes(data))
    return directory
