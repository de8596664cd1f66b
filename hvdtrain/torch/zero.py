"""ZeRO stage 1 on Horovod: ``wrap_optimizer(..., shard_optimizer_state=True)``.

With Adam every rank of a plain data-parallel job holds two extra copies of every parameter.
Here each rank keeps optimizer state for, and updates, only its partition of the parameters
(``core.partition``: flattened buckets cut into N equal shards). ``optimizer._step`` drives a step
in the same order as the unsharded path, with this module's policy:

1. ``synchronize``: each bucket's gradients, flattened and zero-padded, are reduce-scattered
   (averaged or summed, fp16-compressed on request) into this rank's shard gradients, then divided
   by ``accumulation_steps``;
2. ``clip``: the global gradient norm, from every rank's shard (one allreduce of a scalar);
3. ``apply``: the user's optimizer, whose param groups hold only this rank's shards, steps them;
   the updated shards are all-gathered into every rank's parameters.

The shards are copies of slices of the parameters, read from the parameters before each update:
the parameters stay the truth, whatever loads or broadcasts them. ``state_dict()`` is a collective
that gathers the full state in the unsharded format, so a checkpoint loads sharded or unsharded on
any world size; ``load_state_dict`` takes that format and keeps this rank's slices.
"""

from __future__ import annotations

import contextlib
import copy
import math
from collections import defaultdict
from collections.abc import Iterable
from typing import Any

import horovod.torch as hvd
import torch

from ..core import elastic, tripwire
from ..core.guards import UnsupportedError
from ..core.options import Compression, DistributedOptions, ReduceOp
from ..core.partition import ELASTIC_REFUSAL, Bucket, ParamSpec, PartitionPlan, plan
from . import internals
from ._context import current
from .collectives import wait

_COMPRESSION = {Compression.NONE: hvd.Compression.none, Compression.FP16: hvd.Compression.fp16}
_OP = {ReduceOp.AVERAGE: hvd.Average, ReduceOp.SUM: hvd.Sum}


class _Layout:
    """Where a sharded optimizer's state lives: the plan, the original parameters (state_dict
    numbering) and this rank's shard of each bucket."""

    def __init__(
        self, groups: list[list[torch.Tensor]], rank: int, size: int, options: DistributedOptions
    ):
        self.params = [p for group in groups for p in group]
        self.group_sizes = [len(group) for group in groups]
        self.rank, self.size, self.options = rank, size, options
        specs, index = [], 0
        for group in groups:
            specs.append(
                [
                    ParamSpec(index + i, p.numel(), p.element_size(), (p.dtype, p.device))
                    for i, p in enumerate(group)
                    if p.requires_grad
                ]
            )
            index += len(group)
        self.plan: PartitionPlan = plan(specs, size)
        self.shards = [
            torch.nn.Parameter(
                torch.zeros(b.shard_numel, dtype=self._first(b).dtype, device=self._first(b).device)
            )
            for b in self.plan.buckets
        ]

    def _first(self, bucket: Bucket) -> torch.Tensor:
        return self.params[bucket.slots[0].index]

    def take_grads(self, bucket: Bucket) -> torch.Tensor:
        """The bucket's gradients in one zero-padded buffer (zeros for a parameter without one, as
        Horovod's unsharded optimizer allreduces). The parameters' own ``grad`` are released: the
        averaged gradient will live in the shards, and the memory is the buffer's."""
        first = self._first(bucket)
        flat = torch.zeros(bucket.padded_numel, dtype=first.dtype, device=first.device)
        for slot in bucket.slots:
            param = self.params[slot.index]
            if param.grad is not None:
                grad = param.grad.to_dense() if param.grad.is_sparse else param.grad
                flat[slot.offset : slot.offset + slot.numel].copy_(grad.reshape(-1))
                param.grad = None
        return flat

    @torch.no_grad()
    def read_params(self) -> None:
        """Copy this rank's slices of the parameters into its shards."""
        for bucket, shard in zip(self.plan.buckets, self.shards):
            for piece in bucket.pieces(self.rank):
                length = piece.stop - piece.start
                shard[piece.shard_offset : piece.shard_offset + length].copy_(
                    self.params[piece.index].reshape(-1)[piece.start : piece.stop]
                )

    @torch.no_grad()
    def write_params(self, number: int, gathered: torch.Tensor) -> None:
        """Copy a bucket's all-gathered flat buffer into its parameters."""
        for slot in self.plan.buckets[number].slots:
            param = self.params[slot.index]
            param.copy_(gathered[slot.offset : slot.offset + slot.numel].view(param.shape))


class _ShardedOptimizer:
    """Methods of a sharded optimizer, placed before the user's optimizer class: its param groups
    hold this rank's shards, so the user's ``step`` updates them and keeps state only for them."""

    _zero: _Layout

    def synchronize(self) -> None:
        """Reduce-scatter the gradients into this rank's shards' ``grad``, a bucket at a time."""
        layout = self._zero
        compression, op = _COMPRESSION[layout.options.compression], _OP[layout.options.op]
        pending = []
        for number, bucket in enumerate(layout.plan.buckets):
            flat = layout.take_grads(bucket)
            if layout.size == 1:
                pending.append((flat, None, None))
                continue
            compressed, context = compression.compress(flat)
            pending.append(
                (
                    compressed,
                    context,
                    hvd.reducescatter_async(
                        compressed, name=f"hvdtrain.zero.grads.{number}", op=op
                    ),
                )
            )
        for shard, (flat, context, handle) in zip(layout.shards, pending):
            grad = flat if handle is None else compression.decompress(wait(handle), context)
            if layout.options.accumulation_steps > 1:
                # Micro-batches' gradients were summed: k steps of batch B update like one of k*B.
                grad.div_(layout.options.accumulation_steps)
            shard.grad = grad
        self.hvdtrain_policy.reduced = True

    @contextlib.contextmanager
    def skip_synchronize(self):
        """Inside, ``step`` uses the shards' gradients as they are
        (after an explicit ``synchronize``)."""
        internals.set_should_synchronize(self, False)
        try:
            yield
        finally:
            internals.set_should_synchronize(self, True)

    def zero_grad(self, set_to_none: bool = True) -> None:
        for param in self._zero.params:
            if param.grad is not None:
                if set_to_none:
                    param.grad = None
                else:
                    param.grad.detach_()
                    param.grad.zero_()
        super().zero_grad(set_to_none)

    def add_param_group(self, param_group: dict) -> None:
        raise ValueError(
            "add_param_group is not supported with shard_optimizer_state=True: the partition "
            "is planned once; put every parameter group in the optimizer before wrap_optimizer"
        )

    def state_dict(self) -> dict:
        """The full optimizer state in the unsharded format, gathered from every rank (a collective:
        every rank must call it; every rank gets the whole state)."""
        layout = self._zero
        local = super().state_dict()  # numbered by shard: bucket n is parameter n
        state: dict[int, dict] = {}
        for number, bucket in enumerate(layout.plan.buckets):
            shard_state = local["state"].get(number)
            if not shard_state:
                continue
            names = sorted(
                k for k, v in shard_state.items() if _is_shard_wide(v, bucket.shard_numel)
            )
            gathered = dict(
                zip(
                    names,
                    _allgather(
                        [shard_state[k] for k in names],
                        f"hvdtrain.zero.state.{number}",
                        layout.size,
                    ),
                )
            )
            for slot in bucket.slots:
                shape = layout.params[slot.index].shape
                state[slot.index] = {
                    k: gathered[k][slot.offset : slot.offset + slot.numel].view(shape)
                    if k in gathered
                    else _copy(v)
                    for k, v in shard_state.items()
                }
        groups, start = [], 0
        for group, count in zip(local["param_groups"], layout.group_sizes):
            groups.append(
                {
                    **{k: v for k, v in group.items() if k != "params"},
                    "params": list(range(start, start + count)),
                }
            )
            start += count
        return {"state": state, "param_groups": groups}

    def load_state_dict(self, state_dict: dict) -> None:
        """Take a full (unsharded-format) state and keep this rank's slices; no collective."""
        layout = self._zero
        saved_groups = state_dict["param_groups"]
        if len(saved_groups) != len(layout.group_sizes):
            raise ValueError("loaded state dict has a different number of parameter groups")
        if [len(g["params"]) for g in saved_groups] != layout.group_sizes:
            raise ValueError(
                "loaded state dict contains a parameter group that doesn't match the size of "
                "optimizer's group"
            )
        saved_ids = [i for group in saved_groups for i in group["params"]]
        full = {
            index: state_dict["state"][i]
            for index, i in enumerate(saved_ids)
            if i in state_dict["state"]
        }
        elementwise = _elementwise_keys((layout.params[i], s) for i, s in full.items())
        shard_state = {}
        for number, bucket in enumerate(layout.plan.buckets):
            held = [slot.index in full for slot in bucket.slots]
            if not any(held):
                continue
            if not all(held):
                missing = next(slot.index for slot in bucket.slots if slot.index not in full)
                raise ValueError(
                    f"loaded state dict has no state for parameter {missing} but has for others "
                    f"updated with it; shard_optimizer_state needs all or none"
                )
            first = full[bucket.slots[0].index]
            shard_state[number] = {
                k: self._slice(full, bucket, k, v) if k in elementwise else _copy(v)
                for k, v in first.items()
            }
        groups = [
            {
                **{k: v for k, v in group.items() if k != "params"},
                "params": [n for n, b in enumerate(layout.plan.buckets) if b.group == g],
            }
            for g, group in enumerate(saved_groups)
        ]
        super().load_state_dict({"state": shard_state, "param_groups": groups})

    def _slice(
        self, full: dict[int, dict], bucket: Bucket, key: str, like: torch.Tensor
    ) -> torch.Tensor:
        flat = torch.zeros(bucket.shard_numel, dtype=like.dtype, device=like.device)
        for piece in bucket.pieces(self._zero.rank):
            flat[piece.shard_offset : piece.shard_offset + piece.stop - piece.start] = full[
                piece.index
            ][key].reshape(-1)[piece.start : piece.stop]
        return flat


