"""One training step of the same model on the same batch: (a) hvdtrain.torch, (b) a hand-written
raw horovod.torch loop, (c) torch DistributedDataParallel on the same Gloo ranks (NCCL on GPU),
and at np=1 (d) plain PyTorch, no Horovod at all: what hvdtrain costs a single-GPU user.

Each loop trains its own copy of one initial model; data loading is left out (a fixed batch).
"""
from __future__ import annotations

import copy
from typing import Callable

import horovod.torch as hvd
import torch
import torch.distributed as dist
from torch import nn
from torch.nn import functional as F
from torch.nn.parallel import DistributedDataParallel

import hvdtrain.torch as ht

from . import models
from .timing import Plan, compete, timed

HVDTRAIN, RAW, DDP, PLAIN = "hvdtrain", "raw horovod", "ddp", "plain torch"


def _mlp(quick: bool):
    shape = models.mlp_shape(quick)
    model = nn.Sequential(nn.Linear(shape.inputs, shape.hidden), nn.ReLU(), nn.Linear(shape.hidden, shape.hidden),
                          nn.ReLU(), nn.Linear(shape.hidden, shape.classes))
    batch = (torch.randn(shape.batch, shape.inputs), torch.randint(0, shape.classes, (shape.batch,)))
    return model, batch, F.cross_entropy, lambda params: torch.optim.SGD(params, lr=0.01, momentum=0.9), shape.batch


def _gpt(quick: bool):
    example = models.gpt_example("torch")
    if example is None:
        return None
    shape = models.gpt_shape(quick)
    model = example.GPT(shape.block, shape.d_model, shape.layers, shape.heads)
    tokens = torch.randint(0, 256, (shape.batch, shape.block + 1))
    batch = (tokens[:, :-1], tokens[:, 1:])
    return model, batch, example.next_byte_loss, lambda params: torch.optim.AdamW(params, lr=1e-3), shape.batch


MODELS = {"mlp": _mlp, "gpt": _gpt}


def _on(device: str, model: nn.Module, batch):
    return model.to(device), tuple(t.to(device) for t in batch)


def train_step(model: nn.Module, optimizer: torch.optim.Optimizer, loss_fn: Callable, batch) -> Callable[[], None]:
    inputs, targets = batch

    def step():
        optimizer.zero_grad()
        loss_fn(model(inputs), targets).backward()
        optimizer.step()

    return step


def loops(model: nn.Module, batch, loss_fn: Callable, make_optimizer: Callable) -> dict[str, Callable[[], None]]:
    """The three data-parallel loops, each on its own copy of ``model`` (on ``batch``'s device), LR
    scaled alike; at np=1 also the plain loop."""
    adapter_model, raw_model, ddp_model, plain_model = (copy.deepcopy(model) for _ in range(4))
    adapter = ht.wrap_optimizer(make_optimizer(adapter_model.parameters()), adapter_model)

    raw = make_optimizer(raw_model.parameters())
    for group in raw.param_groups:
        group["lr"] *= hvd.size()
    raw = hvd.DistributedOptimizer(raw, named_parameters=raw_model.named_parameters())
    hvd.broadcast_parameters(raw_model.state_dict(), root_rank=0)

    device = batch[0].device
    ddp_model = DistributedDataParallel(ddp_model, device_ids=[device.index] if device.type == "cuda" else None)
    ddp = make_optimizer(ddp_model.parameters())
    for group in ddp.param_groups:
        group["lr"] *= dist.get_world_size()
    found = {HVDTRAIN: train_step(adapter_model, adapter, loss_fn, batch),
             RAW: train_step(raw_model, raw, loss_fn, batch), DDP: train_step(ddp_model, ddp, loss_fn, batch)}
    if hvd.size() == 1:
        found[PLAIN] = train_step(plain_model, make_optimizer(plain_model.parameters()), loss_fn, batch)
    return found


def run(quick: bool, windows: int, device: str = "cpu") -> dict:
    """Every rank's median step seconds per model and loop, all-gathered."""
    plan = Plan(warmup=3, windows=windows, iters=3 if quick else 10)
    sync = torch.cuda.synchronize if device != "cpu" else None
    mine, batches, skipped = {}, {}, []
    for name, build in MODELS.items():
        built = build(quick)
        if built is None:
            skipped.append(name)
            continue
        model, batch, loss_fn, make_optimizer, batches[name] = built
        model, batch = _on(device, model, batch)
        contenders = {loop: timed(step, sync) for loop, step in loops(model, batch, loss_fn, make_optimizer).items()}
        mine[name] = compete(contenders, plan, dist.barrier)
    return {"per_rank": hvd.allgather_object(mine, name="bench.torch_step.results"), "batch_per_rank": batches,
            "skipped": skipped}
