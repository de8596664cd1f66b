"""ZeRO on Horovod: ``wrap_optimizer(..., shard_optimizer_state=True)`` (stage 1) and
``shard_gradients=True`` (stage 2).

With Adam every rank of a plain data-parallel job holds two extra copies of every parameter.
Here each rank keeps optimizer state for, and updates, only its partition of the parameters
(``core.partition``: buckets of parameters cut into N equal shards), and nothing the size of the
model is copied per step:

* The parameters become views into one flat buffer per bucket; a rank's shard is a view of its
  range of that buffer, so the user's optimizer updates the model in place, and the all-gather
  writes the other ranks' shards straight into the buffer.
* Stage 1: the gradients are views into one flat gradient buffer per bucket (autograd
  accumulates into them in place). Each bucket's reduce-scatter starts from the backward hook of
  its last gradient, while backward goes on, and writes the averaged shard into the rank's own
  range of that buffer: the shard's gradient is a view too.
* Stage 2: each gradient, once accumulated, is copied into its bucket's wire buffer and released;
  a full bucket is reduce-scattered into the rank's shard gradient and its buffer released, at
  most ``MAX_QUEUED`` buckets waiting. Between backward and step a rank holds 1/N of the
  gradients; with accumulation every micro-batch is reduce-scattered and the shards summed.

``optimizer._step`` drives a step in the same order as the unsharded path: ``synchronize`` (wait
for the reduce-scatters, average micro-batches), ``clip`` (the global norm from every rank's shard),
``apply`` (the user's optimizer over the shards, then the all-gather). Gradients are in flight once
backward returns, as with Horovod's unsharded optimizer: change them during backward (a tensor
hook), not between backward and step (``synchronize`` says so in one line if they were). After a
step, a parameter's ``grad`` holds this rank's averaged gradient in its own range and its local one
elsewhere (stage 1) or is None (stage 2); ``zero_grad`` zeroes stage 1's buffers in place.

``state_dict()`` is a collective that gathers the full state in the unsharded format, so a
checkpoint loads sharded or unsharded on any world size; ``load_state_dict`` takes that format and
keeps this rank's slices.
"""

from __future__ import annotations

import contextlib
import copy
import math
from collections import defaultdict, deque
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import horovod.torch as hvd
import torch

from ..core import elastic, tripwire
from ..core.guards import UnsupportedError, UserError
from ..core.options import Compression, DistributedOptions, ReduceOp
from ..core.partition import ELASTIC_REFUSAL, Bucket, ParamSpec, plan
from . import internals
from ._context import current
from .collectives import broadcast_parameters, on_the_wire, sleep_until_done, wait

# Stage 2 holds up to MAX_QUEUED buckets (core.partition.DEFAULT_BUCKET_BYTES) of gradients.
MAX_QUEUED = 2
_HALF = (torch.float16, torch.bfloat16)
MASTER = "hvdtrain_master"  # a 16-bit bucket's fp32 master shard, in the gathered state
_HOOK = "_hvdtrain_zero_hook"  # a parameter's backward hook, removed if it is wrapped again


class GradientsChangedError(UserError, RuntimeError):
    """A gradient was changed after its reduce-scatter started."""


@dataclass
class _Flight:
    """A reduce-scatter on its way: what it reads and writes, kept alive until it is done."""

    bucket: _FlatBucket
    handle: int | None
    source: torch.Tensor
    output: torch.Tensor