class ShardedPolicy:
    """``optimizer._step``'s clip and apply for a sharded optimizer."""

    adasum = False

    def __init__(self, options: DistributedOptions, scale: float, max_grad_norm: float | None):
        self.options, self.scale, self.max_grad_norm = options, scale, max_grad_norm
        self.reduced = False  # set by the reduce-scatter, read by the tripwire
        self.tripwire_every = tripwire.interval()

    def parameters(self, opt: torch.optim.Optimizer) -> list[torch.Tensor]:
        """The whole model's parameters (the param groups hold only this rank's shards)."""
        return opt._zero.params

    def clip(self, opt: torch.optim.Optimizer) -> None:
        """``clip_grad_norm_`` over the whole model: the norm from every rank's shard."""
        shards = opt._zero.shards
        local = sum(
            (s.grad.detach().double().pow(2).sum() for s in shards),
            torch.zeros((), dtype=torch.float64),
        )
        total = (
            local
            if opt._zero.size == 1
            else hvd.allreduce(local.cpu(), op=hvd.Sum, name="hvdtrain.zero.norm")
        )
        coefficient = min(self.max_grad_norm / (math.sqrt(float(total)) + 1e-6), 1.0)
        for shard in shards:
            shard.grad.mul_(coefficient)

    def apply(self, opt: torch.optim.Optimizer, closure=None):
        """Update this rank's shards, then all-gather every shard into every rank's parameters.
        (A post-step check of the parameters belongs after this, in ``optimizer._step``.)"""
        if closure is not None:
            raise ValueError("step(closure) is not supported with shard_optimizer_state=True")
        layout = opt._zero
        layout.read_params()
        result = type(opt).step(opt)  # the user's optimizer class's step, over the shards
        if layout.size == 1:
            for number, shard in enumerate(layout.shards):
                layout.write_params(number, shard.detach())
            return result
        handles = [
            hvd.allgather_async(shard.detach(), name=f"hvdtrain.zero.params.{number}")
            for number, shard in enumerate(layout.shards)
        ]
        for number, handle in enumerate(handles):
            layout.write_params(number, wait(handle))
        return result


