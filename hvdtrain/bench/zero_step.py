"""Optimizer-state sharding (ZeRO-1, ``shard_optimizer_state=True``) against the unsharded optimizer
on a ~50M-parameter GPT with AdamW: per-rank optimizer-state bytes, peak RSS and step time.

* Step time: both optimizers, each on its own copy of one model and one fixed batch, take turns
  window by window in one process (``timing.windows``); the ratio sharded / unsharded is taken per
  window, between windows that ran back to back, so its spread over windows shows the noise.
* Memory: the state bytes are read off ``optimizer.state``. Peak RSS is a high-water mark that
  never goes down, so it needs a process of its own per optimizer: ``memory`` runs in a separate
  launch (``hvdtrain bench`` starts one per optimizer and world size).
"""

from __future__ import annotations

import copy
import resource

import horovod.torch as hvd
import torch
import torch.distributed as dist

import hvdtrain.torch as ht
from hvdtrain.torch import zero

from ..models.torch_gpt import GPT, next_byte_loss
from . import shapes
from .timing import Plan, timed, windows
from .torch_step import train_step

MODES = ("unsharded", "sharded")
MEMORY_STEPS = 3


def _build(quick: bool):
    shape = shapes.zero_gpt_shape(quick)
    model = GPT(shape.block, shape.d_model, shape.layers, shape.heads)
    tokens = torch.randint(
        0, 256, (shape.batch, shape.block + 1), generator=torch.Generator().manual_seed(0)
    )
    return model, (tokens[:, :-1], tokens[:, 1:]), next_byte_loss, shape.batch


def _wrapped(model: torch.nn.Module, mode: str) -> torch.optim.Optimizer:
    return ht.wrap_optimizer(
        torch.optim.AdamW(model.parameters(), lr=1e-4),
        model,
        shard_optimizer_state=mode == "sharded",
    )


def run(quick: bool, window_count: int) -> dict:
    """Every rank's state bytes and per-window step seconds of both optimizers, all-gathered."""
    model, batch, loss_fn, batch_size = _build(quick)
    contenders, state = {}, {}
    for mode in MODES:
        copied = copy.deepcopy(model)
        optimizer = _wrapped(copied, mode)
        step = train_step(copied, optimizer, loss_fn, batch)
        step()  # AdamW makes its state on the first step
        state[mode] = zero.state_bytes(optimizer)
        contenders[mode] = timed(step)
    plan = Plan(warmup=1, windows=window_count, iters=1 if quick else 2)
    mine = {"state_bytes": state, "windows": windows(contenders, plan, dist.barrier)}
    return {
        "parameters": sum(p.numel() for p in model.parameters()),
        "batch_per_rank": batch_size,
        "per_rank": hvd.allgather_object(mine, name="bench.zero.results"),
    }


def memory(quick: bool, mode: str) -> dict:
    """One optimizer alone in this process: RSS before the optimizer exists, peak RSS after a few
    steps, and its state bytes, for every rank."""
    model, batch, loss_fn, batch_size = _build(quick)
    before = _peak_rss()
    optimizer = _wrapped(model, mode)
    step = train_step(model, optimizer, loss_fn, batch)
    for _ in range(MEMORY_STEPS):
        step()
    mine = {
        "rss_before_bytes": before,
        "peak_rss_bytes": _peak_rss(),
        "state_bytes": zero.state_bytes(optimizer),
    }
    return {
        "mode": mode,
        "parameters": sum(p.numel() for p in model.parameters()),
        "per_rank": hvd.allgather_object(mine, name="bench.zero.memory"),
    }


def _peak_rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB
