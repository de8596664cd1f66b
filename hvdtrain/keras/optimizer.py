"""``wrap_optimizer``: a Keras 3 optimizer made data-parallel by Horovod, with hvdtrain's policy.

Upstream ``horovod.tensorflow.keras.DistributedOptimizer`` subclasses Keras 2 internals that Keras 3
removed. Here the optimizer keeps its own class and only two methods of the instance are replaced,
so ``model.save`` writes a plain ``SGD``/``Adam``/... that loads without hvdtrain:

* ``_clip_gradients`` (Keras calls it once per real update, after micro-batch accumulation and
  inside its ``cond`` on the update step): allreduce the gradients first, then clip, so clipping
  sees the global gradient and the allreduce runs once every ``accumulation_steps`` batches;
* ``apply`` (only with warmup): run the update at the warmed-up LR, then restore the LR.

Gradient accumulation is Keras's own ``gradient_accumulation_steps``: the applied gradient is the
mean of the micro-batch gradients, so k steps of batch B update like one step of batch k*B.

``install`` and ``Reduction`` are the one gradient path: Horovod's own ``DistributedOptimizer`` on
hvdtrain's build (``horovod_api``) installs the same hook with Horovod's options.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import horovod.tensorflow as hvd
import keras
import tensorflow as tf

from ..core.lr import lr_scale_factor, warmup_multiplier
from ..core.options import Compression, DistributedOptions, ReduceOp
from . import internals, zero
from ._context import current

_COMPRESSION = {Compression.NONE: hvd.Compression.none, Compression.FP16: hvd.Compression.fp16}
_OP = {ReduceOp.AVERAGE: hvd.Average, ReduceOp.SUM: hvd.Sum, ReduceOp.ADASUM: hvd.Adasum}

# Attributes hvdtrain sets on a wrapped optimizer instance.
OPTIONS = "hvdtrain_options"
LR_FACTOR = "hvdtrain_lr_factor"
POLICY = "hvdtrain_policy"


@dataclass(frozen=True)
class Reduction:
    """How one update's gradients are combined across ranks (Horovod's allreduce arguments).

    Dense gradients go in one ``grouped_allreduce``. ``IndexedSlices`` (``Embedding`` gradients) are
    made dense with ``sparse_as_dense``, else allgathered one by one as Horovod does; never mixed
    into the grouped call: Horovod 0.28.1's ``grouped_allreduce`` pairs their results with the wrong
    inputs unless they lead the list.
    """

    op: Any = hvd.Average
    compression: Any = hvd.Compression.none
    prescale: float = 1.0
    postscale: float = 1.0
    sparse_as_dense: bool = True
    process_set: Any = hvd.global_process_set
    device_dense: str = ""
    device_sparse: str = ""

    def __call__(self, grads: list) -> list:
        if self.process_set.size() == 1 and self.prescale * self.postscale == 1.0:
            return grads  # nothing to combine; an allreduce would only cost time
        if self.sparse_as_dense:
            grads = [
                tf.convert_to_tensor(g) if isinstance(g, tf.IndexedSlices) else g for g in grads
            ]
        dense = [i for i, g in enumerate(grads) if not isinstance(g, tf.IndexedSlices)]
        reduced = list(grads)
        summed = hvd.grouped_allreduce(
            [grads[i] for i in dense],
            op=self.op,
            compression=self.compression,
            prescale_factor=self.prescale,
            postscale_factor=self.postscale,
            process_set=self.process_set,
            device_dense=self.device_dense,
        )
        for i, grad in zip(dense, summed):
            reduced[i] = grad
        # Horovod's sparse allreduce takes no factors; they commute
        scale = self.prescale * self.postscale
        for i in sorted(set(range(len(grads))) - set(dense)):
            grad = grads[i]
            values = (
                grad.values * tf.cast(scale, grad.values.dtype) if scale != 1.0 else grad.values
            )
            reduced[i] = hvd.allreduce(
                tf.IndexedSlices(values, grad.indices, grad.dense_shape),
                op=self.op,
                process_set=self.process_set,
                device_sparse=self.device_sparse,
            )
        return reduced


class _Policy:
    """The allreducing ``_clip_gradients``, bound to one optimizer instance."""

    def __init__(self, opt: keras.optimizers.Optimizer, reduction: Reduction):
        self.opt, self.reduction = opt, reduction
        self._keras_clip_gradients = internals.keras_clip_gradients(opt)
        # Allreduces of gradients so far, counted inside the traced step: the tripwire's proof that
        # Keras still calls the hook (not a Keras variable, so never saved with the model).
        self.reductions = tf.Variable(
            0, dtype=tf.int64, trainable=False, name="hvdtrain_reductions"
        )

    def clip_gradients(self, grads):
        reduced = self.reduction(grads)
        if reduced is not grads:
            with tf.control_dependencies([g for g in reduced if g is not None]):
                self.reductions.assign_add(1)
        return self._keras_clip_gradients(reduced)


class _Warmup:
    """``apply`` at the warmed-up LR: the LR ramps from the base to the scaled LR (``core.lr``)."""

    def __init__(self, opt: keras.optimizers.Optimizer, warmup_steps: int, scale: float):
        self.opt, self.warmup_steps, self._keras_apply = opt, warmup_steps, opt.apply
        # The multiplier of each warmup step, from the shared rule; the last entry (1.0) holds
        # from ``warmup_steps`` on. A table keeps the rule out of the traced graph.
        self._table = tf.constant(
            [warmup_multiplier(s, warmup_steps, scale) for s in range(warmup_steps + 1)],
            dtype=tf.float64,
        )

    def apply(self, grads, trainable_variables=None):
        lr = self.opt.learning_rate  # a variable: ``wrap_optimizer`` refuses schedules with warmup
        step = tf.minimum(tf.cast(self.opt.iterations, tf.int64), self.warmup_steps)
        scaled = tf.identity(lr.value)
        lr.assign(scaled * tf.cast(tf.gather(self._table, step), lr.dtype))
        self._keras_apply(grads, trainable_variables)
        lr.assign(scaled)


def check_optimizer(optimizer, who: str) -> None:
    """``TypeError`` unless ``optimizer`` is a Keras 3 optimizer the hook can make data-parallel."""
    if not isinstance(optimizer, keras.optimizers.Optimizer) or not hasattr(
        optimizer, internals.CLIP_GRADIENTS
    ):
        raise TypeError(
            f"{who} needs a Keras 3 optimizer (keras.optimizers.Optimizer, Keras >= 3.1), "
            f"got {type(optimizer).__module__}.{type(optimizer).__qualname__}"
        )
    if isinstance(optimizer, keras.optimizers.LossScaleOptimizer):
        raise TypeError(
            f"{who} does not support LossScaleOptimizer yet: its skipped steps differ between "
            "ranks; wrap a plain optimizer and train in float32"
        )
    if hasattr(optimizer, POLICY):
        raise ValueError(
            f"optimizer {optimizer.name!r} is already wrapped (hvdtrain.keras.wrap_optimizer or "
            "hvd.DistributedOptimizer): wrap it once"
        )


def install(optimizer: keras.optimizers.Optimizer, reduction: Reduction) -> _Policy:
    """Make ``optimizer`` combine its gradients with ``reduction`` before every update."""
    policy = _Policy(optimizer, reduction)
    setattr(optimizer, POLICY, policy)
    internals.replace_clip_gradients(optimizer, policy.clip_gradients)
    return policy


def wrap_optimizer(
    optimizer: keras.optimizers.Optimizer,
    lr_scaling: str = "linear",
    warmup_steps: int = 0,
    compression: str = "none",
    op: str = "average",
    accumulation_steps: int = 1,
    shard_optimizer_state: bool = False,
    shard_gradients: bool = False,
) -> keras.optimizers.Optimizer:
    """Make ``optimizer`` average gradients over all ranks before every update; returns it.

    Its LR is scaled for the world size (a float LR; for a ``LearningRateSchedule`` pass
    ``lr_scaling="none"`` and scale the schedule). Works in ``model.fit`` and in custom loops
    calling ``apply_gradients``/``apply``. Wrap before ``compile``/``fit`` builds the optimizer.
    ``shard_optimizer_state=True``: ZeRO stage 1 (``zero.py``), each rank keeps the optimizer's
    state for and updates only its 1/N of the variables. ``shard_gradients=True`` (stage 2) is
    refused: a Keras step holds every gradient at once.
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
    check_optimizer(optimizer, "wrap_optimizer")
    ctx = current()
    scale = lr_scale_factor(options, ctx.size, ctx.local_size, ctx.on_gpu)
    lr_is_variable = isinstance(optimizer.learning_rate, keras.Variable)
    if not lr_is_variable and (scale != 1.0 or options.warmup_steps):
        raise ValueError(
            "lr_scaling and warmup_steps need a float learning rate; with a LearningRateSchedule "
            "pass lr_scaling='none', warmup_steps=0 and build both into the schedule"
        )
    set_accumulation(optimizer, options.accumulation_steps)
    if lr_is_variable:
        optimizer.learning_rate = float(optimizer.learning_rate.numpy()) * scale
    policy = install(
        optimizer, Reduction(op=_OP[options.op], compression=_COMPRESSION[options.compression])
    )
    if options.warmup_steps and scale != 1.0:
        optimizer.apply = _Warmup(optimizer, options.warmup_steps, scale).apply
    if options.shard_optimizer_state:  # ZeRO stage 1: zero.py
        zero.shard(optimizer, options, policy.reductions)
    setattr(optimizer, OPTIONS, options)
    setattr(optimizer, LR_FACTOR, scale)
    return optimizer