def shard(
    optimizer: torch.optim.Optimizer,
    model: torch.nn.Module,
    options: DistributedOptions,
    scale: float,
    max_grad_norm: float | None,
) -> torch.optim.Optimizer:
    """``optimizer`` (LR already scaled) made sharded,
    with rank 0's parameters and state everywhere."""
    if elastic.enabled():
        raise UnsupportedError(ELASTIC_REFUSAL)
    ctx = current()
    hvd.broadcast_parameters(model.state_dict(), root_rank=0)
    initial = ctx.broadcast_object(optimizer.state_dict() if ctx.is_main else None, 0)
    layout = _Layout(
        [list(g["params"]) for g in optimizer.param_groups], ctx.rank, ctx.size, options
    )
    # A subclass of the user's class, like Horovod's DistributedOptimizer: isinstance and schedulers
    # work.
    cls = type(optimizer)
    sharded = object.__new__(type(cls.__name__, (_ShardedOptimizer, cls), {}))
    sharded.__dict__.update(optimizer.__dict__)
    sharded._zero = layout
    internals.set_should_synchronize(sharded, True)
    sharded.state = defaultdict(dict)
    sharded.param_groups = [
        {
            **{k: v for k, v in group.items() if k != "params"},
            "params": [s for s, b in zip(layout.shards, layout.plan.buckets) if b.group == g],
        }
        for g, group in enumerate(optimizer.param_groups)
    ]
    sharded.load_state_dict(initial)
    sharded.hvdtrain_policy = ShardedPolicy(options, scale, max_grad_norm)
    return sharded


def is_sharded(optimizer: torch.optim.Optimizer) -> bool:
    return isinstance(optimizer, _ShardedOptimizer)


def agree_on_overflow(optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler) -> None:
    """AMP: after ``scaler.unscale_``, every rank skips the step if any rank's shard held an inf
    or NaN (each rank unscaled only its own shard's gradients)."""
    found = internals.found_inf_flags(scaler, optimizer)
    local = sum(
        (flag.double().cpu() for flag in found.values()), torch.zeros((), dtype=torch.float64)
    )
    total = hvd.allreduce(local, op=hvd.Sum, name="hvdtrain.zero.found_inf")
    for flag in found.values():
        flag.fill_(float(total > 0))


def state_bytes(optimizer: torch.optim.Optimizer) -> int:
    """Bytes of the tensors in this rank's optimizer state (``optimizer.state``)."""
    return sum(
        v.numel() * v.element_size()
        for s in optimizer.state.values()
        for v in s.values()
        if torch.is_tensor(v)
    )


def _is_shard_wide(value: Any, numel: int) -> bool:
    """One value per element of the shard (Adam's moments),
    as opposed to per-parameter scalars (step)."""
    return torch.is_tensor(value) and value.dim() == 1 and value.shape[0] == numel


def _elementwise_keys(states: Iterable[tuple[torch.Tensor, dict]]) -> set[str]:
    """State keys holding one value per parameter element, read off a full state: values shaped
    like their parameter. A 0-dim parameter's state cannot tell, so others decide for it; if all
    are 0-dim, every key but torch's scalar ``step`` counts as per-element."""
    keys, scalar_only = set(), set()
    for param, state in states:
        for key, value in state.items():
            if torch.is_tensor(value) and value.shape == param.shape:
                (keys if param.dim() > 0 else scalar_only).add(key)
    return keys or {k for k in scalar_only if k != "step"}


def _allgather(tensors: list[torch.Tensor], name: str, size: int) -> list[torch.Tensor]:
    if not tensors or size == 1:
        return [t.detach().clone() for t in tensors]
    return list(wait(hvd.grouped_allgather_async([t.detach() for t in tensors], name=name)))


def _copy(value: Any) -> Any:
    """A per-parameter copy: torch optimizers update ``step`` tensors in place, so parameters must
    never share one."""
    return value.clone() if torch.is_tensor(value) else copy.deepcopy(value)
