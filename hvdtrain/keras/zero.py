"""ZeRO stage 1 for Keras 3 on Horovod: ``wrap_optimizer(..., shard_optimizer_state=True)``.

The same plan as torch's (``core.partition``: the trainable variables flattened into buckets, one
per weight-decay group and dtype, each cut into N equal shards). Keras keys optimizer state by
variable, so the optimizer is built over flat shard variables instead of the model's, and three
methods of the instance are replaced:

* ``build``: plans the buckets over the model's trainable variables and builds the optimizer's
  own state (slots, accumulators) for this rank's shards only;
* ``apply``: flattens each bucket's gradients and reduce-scatters them (averaged, fp16 on
  request), copies this rank's slices of the variables into its shards, runs Keras's own
  ``apply`` on the shards (accumulation, clipping, weight decay, warmup as unsharded), then
  all-gathers the shards back into the model's variables and applies their constraints.
  Each of those passes goes bucket by bucket (``core.partition.DEFAULT_BUCKET_BYTES``), each
  bucket's ops after the previous one's (control dependencies; a graph would otherwise run every
  bucket's at once), so the transients beyond the gradients are a bucket's, not the model's;
* ``_clip_gradients``: ``global_clipnorm`` from the norm over every rank's shard.

A checkpoint holds the full state in the unsharded layout: ``gather`` (a collective, which
``save_checkpoint`` runs on every rank) assembles it, ``save_own_variables`` writes it, and
``load_own_variables`` takes it and keeps this rank's slices. The layout comes from a twin of the
optimizer built once over the model's variables, then dropped.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import horovod.tensorflow as hvd
import keras
import numpy as np
import tensorflow as tf

from ..core import elastic
from ..core.guards import UnsupportedError
from ..core.options import Compression, DistributedOptions, ReduceOp
from ..core.partition import ELASTIC_REFUSAL, Bucket, ParamSpec, plan
from . import internals
from ._context import current

ATTRIBUTE = "_hvdtrain_zero"


class _Recorder:
    """Records, for each variable an optimizer's ``build`` makes with
    ``add_variable_from_reference``, the position of its reference among
    ``references`` and its slot name."""

    def __init__(self, optimizer: keras.optimizers.Optimizer, references: list):
        self.slots: dict[int, tuple[int, str]] = {}
        position = {id(v): i for i, v in enumerate(references)}
        original = optimizer.add_variable_from_reference

        def add_variable_from_reference(reference_variable, name=None, initializer="zeros"):
            variable = original(reference_variable, name=name, initializer=initializer)
            self.slots[id(variable)] = (position[id(reference_variable)], name or "var")
            return variable

        optimizer.add_variable_from_reference = add_variable_from_reference


class _Sharding:
    """A sharded optimizer's layout and the methods that replace its own."""

    def __init__(
        self,
        optimizer: keras.optimizers.Optimizer,
        options: DistributedOptions,
        reductions: tf.Variable,
    ):
        ctx = current()
        self.optimizer, self.options, self.rank, self.size = optimizer, options, ctx.rank, ctx.size
        self.keras_build = optimizer.build
        self.inner_apply = optimizer.apply  # Keras's, or hvdtrain's warmup around it
        # not the allreducing one
        self.keras_clip_gradients = internals.keras_clip_gradients(optimizer)
        # The wrapped optimizer's count of gradient reductions: the tripwire's proof that the update
        # was data-parallel.
        self.reductions = reductions
        self.variables: list = []
        self.shards: list = []
        self.slots: dict[int, tuple[int, str]] = {}  # optimizer variable -> (bucket, slot name)
        self.full_layout: list[tuple[int, str] | None] | None = (
            None  # the unsharded optimizer's variables
        )
        self.gathered: list[np.ndarray] | None = None
        self.loaded: list[np.ndarray] | None = None

    # --- the replaced methods ---------------------------------------------------------------
    def build(self, variables) -> None:
        self.variables = list(variables)
        self.index = {id(v): i for i, v in enumerate(self.variables)}
        decayed = [internals.uses_weight_decay(self.optimizer, v) for v in self.variables]
        groups = [
            [
                ParamSpec(i, math.prod(v.shape), np.dtype(v.dtype).itemsize, v.dtype)
                for i, v in enumerate(self.variables)
                if decayed[i] == wanted
            ]
            for wanted in (True, False)
        ]
        self.plan = plan(groups, self.size)
        self.shards = [
            keras.Variable(
                "zeros",  # made in place (a NumPy array would pass through float64 copies)
                shape=(b.shard_numel,),
                dtype=self._first(b).dtype,
                trainable=False,
                name=f"hvdtrain_zero_shard_{n}",
            )
            for n, b in enumerate(self.plan.buckets)
        ]
        # The model's exclusions (by variable or name) decided the groups; the shards' names mean
        # nothing.
        self.optimizer.exclude_from_weight_decay(
            var_list=[s for s, b in zip(self.shards, self.plan.buckets) if b.group == 1]
        )
        recorder = _Recorder(self.optimizer, self.shards)
        self.keras_build(self.shards)
        del self.optimizer.add_variable_from_reference
        self.slots = recorder.slots

    def apply(self, grads, trainable_variables=None):
        if trainable_variables is None:
            trainable_variables = self.variables
        trainable_variables = list(trainable_variables)
        if not self.optimizer.built:
            self.optimizer.build(trainable_variables)
        by_index: list[Any] = [None] * len(self.variables)
        for grad, variable in zip(grads, trainable_variables):
            if id(variable) not in self.index:
                raise ValueError(
                    f"variable {variable.path} was not among those the sharded optimizer was built "
                    "for"
                )
            by_index[self.index[id(variable)]] = grad
        shard_grads: list = []
        for number, bucket in enumerate(self.plan.buckets):
            with tf.control_dependencies(shard_grads[-1:]):
                flat = self._flat(bucket, by_index)
            shard_grads.append(flat if self.size == 1 else self._reduce_scatter(flat, number))
        if self.size > 1:
            with tf.control_dependencies(shard_grads):
                self.reductions.assign_add(1)
        self._read_variables()
        self.inner_apply(shard_grads, self.shards)
        self._write_variables()

    def _reduce_scatter(self, flat: tf.Tensor, number: int) -> tf.Tensor:
        """This rank's shard of the bucket ``flat`` summed (or averaged) over the ranks: an
        all-to-all of the shards' slices, added up here. Gloo's reduce-scatter allocates and
        zeroes two buffers the size of its input on every call (measured for torch, issue 27);
        the all-to-all's output is one bucket. fp16 compression halves the bytes on the wire;
        the sum is taken in the gradients' own dtype."""
        wire = flat
        if self.options.compression is Compression.FP16 and flat.dtype.is_floating:
            wire = tf.cast(flat, tf.float16)
        received = hvd.alltoall(wire, name=f"hvdtrain.zero.grads.{number}")
        total = tf.reduce_sum(tf.reshape(tf.cast(received, flat.dtype), [self.size, -1]), 0)
        return total / self.size if self.options.op is ReduceOp.AVERAGE else total

    def clip_gradients(self, grads):
        if not self.optimizer.global_clipnorm:
            # clipvalue: element by element, shards are fine
            return self.keras_clip_gradients(grads)
        squares = tf.add_n([tf.reduce_sum(tf.square(tf.cast(g, tf.float64))) for g in grads])
        if self.size > 1:
            squares = hvd.allreduce(squares, op=hvd.Sum, name="hvdtrain.zero.norm")
        norm, clip = tf.sqrt(squares), tf.constant(self.optimizer.global_clipnorm, tf.float64)
        factor = clip / tf.maximum(norm, clip)  # Keras's clip_by_global_norm
        return [g * tf.cast(factor, g.dtype) for g in grads]

    def save_own_variables(self, store) -> None:
        if self.gathered is None:
            raise ValueError(
                "a sharded optimizer is saved by hvdtrain.keras.save_checkpoint (on every rank), "
                "which gathers its state first"
            )
        for i, value in enumerate(self.gathered):
            store[str(i)] = value
        self.gathered = None

    def load_own_variables(self, store) -> None:
        """Take a full (unsharded-layout) state and keep this rank's slices; no collective."""
        values = [store[str(i)] for i in range(len(store.keys()))]
        self.load(values)
        self.loaded = values

    # --- consolidation ------------------------------------------------------------------------
    def gather(self) -> None:
        """Assemble the full state in the unsharded layout on every rank (a collective)."""
        layout = self._full_layout()
        padded = {}
        for variable in self.optimizer.variables:
            if id(variable) in self.slots:
                bucket, name = self.slots[id(variable)]
                value = variable.value
                padded[bucket, name] = (
                    hvd.allgather(value, name=f"hvdtrain.zero.state.{bucket}.{name}")
                    if self.size > 1
                    else value
                ).numpy()
        others = iter(v.numpy() for v in self.optimizer.variables if id(v) not in self.slots)
        values = []
        for entry in layout:
            if entry is None:
                values.append(next(others))
            else:
                index, name = entry
                bucket, slot = self._place(index)
                values.append(
                    padded[bucket, name][slot.offset : slot.offset + slot.numel].reshape(
                        self.variables[index].shape
                    )
                )
        self.gathered = values

    def load(self, values: list[np.ndarray]) -> None:
        layout = self._full_layout()
        if len(values) != len(layout):
            raise ValueError(
                f"the saved optimizer has {len(values)} variables, this one {len(layout)}"
            )
        flats: dict[tuple[int, str], np.ndarray] = {}
        others = []
        for value, entry in zip(values, layout):
            if entry is None:
                others.append(value)
                continue
            index, name = entry
            bucket, slot = self._place(index)
            flat = flats.setdefault(
                (bucket, name), np.zeros(self.plan.buckets[bucket].padded_numel, value.dtype)
            )
            flat[slot.offset : slot.offset + slot.numel] = np.reshape(value, -1)
        mine = [v for v in self.optimizer.variables if id(v) not in self.slots]
        for variable, value in zip(mine, others):
            variable.assign(value)
        for variable in self.optimizer.variables:
            if id(variable) in self.slots:
                bucket, name = self.slots[id(variable)]
                low, high = self.plan.buckets[bucket].shard_range(self.rank)
                variable.assign(flats[bucket, name][low:high])

    def _full_layout(self) -> list[tuple[int, str] | None]:
        """For each variable of the unsharded optimizer, in order: (variable index, slot name), or
        None for one not made per variable (iterations, the learning rate)."""
        if self.full_layout is None:
            twin = type(self.optimizer).from_config(self.optimizer.get_config())
            recorder = _Recorder(twin, self.variables)
            twin.build(self.variables)
            self.full_layout = [recorder.slots.get(id(v)) for v in twin.variables]
        return self.full_layout

    # --- helpers ------------------------------------------------------------------------------
    def _first(self, bucket: Bucket):
        return self.variables[bucket.slots[0].index]

    def _place(self, index: int):
        for number, bucket in enumerate(self.plan.buckets):
            for slot in bucket.slots:
                if slot.index == index:
                    return number, slot
        raise KeyError(index)

    def _flat(self, bucket: Bucket, grads: list) -> tf.Tensor:
        parts = []
        for slot in bucket.slots:
            grad = grads[slot.index]
            variable = self.variables[slot.index]
            if grad is None:
                parts.append(tf.zeros([slot.numel], dtype=variable.dtype))
            else:
                parts.append(tf.reshape(tf.convert_to_tensor(grad), [-1]))
        parts.append(
            tf.zeros([bucket.padded_numel - bucket.numel], dtype=self._first(bucket).dtype)
        )
        return tf.concat(parts, 0)

    def _read_variables(self) -> None:
        written: list = []
        for bucket, shard in zip(self.plan.buckets, self.shards):
            pieces = list(bucket.pieces(self.rank))
            with tf.control_dependencies(written[-1:]):
                parts = [
                    tf.reshape(self.variables[p.index].value, [-1])[p.start : p.stop]
                    for p in pieces
                ]
                held = sum(p.stop - p.start for p in pieces)
                parts.append(tf.zeros([bucket.shard_numel - held], dtype=shard.dtype))
                written.append(_assign(shard, tf.concat(parts, 0)))

    def _write_variables(self) -> None:
        written: list = []
        for number, (bucket, shard) in enumerate(zip(self.plan.buckets, self.shards)):
            with tf.control_dependencies(written):
                full = (
                    shard.value
                    if self.size == 1
                    else hvd.allgather(shard.value, name=f"hvdtrain.zero.params.{number}")
                )
            written = []
            for slot in bucket.slots:
                variable = self.variables[slot.index]
                value = tf.reshape(full[slot.offset : slot.offset + slot.numel], variable.shape)
                if variable.constraint is not None:
                    value = variable.constraint(value)
                written.append(_assign(variable, value))


