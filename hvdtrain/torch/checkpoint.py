"""Rank-0 checkpoints that resume on any world size (layout and atomicity: core.checkpoint)."""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..core.checkpoint import (
    CheckpointDir,
    CheckpointError,
    CheckpointMeta,
    CorruptCheckpointError,
    first_line,
    load_on_main,
)
from ..core.on_main import on_main
from ._context import current
from .optimizer import BASE_LR, broadcast_scheduler, broadcast_state, rescale_lr

EXTENSION = ".pt"


def save_checkpoint(
    directory: str | os.PathLike,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: Any = None,
    *,
    step: int,
    epoch: int,
    config: dict | None = None,
    keep: int = 3,
    extra: dict | None = None,
) -> Path | None:
    """Write ``directory/step-<step>.pt`` atomically; call it on every rank: a sharded optimizer's
    state is gathered from all of them, then rank 0 writes while the others wait with it
    (``on_main``: a slow save is no hang). Returns the path on rank 0."""
    optimizer_state = optimizer.state_dict() if optimizer is not None else None
    return on_main(
        current(),
        lambda: _write(
            directory,
            model,
            optimizer,
            optimizer_state,
            scheduler,
            step=step,
            epoch=epoch,
            config=config,
            keep=keep,
            extra=extra,
        ),
        "saving a checkpoint",
        call="ht.save_checkpoint",
    )


def _write(
    directory: str | os.PathLike,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer | None,
    optimizer_state: dict | None,
    scheduler: Any,
    *,
    step: int,
    epoch: int,
    config: dict | None,
    keep: int,
    extra: dict | None,
) -> Path:
    payload = {"model": model.state_dict(), "rng": _rng_state()}
    if optimizer is not None:
        payload["optimizer"] = optimizer_state
    if scheduler is not None:
        payload["scheduler"] = scheduler.state_dict()
    meta = CheckpointMeta(
        step=step,
        epoch=epoch,
        world_size=current().size,
        framework="torch",
        payload="",
        base_lrs=[g.get(BASE_LR, g["lr"]) for g in optimizer.param_groups] if optimizer else [],
        config=config or {},
        extra=extra or {},
    )
    return CheckpointDir(directory, EXTENSION, keep).save(
        meta, lambda tmp: torch.save(payload, tmp)
    )


def load_checkpoint(
    path: str | os.PathLike,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: Any = None,
) -> CheckpointMeta | None:
    """Restore a checkpoint on every rank; ``path`` is a file or a directory (newest valid one).

    Rank 0 reads the file and broadcasts, so other hosts need not see rank 0's disk. The LR is
    re-scaled from the checkpoint's world size to this job's. Returns ``None`` when ``path`` is a
    directory without checkpoints, or not created yet (a fresh start); in a directory, a corrupt
    newest checkpoint is skipped with a warning for the previous one. Raises ``CheckpointError``
    on every rank if the file is unusable or does not fit ``model``/``optimizer``.
    """
    ctx = current()
    restored: dict[str, Any] = {}

    def restore(payload_path: Path) -> None:
        payload = _read(payload_path)
        try:
            model.load_state_dict(payload["model"])
            if optimizer is not None and "optimizer" in payload:
                optimizer.load_state_dict(payload["optimizer"])
                restored["optimizer"] = payload["optimizer"]
            if scheduler is not None and "scheduler" in payload:
                scheduler.load_state_dict(payload["scheduler"])
        except Exception as err:
            raise CheckpointError(
                f"{payload_path}: does not fit this model or optimizer "
                f"({type(err).__name__}: {first_line(err)})"
            ) from None
        _set_rng_state(payload["rng"])

    meta = load_on_main(ctx, path, EXTENSION, restore)
    if meta is None:
        return None
    broadcast_state(model)
    if optimizer is not None:
        # The file's optimizer state, not rank 0's: a sharded optimizer holds only its own
        # partition.
        optimizer_state = ctx.broadcast_object(restored.get("optimizer"), 0)
        if optimizer_state is not None and not ctx.is_main:
            optimizer.load_state_dict(optimizer_state)
    if scheduler is not None:
        broadcast_scheduler(scheduler)
    if optimizer is not None:
        rescale_lr(optimizer, scheduler)
    return meta


def _read(payload_path: Path) -> dict:
    try:
        return torch.load(payload_path, map_location="cpu", weights_only=True)
    except (
        Exception
    ) as err:  # torch raises RuntimeError, EOFError, UnpicklingError... for a bad file
        raise CorruptCheckpointError(
            f"{payload_path}: truncated or corrupt checkpoint ({type(err).__name__}: "
            f"{first_line(err)})"
        ) from None


def _rng_state() -> dict:
    np_name, np_key, np_pos, np_gauss, np_cached = np.random.get_state()
    state = {
        "python": random.getstate(),
        "torch": torch.get_rng_state(),
        "numpy": (np_name, torch.from_numpy(np_key.astype(np.int64)), np_pos, np_gauss, np_cached),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    torch.set_rng_state(state["torch"])
    name, key, pos, gauss, cached = state["numpy"]
    np.random.set_state((name, key.numpy().astype(np.uint32), pos, gauss, cached))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
