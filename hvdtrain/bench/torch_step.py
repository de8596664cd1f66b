"""One training step of the same model on the same batch: (a) hvdtrain.torch, (b) a hand-written
raw horovod.torch loop, (c) torch DistributedDataParallel on the same Gloo ranks (NCCL on GPU),
and (d) plain PyTorch, no Horovod at all: at np=1 what hvdtrain costs a single-GPU user, at np=N
each rank's compute alone while the others compute too (on hosts sharing cores, the compute time
the link bound is set against). With ``compression="fp16"`` all three compress their gradients:
hvdtrain's option, Horovod's ``Compression.fp16`` and DDP's ``fp16_compress_hook``.

Each loop trains its own copy of one initial model; data loading is left out (a fixed batch).
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import horovod.torch as hvd
import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.algorithms.ddp_comm_hooks import default_hooks
from torch.nn import functional as F
from torch.nn.parallel import DistributedDataParallel

import hvdtrain.torch as ht

from ..models.torch_gpt import GPT, next_byte_loss
from . import shapes
from .timing import Plan, timed, windows

HVDTRAIN, RAW, DDP, PLAIN = "hvdtrain", "raw horovod", "ddp", "plain torch"


def _mlp(quick: bool):
    shape = shapes.mlp_shape(quick)
    model = nn.Sequential(
        nn.Linear(shape.inputs, shape.hidden),
        nn.ReLU(),
        nn.Linear(shape.hidden, shape.hidden),
        nn.ReLU(),
        nn.Linear(shape.hidden, shape.classes),
    )
    batch = (
        torch.randn(shape.batch, shape.inputs),
        torch.randint(0, shape.classes, (shape.batch,)),
    )
    return (
        model,
        batch,
        F.cross_entropy,
        lambda params: torch.optim.SGD(params, lr=0.01, momentum=0.9),
        shape.batch,
    )


def _gpt(quick: bool):
    shape = shapes.gpt_shape(quick)
    model = GPT(shape.block, shape.d_model, shape.layers, shape.heads)
    tokens = torch.randint(0, 256, (shape.batch, shape.block + 1))
    batch = (tokens[:, :-1], tokens[:, 1:])
    return (
        model,
        batch,
        next_byte_loss,
        lambda params: torch.optim.AdamW(params, lr=1e-3),
        shape.batch,
    )


MODELS = {"mlp": _mlp, "gpt": _gpt}


def _on(device: str, model: nn.Module, batch):
    return model.to(device), tuple(t.to(device) for t in batch)


def train_step(
    model: nn.Module, optimizer: torch.optim.Optimizer, loss_fn: Callable, batch
) -> Callable[[], None]:
    inputs, targets = batch

    def step():
        optimizer.zero_grad()
        loss_fn(model(inputs), targets).backward()
        optimizer.step()

    return step


def loops(
    model: nn.Module, batch, loss_fn: Callable, make_optimizer: Callable, compression: str = "none"
) -> dict[str, Callable[[], None]]:
    """The three data-parallel loops and the plain one, each on its own copy of ``model`` (on
    ``batch``'s device), LR scaled alike."""
    adapter_model, raw_model, ddp_model, plain_model = (copy.deepcopy(model) for _ in range(4))
    adapter = ht.wrap_optimizer(
        make_optimizer(adapter_model.parameters()), adapter_model, compression=compression
    )

    raw = make_optimizer(raw_model.parameters())
    for group in raw.param_groups:
        group["lr"] *= hvd.size()
    raw = hvd.DistributedOptimizer(
        raw,
        named_parameters=raw_model.named_parameters(),
        compression=hvd.Compression.fp16 if compression == "fp16" else hvd.Compression.none,
    )
    hvd.broadcast_parameters(raw_model.state_dict(), root_rank=0)

    device = batch[0].device
    ddp_model = DistributedDataParallel(
        ddp_model, device_ids=[device.index] if device.type == "cuda" else None
    )
    if compression == "fp16":
        ddp_model.register_comm_hook(None, default_hooks.fp16_compress_hook)
    ddp = make_optimizer(ddp_model.parameters())
    for group in ddp.param_groups:
        group["lr"] *= dist.get_world_size()
    return {
        HVDTRAIN: train_step(adapter_model, adapter, loss_fn, batch),
        RAW: train_step(raw_model, raw, loss_fn, batch),
        DDP: train_step(ddp_model, ddp, loss_fn, batch),
        PLAIN: train_step(plain_model, make_optimizer(plain_model.parameters()), loss_fn, batch),
    }


def run(
    quick: bool, window_count: int, device: str = "cpu", compression: str = "none", iters: int = 10
) -> dict:
    """Every rank's step seconds in each window per model and loop, all-gathered, with each model's
    gradient bytes (float32) for the link bound."""
    plan = Plan(warmup=3 if iters > 3 else 1, windows=window_count, iters=3 if quick else iters)
    sync = torch.cuda.synchronize if device != "cpu" else None
    mine, batches, gradient_bytes = {}, {}, {}
    for name, build in MODELS.items():
        model, batch, loss_fn, make_optimizer, batches[name] = build(quick)
        model, batch = _on(device, model, batch)
        gradient_bytes[name] = 4 * sum(p.numel() for p in model.parameters() if p.requires_grad)
        contenders = {
            loop: timed(step, sync)
            for loop, step in loops(model, batch, loss_fn, make_optimizer, compression).items()
        }
        mine[name] = windows(contenders, plan, dist.barrier)
    return {
        "per_rank": hvd.allgather_object(mine, name="bench.torch_step.results"),
        "batch_per_rank": batches,
        "gradient_bytes": gradient_bytes,
        "compression": compression,
    }