def _assign(variable: keras.Variable, value: tf.Tensor):
    """``variable.assign(value)``, returning the assign op (Keras returns ``value``), which the
    next bucket's ops wait for."""
    return variable.value.assign(tf.cast(value, variable.dtype))


def shard(
    optimizer: keras.optimizers.Optimizer, options: DistributedOptions, reductions: tf.Variable
) -> None:
    """Make ``optimizer`` (already wrapped, not built) keep and update only this rank's shards;
    ``reductions``: the wrapped optimizer's count of gradient reductions, which the sharded update
    increments."""
    if elastic.enabled():
        raise UnsupportedError(ELASTIC_REFUSAL)
    if options.shard_gradients:
        raise UnsupportedError(
            "shard_gradients=True is not supported with Keras: a Keras step computes every "
            "gradient at once (GradientTape.gradient) before any can be reduce-scattered; use "
            "shard_optimizer_state=True alone"
        )
    if optimizer.built:
        raise UnsupportedError(
            "shard_optimizer_state=True needs an optimizer that is not built yet: wrap it "
            "before compile/fit or the first apply"
        )
    for flag, why in (
        ("clipnorm", "it clips each variable by its own norm; use global_clipnorm"),
        ("use_ema", "it keeps an average of every variable"),
    ):
        if getattr(optimizer, flag, None):
            raise UnsupportedError(f"shard_optimizer_state=True does not support {flag}: {why}")
    sharding = _Sharding(optimizer, options, reductions)
    setattr(optimizer, ATTRIBUTE, sharding)
    methods: dict[str, Callable] = {
        "build": sharding.build,
        "apply": sharding.apply,
        internals.CLIP_GRADIENTS: sharding.clip_gradients,
        "save_own_variables": sharding.save_own_variables,
        "load_own_variables": sharding.load_own_variables,
    }
    for name, method in methods.items():
        setattr(optimizer, name, method)


def sharding_of(optimizer: keras.optimizers.Optimizer | None) -> _Sharding | None:
    return getattr(optimizer, ATTRIBUTE, None)


def state_bytes(optimizer: keras.optimizers.Optimizer) -> int:
    """Bytes of the optimizer's own variables (slots, accumulators, iterations, learning rate)."""
    return sum(math.prod(v.shape) * np.dtype(v.dtype).itemsize for v in optimizer.variables)