class _FlatBucket:
    """One bucket of the plan at run time: the flat buffer its parameters are views of, this
    rank's shard (a view of it), and where its gradients gather."""

    def __init__(
        self, number: int, bucket: Bucket, params: list[torch.Tensor], rank: int, stage: int
    ):
        self.number, self.plan = number, bucket
        self.params = [params[slot.index] for slot in bucket.slots]
        first = self.params[0]
        self.flat = torch.zeros(bucket.padded_numel, dtype=first.dtype, device=first.device)
        with torch.no_grad():
            for slot, param in zip(bucket.slots, self.params):
                view = self._range(self.flat, slot)
                view.copy_(param.detach().reshape(-1))
                param.data = view.view_as(param)
        low, high = bucket.shard_range(rank)
        self.own = self.flat[low:high]
        # 16-bit parameters: the optimizer updates an fp32 master copy of this rank's shard, with
        # fp32 state; the parameters take it rounded after each step.
        self.master = self.flat.dtype in _HALF
        self.shard = torch.nn.Parameter(self.own.float() if self.master else self.own)
        self.arrivals = [0] * len(self.params)
        self.passes = self.passes_done = 0  # reduce-scatters started, finished since synchronize
        self.version = 0  # stage 1: the gradient buffer's version when its reduce-scatter started
        if stage == 1:
            self.grads: torch.Tensor | None = torch.zeros_like(self.flat)
            self.grad_views = [self._range(self.grads, s) for s in bucket.slots]
            for param, view in zip(self.params, self.grad_views):
                param.grad = view.view_as(param)
            self.shard_grad = torch.zeros_like(self.shard) if self.master else self.grads[low:high]
        else:
            self.grads = None  # the wire buffer of the pass being gathered
            self.shard_grad = torch.zeros_like(self.shard)
        self.shard.grad = self.shard_grad
        self.written = self.flat._version  # a later version: someone else wrote the parameters

    def read_master(self) -> None:
        """16-bit: the master shard from the parameters, if something else wrote them since
        (``model.load_state_dict``, a broadcast)."""
        if self.master and self.flat._version != self.written:
            with torch.no_grad():
                self.shard.copy_(self.own)
            self.written = self.flat._version

    def write_master(self) -> None:
        """16-bit: the updated master shard, rounded, into this rank's range of the parameters."""
        if self.master:
            with torch.no_grad():
                self.own.copy_(self.shard)
            self.written = self.flat._version

    @staticmethod
    def _range(flat: torch.Tensor, slot) -> torch.Tensor:
        return flat[slot.offset : slot.offset + slot.numel]

    def adopt(self, position: int) -> None:
        """Stage 1: a gradient autograd made anew (its ``grad`` was set to None) goes back into the
        buffer, and the parameter's ``grad`` becomes the view again."""
        param, view = self.params[position], self.grad_views[position]
        if param.grad.data_ptr() != view.data_ptr():
            view.copy_(param.grad.reshape(-1))
            param.grad = view.view_as(param)

    def take(self, position: int, wire: torch.dtype) -> None:
        """Stage 2: copy a finished gradient into the wire buffer and release it. A bucket that
        is one parameter needing no padding sends the gradient itself."""
        param = self.params[position]
        alone = len(self.params) == 1 and self.plan.padded_numel == self.plan.numel
        if self.grads is None and alone and param.grad.dtype == wire:
            self.grads = param.grad.detach().reshape(-1)
            param.grad = None
            return
        if self.grads is None:
            self.grads = torch.zeros(self.plan.padded_numel, dtype=wire, device=self.flat.device)
        # added, not copied: a bucket left incomplete by a pass gathers the next pass's too
        self._range(self.grads, self.plan.slots[position]).add_(param.grad.reshape(-1))
        param.grad = None

    def moved_param(self) -> int | None:
        """The index of a parameter that is no longer a view of ``flat`` (replaced after
        ``wrap_optimizer``), or None."""
        for slot, param in zip(self.plan.slots, self.params):
            if param.data_ptr() != self._range(self.flat, slot).data_ptr():
                return slot.index
        return None


