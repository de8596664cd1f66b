"""``wrap_optimizer``: a torch optimizer made data-parallel by Horovod, with hvdtrain's policy."""

from __future__ import annotations

import contextlib
import types
from collections.abc import Iterator
from typing import Any

import horovod.torch as hvd
import torch

from ..core import elastic, tripwire
from ..core.lr import lr_scale_factor, warmup_multiplier
from ..core.options import DistributedOptions, ReduceOp
from . import internals, zero
from ._context import current
from .collectives import broadcast_parameters, sleep_until_done
from .compression import COMPRESSORS
from .tripwire import after_step

_OP = {ReduceOp.AVERAGE: hvd.Average, ReduceOp.SUM: hvd.Sum, ReduceOp.ADASUM: hvd.Adasum}

# Keys hvdtrain keeps in each param group; they travel in ``state_dict`` so a checkpoint knows
# which world size its LR was scaled for and how far warmup got.
BASE_LR = "hvdtrain_base_lr"
LR_FACTOR = "hvdtrain_lr_factor"
STEP = "hvdtrain_step"


class _Policy:
    """hvdtrain's state on a Horovod optimizer, whose ``step``/``synchronize`` it replaces.

    Order per step: allreduce (once), average accumulated micro-batches, clip, apply with the
    warmup multiplier, then at a due step the tripwire (``core.tripwire``). The instance keeps its
    class, so schedulers and ``isinstance`` still work.
    """

    def __init__(
        self,
        opt: torch.optim.Optimizer,
        options: DistributedOptions,
        scale: float,
        max_grad_norm: float | None,
    ):
        self.options, self.scale, self.max_grad_norm = options, scale, max_grad_norm
        self.horovod_synchronize = opt.synchronize
        self.horovod_step = opt.step
        self.adasum = options.op is ReduceOp.ADASUM and hvd.size() > 1
        self.reduced = (
            False  # the gradients were allreduced since the last step (the tripwire's proof)
        )
        self.tripwire_every = tripwire.interval()

    def clip(self, opt: torch.optim.Optimizer) -> None:
        torch.nn.utils.clip_grad_norm_(list(_params_with_grad(opt)), self.max_grad_norm)

    def parameters(self, opt: torch.optim.Optimizer) -> list[torch.Tensor]:
        """The model's parameters this optimizer updates
        (what the tripwire compares across ranks)."""
        return [p for group in opt.param_groups for p in group["params"]]

    def apply(self, opt: torch.optim.Optimizer, closure=None):
        if self.adasum:
            self.reduced = True  # Adasum reduces the updates inside its step
            return self.horovod_step(closure)
        with opt.skip_synchronize():
            return self.horovod_step(closure)


# Plain functions bound to the optimizer instance: LR schedulers re-bind ``step.__func__`` to it.
def _synchronize(opt: torch.optim.Optimizer) -> None:
    policy = opt.hvdtrain_policy
    _wait_without_spinning(opt)
    policy.horovod_synchronize()
    policy.reduced = True
    if policy.options.accumulation_steps > 1:
        # Horovod sums the micro-batches' gradients; average them so k steps of batch B
        # update like one step of batch k*B.
        for p in _params_with_grad(opt):
            p.grad.div_(policy.options.accumulation_steps)


def _step(opt: torch.optim.Optimizer, closure=None):
    policy = opt.hvdtrain_policy
    if not policy.adasum and internals.should_synchronize(opt):  # False inside skip_synchronize()
        opt.synchronize()
    if policy.max_grad_norm is not None:
        policy.clip(opt)
    multiplier = warmup_multiplier(
        opt.param_groups[0].get(STEP, 0), policy.options.warmup_steps, policy.scale
    )
    with _scaled_lr(opt, multiplier):
        result = policy.apply(opt, closure)
    for group in opt.param_groups:
        group[STEP] = group.get(STEP, 0) + 1
    reduced, policy.reduced = policy.reduced, False
    after_step(
        opt, policy.parameters(opt), opt.param_groups[0][STEP], reduced, policy.tripwire_every
    )
    return result


def _wait_without_spinning(opt: torch.optim.Optimizer) -> None:
    """Sleep until the pending allreduces are done, before Horovod's own (spinning) wait."""
    for handle in internals.pending_handles(opt):
        if handle is not None and not callable(handle):
            sleep_until_done(handle)


def _params_with_grad(opt: torch.optim.Optimizer) -> Iterator[torch.Tensor]:
    return (p for g in opt.param_groups for p in g["params"] if p.grad is not None)


@contextlib.contextmanager
def _scaled_lr(opt: torch.optim.Optimizer, multiplier: float):
    if multiplier == 1.0:
        yield
        return
    saved = [g["lr"] for g in opt.param_groups]
    for group in opt.param_groups:
        group["lr"] = group["lr"] * multiplier
    try:
        yield
    finally:
        for group, lr in zip(opt.param_groups, saved):
            group["lr"] = lr


