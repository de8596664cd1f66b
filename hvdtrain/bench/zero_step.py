"""Optimizer sharding (ZeRO) against the unsharded optimizer, with AdamW in float32, on a ~50M
GPT and on issue 27's MLP (8 x Linear(2048, 2048)): per-rank state bytes, memory and step time,
in PyTorch (``keras_zero_step`` is its Keras twin; ``zero_common`` holds what both share).

Modes (``MODES``): ``unsharded``; ``sharded``, ZeRO stage 1 (``shard_optimizer_state=True``);
``sharded-grads``, stage 2 (also ``shard_gradients=True``).

* Step time: every mode, each on its own copy of one model and one fixed batch, takes turns window
  by window in one process (``timing.windows``), a model at a time; the ratio mode / unsharded is
  taken per window, between windows that ran back to back, so its spread over windows shows the
  noise.
* Memory: peak RSS is a high-water mark that never goes down, so it needs a process of its own
  per model and mode: ``memory`` runs in a separate launch (``hvdtrain bench`` starts one per
  model, mode and world size). It samples the RSS after each phase of every step (``PHASES``).
  Both read the kernel's RSS counters, which lag by a few pages: a sample can exceed the peak
  read after it by that much.
"""

from __future__ import annotations

import copy

import horovod.torch as hvd
import torch
import torch.distributed as dist
from torch import nn
from torch.nn import functional as F

import hvdtrain.torch as ht
from hvdtrain.torch import zero

from ..models.torch_gpt import GPT, next_byte_loss
from . import shapes
from .timing import Plan, timed, windows
from .torch_step import train_step
from .zero_common import MEMORY_STEPS, MODELS, modes, peak_rss, rss

MODES = modes("torch")
PHASES = ("forward", "backward", "step")  # RSS is read after each


def _build(name: str, quick: bool):
    """The model, its fixed batch, the loss and the batch per rank."""
    generator = torch.Generator().manual_seed(0)
    if name == "gpt":
        shape = shapes.zero_gpt_shape(quick)
        model = GPT(shape.block, shape.d_model, shape.layers, shape.heads)
        tokens = torch.randint(0, 256, (shape.batch, shape.block + 1), generator=generator)
        return model, (tokens[:, :-1], tokens[:, 1:]), next_byte_loss, shape.batch
    shape = shapes.zero_mlp_shape(quick)
    layers = [nn.Linear(shape.width, shape.width) for _ in range(shape.layers)]
    model = nn.Sequential(*[m for layer in layers for m in (layer, nn.ReLU())][:-1])
    inputs, targets = torch.randn(2, shape.batch, shape.width, generator=generator)
    return model, (inputs, targets), F.mse_loss, shape.batch


def _wrapped(model: torch.nn.Module, mode: str) -> torch.optim.Optimizer:
    return ht.wrap_optimizer(torch.optim.AdamW(model.parameters(), lr=1e-4), model, **MODES[mode])


def run(quick: bool, window_count: int) -> dict:
    """Per model: every rank's state bytes and per-window step seconds of every mode,
    all-gathered."""
    plan = Plan(warmup=1, windows=window_count, iters=1 if quick else 2)
    models, mine = {}, {}
    for name in MODELS:
        model, batch, loss_fn, batch_size = _build(name, quick)
        contenders, state = {}, {}
        for mode in MODES:
            copied = copy.deepcopy(model)
            optimizer = _wrapped(copied, mode)
            step = train_step(copied, optimizer, loss_fn, batch)
            step()  # AdamW makes its state on the first step
            state[mode] = zero.state_bytes(optimizer)
            contenders[mode] = timed(step)
        mine[name] = {"state_bytes": state, "windows": windows(contenders, plan, dist.barrier)}
        models[name] = {
            "parameters": sum(p.numel() for p in model.parameters()),
            "batch_per_rank": batch_size,
        }
    per_rank = hvd.allgather_object(mine, name="bench.zero.results")
    for name in MODELS:
        models[name]["per_rank"] = [rank[name] for rank in per_rank]
    return {"modes": list(MODES), "models": models}


def memory(quick: bool, name: str, mode: str) -> dict:
    """One model and optimizer alone in this process, for every rank: the RSS before the optimizer
    exists and after each phase of ``MEMORY_STEPS`` steps, the peak RSS, the state bytes and the
    gradient bytes held between backward and step."""
    model, (inputs, targets), loss_fn, _ = _build(name, quick)
    before = rss()
    optimizer = _wrapped(model, mode)
    samples, grad_bytes = [], 0
    for _ in range(MEMORY_STEPS):
        optimizer.zero_grad()
        loss = loss_fn(model(inputs), targets)
        samples.append(rss())
        loss.backward()
        samples.append(rss())
        grad_bytes = max(grad_bytes, _grad_bytes(model, optimizer))
        optimizer.step()
        samples.append(rss())
    mine = {
        "rss_before_bytes": before,
        "rss_phase_bytes": samples,
        "peak_rss_bytes": peak_rss(),
        "state_bytes": zero.state_bytes(optimizer),
        "grad_bytes": grad_bytes,
    }
    return {
        "framework": "torch",
        "model": name,
        "mode": mode,
        "parameters": sum(p.numel() for p in model.parameters()),
        "steps": MEMORY_STEPS,
        "phases": list(PHASES),
        "per_rank": hvd.allgather_object(mine, name="bench.zero.memory"),
    }


def _grad_bytes(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> int:
    """Bytes of the storages behind the gradients held now, each storage once: the model's
    parameters' and the optimizer's param groups' (a sharded optimizer's shards)."""
    params = [*model.parameters(), *(p for g in optimizer.param_groups for p in g["params"])]
    storages = {
        p.grad.untyped_storage().data_ptr(): p.grad.untyped_storage().nbytes()
        for p in params
        if p.grad is not None
    }
    return sum(storages.values())