class _Layout:
    """Where a sharded optimizer's parameters, gradients and state live, and the reduce-scatters
    started from backward hooks."""

    def __init__(
        self, groups: list[list[torch.Tensor]], rank: int, size: int, options: DistributedOptions
    ):
        self.params = [p for group in groups for p in group]
        self.group_sizes = [len(group) for group in groups]
        self.rank, self.size, self.options = rank, size, options
        self.stage = 2 if options.shard_gradients else 1
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
        self.plan = plan(specs, size)
        self.buckets = [
            _FlatBucket(number, bucket, self.params, rank, self.stage)
            for number, bucket in enumerate(self.plan.buckets)
        ]
        self.shards = [bucket.shard for bucket in self.buckets]
        self.where = {
            param: (bucket, position)
            for bucket in self.buckets
            for position, param in enumerate(bucket.params)
        }
        # Stage 1 reduces once per optimizer step, stage 2 once per backward.
        self.passes_per_launch = options.accumulation_steps if self.stage == 1 else 1
        self.queue: deque[tuple[_FlatBucket, torch.Tensor, int]] = deque()
        self.receive_buffers: dict[tuple[torch.dtype, torch.device], torch.Tensor] = {}
        self.flight: _Flight | None = None
        self.compress = options.compression is Compression.FP16 and size > 1
        for param in self.where:
            earlier = getattr(param, _HOOK, None)
            if earlier is not None:  # the model was wrapped before: only this layout hears it
                earlier.remove()
            setattr(param, _HOOK, param.register_post_accumulate_grad_hook(self._arrived))

    def _wire(self, bucket: _FlatBucket) -> torch.dtype:
        floating = bucket.flat.is_floating_point()
        return torch.float16 if self.compress and floating else bucket.flat.dtype

    def _arrived(self, param: torch.Tensor) -> None:
        """Backward hook: once every gradient of a bucket is final, queue its reduce-scatter."""
        bucket, position = self.where[param]
        if self.stage == 1:
            bucket.adopt(position)
        else:
            bucket.take(position, self._wire(bucket))
        bucket.arrivals[position] += 1
        if min(bucket.arrivals) >= self.passes_per_launch:
            self.enqueue(bucket)
        self._advance(block=False)
        while self.stage == 2 and len(self.queue) > MAX_QUEUED:  # each holds its gradients
            self._advance(block=True)

    def enqueue(self, bucket: _FlatBucket) -> None:
        """Queue ``bucket``'s gradients for a reduce-scatter into this rank's shard gradient."""
        bucket.arrivals = [0] * len(bucket.arrivals)
        if self.stage == 1:
            bucket.version = bucket.grads._version
            source = bucket.grads
        else:
            if bucket.grads is None:  # no gradient arrived in this pass: zeros, as Horovod sends
                bucket.grads = torch.zeros(
                    bucket.plan.padded_numel, dtype=self._wire(bucket), device=bucket.flat.device
                )
            source, bucket.grads = bucket.grads, None
        self.queue.append((bucket, source, bucket.passes))
        bucket.passes += 1

    def _advance(self, block: bool) -> None:
        """Finish the reduce-scatter in flight once it is done (waiting for it if ``block``) and
        start the next queued one. One at a time, so one receive buffer serves them all."""
        if self.flight is not None:
            if not block and self.flight.handle is not None and not hvd.poll(self.flight.handle):
                return
            self._finish(self.flight)
            self.flight = None
        if self.queue:
            self.flight = self._start(*self.queue.popleft())

    def _start(self, bucket: _FlatBucket, source: torch.Tensor, number: int) -> _Flight:
        """The reduce-scatter as an all-to-all: rank r receives every rank's r-th slice, and
        ``_finish`` sums them. Gloo's own reduce-scatter (halving-doubling) allocates two buffers
        of its input's size per call and Horovod a third: 2.4x the time of an allreduce of the
        same bucket, measured; the all-to-all sends the same bytes into one reused buffer."""
        source = source.to(self._wire(bucket))  # the buffer itself unless compressed
        if self.size == 1:
            return _Flight(bucket, None, source, source)
        received = self._received(source)
        handle = internals.alltoall_into(
            on_the_wire(source),
            on_the_wire(received),
            f"hvdtrain.zero.grads.{bucket.number}.{number}",
        )
        return _Flight(bucket, handle, source, received)

    def _received(self, source: torch.Tensor) -> torch.Tensor:
        """A view, as long as ``source``, of the one receive buffer of its dtype (one all-to-all
        runs at a time)."""
        key = (source.dtype, source.device)
        buffer = self.receive_buffers.get(key)
        if buffer is None:
            longest = max(bucket.plan.padded_numel for bucket in self.buckets)
            buffer = self.receive_buffers[key] = source.new_empty(longest)
        return buffer[: source.numel()]

    def _finish(self, flight: _Flight) -> None:
        """Wait for an all-to-all and add the slices it brought to the shard gradient."""
        if flight.handle is not None:
            sleep_until_done(flight.handle)
            hvd.synchronize(flight.handle)  # also drops Horovod's references to the tensors
        bucket = flight.bucket
        for rank, part in enumerate(flight.output.view(self.size, -1)):
            if rank > 0 or bucket.passes_done > 0:
                bucket.shard_grad.add_(part)
            elif part.data_ptr() != bucket.shard_grad.data_ptr():  # stage 1 at N=1: in place
                bucket.shard_grad.copy_(part)
        if self.stage == 1:  # our own write into the gradient buffer is no change of the user's
            bucket.version = bucket.grads._version
        bucket.passes_done += 1

    def collect(self) -> None:
        """Every bucket's shard gradient, averaged over the ranks and the micro-batches: start
        the reduce-scatters backward did not (a parameter without a gradient counts as zeros, as
        Horovod's unsharded optimizer sends them) and wait for all of them."""
        changed = [
            b
            for b in self.buckets
            if self.stage == 1 and b.passes and b.grads._version != b.version
        ]
        if changed:
            self.discard()  # every reduce-scatter finished: the next step starts clean
            slots = changed[0].plan.slots
            raise GradientsChangedError(
                f"a gradient of the optimizer's parameters {slots[0].index}-{slots[-1].index} "
                "was changed after its reduce-scatter started (shard_optimizer_state=True "
                "starts it in backward, once the gradients are final): change gradients "
                "during backward (a tensor hook), clip with max_grad_norm, and run more "
                "backward passes per step only with accumulation_steps"
            )
        for bucket in self.buckets:
            unsent = bucket.grads is not None if self.stage == 2 else False
            if bucket.passes == 0 or unsent:
                self.enqueue(bucket)
        self._drain()
        # Summed over the ranks (averaged unless op="sum") and over the micro-batches: k steps of
        # batch B update like one of k*B.
        divisor = self.options.accumulation_steps
        if self.options.op is ReduceOp.AVERAGE:
            divisor *= self.size
        for bucket in self.buckets:
            if divisor > 1:
                bucket.shard_grad.div_(divisor)
            bucket.shard.grad = bucket.shard_grad
            bucket.passes = bucket.passes_done = 0

    def discard(self) -> None:
        """``zero_grad``: forget this step's gradients (stage 1 zeroes its buffers in place,
        keeping the parameters' ``grad`` views)."""
        self._drain()
        for bucket in self.buckets:
            bucket.arrivals = [0] * len(bucket.arrivals)
            bucket.passes = bucket.passes_done = 0
            if self.stage == 1:
                bucket.grads.zero_()
            else:
                bucket.grads = None

    def _drain(self) -> None:
        while self.queue or self.flight is not None:
            self._advance(block=True)

    def moved_param(self) -> int | None:
        """A parameter replaced since ``wrap_optimizer`` (its index), or None."""
        for bucket in self.buckets:
            index = bucket.moved_param()
            if index is not None:
                return index
        return None