def set_accumulation(
    optimizer: keras.optimizers.Optimizer, steps: int, what: str = "accumulation_steps"
) -> None:
    """Accumulate ``steps`` micro-batches per update with Keras's own
    ``gradient_accumulation_steps``."""
    if steps == 1:
        return  # leaves any accumulation the user configured on the optimizer itself
    if optimizer.gradient_accumulation_steps not in (None, steps):
        raise ValueError(
            f"{what}={steps} conflicts with the optimizer's "
            f"gradient_accumulation_steps={optimizer.gradient_accumulation_steps}"
        )
    if optimizer.built:
        raise ValueError(
            f"{what} needs an optimizer that is not built yet: wrap it before "
            "compile/fit or the first apply"
        )
    optimizer.gradient_accumulation_steps = steps


def base_learning_rate(optimizer: keras.optimizers.Optimizer) -> float | None:
    """The single-worker LR behind the optimizer's current (scaled) LR; ``None`` for a schedule."""
    if not isinstance(optimizer.learning_rate, keras.Variable):
        return None
    return float(optimizer.learning_rate.numpy()) / getattr(optimizer, LR_FACTOR, 1.0)


def set_base_learning_rate(optimizer: keras.optimizers.Optimizer, base_lr: float) -> None:
    """Set the LR to ``base_lr`` scaled for this job's world size
    (used when resuming); schedules stay."""
    if isinstance(optimizer.learning_rate, keras.Variable):
        optimizer.learning_rate = base_lr * getattr(optimizer, LR_FACTOR, 1.0)
