"""Waiting for Horovod's asynchronous collectives without stealing the CPU from them."""

from __future__ import annotations

import time
from typing import Any

import horovod.torch as hvd
import torch

POLL_INTERVAL_S = 1e-4


def wait(handle: int) -> Any:
    """The result of an async Horovod op, slept for rather than spun for (``sleep_until_done``)."""
    sleep_until_done(handle)
    return hvd.synchronize(handle)


def sleep_until_done(handle: int) -> None:
    """Return once the async op ``handle`` has finished, sleeping between polls.

    Horovod's own wait loops on ``yield``; with one core per rank that loop takes CPU from the
    background thread doing the reduction. ``hvdtrain bench``: 64 MB allreduce bus bandwidth
    0.24 GB/s spinning vs 0.72 GB/s sleeping (torch.distributed: 0.69), BENCHMARKS.md.
    """
    while not hvd.poll(handle):
        time.sleep(POLL_INTERVAL_S)


def on_the_wire(tensor: torch.Tensor) -> torch.Tensor:
    """``tensor`` as Horovod can move it: bfloat16 as int16, the same bits (Horovod 0.28's torch
    ops have no bfloat16). Only for moving data (broadcast, all-to-all, all-gather), never sums."""
    return tensor.view(torch.int16) if tensor.dtype == torch.bfloat16 else tensor


def broadcast_parameters(model: torch.nn.Module) -> None:
    """Rank 0's parameters and buffers on every rank, in place (bfloat16 ones too). Horovod writes
    behind autograd's back, so each tensor's version is advanced as an in-place op would: ZeRO's
    16-bit master shards see that the parameters changed."""
    state = model.state_dict()
    hvd.broadcast_parameters({name: on_the_wire(v) for name, v in state.items()}, root_rank=0)
    for value in state.values():
        torch.autograd.graph.increment_version(value)