class _ShardedOptimizer:
    """Methods of a sharded optimizer, placed before the user's optimizer class: its param groups
    hold this rank's shards, so the user's ``step`` updates them and keeps state only for them."""

    _zero: _Layout

    def synchronize(self) -> None:
        """Wait for the reduce-scatters of this step's gradients (starting any backward did not):
        each shard's ``grad`` then holds its averaged gradient."""
        self._zero.collect()
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
        """Stage 1 keeps the gradients as views of its buffers, zeroed (``set_to_none`` would
        make autograd allocate them anew); stage 2 holds none outside a step."""
        self._zero.discard()

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
        for number, bucket in enumerate(layout.buckets):
            if bucket.master and number in local["state"]:
                # gathered like a moment, so a resumed job keeps every bit (before the first
                # step the master is the parameters)
                local["state"][number] = {**local["state"][number], MASTER: bucket.shard.detach()}
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
        for bucket in layout.buckets:
            master = self.state.get(bucket.shard, {}).pop(MASTER, None)
            with torch.no_grad():
                if bucket.master:
                    bucket.shard.copy_(bucket.own if master is None else master)
            bucket.written = bucket.flat._version

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
        moved = layout.moved_param()
        if moved is not None:
            raise UserError(
                f"parameter {moved} of the optimizer was replaced after wrap_optimizer "
                "(model.to(), param.data = ...): with shard_optimizer_state=True parameters live "
                "in hvdtrain's flat buffers; move or convert the model before wrap_optimizer"
            )
        for bucket in layout.buckets:
            bucket.read_master()
        result = type(opt).step(opt)  # the user's optimizer class's step, over the shards
        for bucket in layout.buckets:
            bucket.write_master()
        if layout.size > 1:
            # One bucket at a time, into the flat buffer: started together Horovod would fuse them
            # through its fusion buffer, 64 MiB more per rank.
            for bucket in layout.buckets:
                wait(
                    internals.allgather_into(
                        on_the_wire(bucket.own),
                        on_the_wire(bucket.flat),
                        f"hvdtrain.zero.params.{bucket.number}",
                    )
                )
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
    broadcast_parameters(model)
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