def wrap_optimizer(
    optimizer: torch.optim.Optimizer,
    model: torch.nn.Module,
    lr_scaling: str = "linear",
    warmup_steps: int = 0,
    compression: str = "none",
    op: str = "average",
    accumulation_steps: int = 1,
    max_grad_norm: float | None = None,
    shard_optimizer_state: bool = False,
    shard_gradients: bool = False,
) -> torch.optim.Optimizer:
    """Return a Horovod ``DistributedOptimizer`` over ``optimizer`` with every rank in step.

    Scales each param group's LR for the world size, broadcasts rank 0's model parameters,
    buffers and optimizer state, and allreduces gradients once per ``accumulation_steps``
    backward passes. Create LR schedulers on the returned optimizer.

    ``shard_optimizer_state=True`` (ZeRO stage 1, ``zero.py``): gradients are reduce-scattered
    instead, each rank keeps optimizer state for and updates only its 1/N of the parameters,
    and the updated parameters are all-gathered; ``state_dict()`` then becomes a collective.
    ``shard_gradients=True`` (stage 2, with stage 1) also keeps only 1/N of the gradients.
    """
    options = DistributedOptions(
        lr_scaling=lr_scaling,
        warmup_steps=warmup_steps,
        compression=compression,
        op=op,
        accumulation_steps=accumulation_steps,
        shard_optimizer_state=shard_optimizer_state,
        shard_gradients=shard_gradients,
    )
    if max_grad_norm is not None and max_grad_norm <= 0:
        raise ValueError(f"max_grad_norm must be > 0, got {max_grad_norm}")
    ctx = current()
    scale = lr_scale_factor(options, ctx.size, ctx.local_size, ctx.on_gpu)
    for group in optimizer.param_groups:
        group.setdefault(BASE_LR, group["lr"])
        group[LR_FACTOR] = scale
        group["lr"] = group[BASE_LR] * scale
        if "initial_lr" in group:
            group["initial_lr"] = group[BASE_LR] * scale

    if options.shard_optimizer_state:
        distributed = zero.shard(optimizer, model, options, scale, max_grad_norm)
    else:
        distributed = hvd.DistributedOptimizer(
            optimizer,
            named_parameters=model.named_parameters(),
            compression=COMPRESSORS[options.compression],
            backward_passes_per_step=options.accumulation_steps,
            op=_OP[options.op],
        )
        if optimizer.state:
            distributed.load_state_dict(optimizer.state_dict())
        # elastic: the state's sync broadcasts; a joining worker must not call collectives here
        if not elastic.enabled():
            broadcast_state(model, distributed)
        distributed.hvdtrain_policy = _Policy(distributed, options, scale, max_grad_norm)
        distributed.synchronize = types.MethodType(_synchronize, distributed)
    distributed.hvdtrain_options = options
    distributed.step = types.MethodType(_step, distributed)
    return distributed


def broadcast_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer | None = None) -> None:
    """Make every rank hold rank 0's parameters, buffers and optimizer state.

    The optimizer state goes as one object rather than through
    ``hvd.broadcast_optimizer_state``: that one initialises empty state with a zero-gradient
    step, which applies weight decay and advances Adam's step count on a fresh optimizer.
    A sharded optimizer's state has one owner per partition: nothing of it to broadcast.
    """
    broadcast_parameters(model)
    if optimizer is not None and not zero.is_sharded(optimizer):
        ctx = current()
        state = ctx.broadcast_object(optimizer.state_dict() if ctx.is_main else None, 0)
        if not ctx.is_main:
            optimizer.load_state_dict(state)


def broadcast_scheduler(scheduler: Any) -> None:
    """Every rank takes rank 0's LR scheduler state."""
    ctx = current()
    state = ctx.broadcast_object(scheduler.state_dict() if ctx.is_main else None, 0)
    if not ctx.is_main:
        scheduler.load_state_dict(state)


def rescale_lr(optimizer: torch.optim.Optimizer, scheduler: Any = None) -> None:
    """Re-scale LRs set for another world size (a checkpoint's, or before an
    elastic change) to this one."""
    options = getattr(optimizer, "hvdtrain_options", None)
    if options is None:
        return
    ctx = current()
    new = lr_scale_factor(options, ctx.size, ctx.local_size, ctx.on_gpu)
    ratios = []
    for group in optimizer.param_groups:
        ratio = new / group.get(LR_FACTOR, new)
        ratios.append(ratio)
        group["lr"] *= ratio
        if "initial_lr" in group:
            group["initial_lr"] *= ratio
        group[LR_FACTOR] = new
    optimizer.hvdtrain_policy.scale = new  # warmup ramps to the new scaled LR
    if scheduler is not None and hasattr(scheduler, "base_lrs"):
        scheduler.base_lrs = [lr * r for lr, r in zip(scheduler.base_lrs, ratios)]
        internals.set_last_lr(scheduler, (g["lr"] for g in optimizer.param_groups))


def current_lr(optimizer: torch.optim.Optimizer) -> float:
    """The LR the next step applies to the first param group, warmup included."""
    group = optimizer.param_groups[0]
    scale = group.get(LR_FACTOR, 1.0)
    options = getattr(optimizer, "hvdtrain_options", None)
    warmup = options.warmup_steps if options else 0
    return group["lr"] * warmup_multiplier(group.get(STEP, 0), warmup, scale)
