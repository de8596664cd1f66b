"""Horovod's own Keras API on Keras 3, as hvdtrain's build runs it.

Horovod 0.28.1's ``horovod.tensorflow.keras.DistributedOptimizer`` (and ``horovod.keras``'s)
subclasses Keras 2 optimizer internals. ``scripts/patch_horovod.py`` makes both call
``distributed_optimizer`` here for a Keras 3 optimizer, which installs hvdtrain's one gradient path
(``optimizer.install``) with Horovod's arguments translated, on the optimizer instance itself; so
``isinstance`` and ``model.save`` see the user's own class, as upstream intended.

Importing this module (which Horovod's patched modules do) also turns Keras 2 usage that Keras 3
removed into one line naming the fix (``core.keras3``), and a peer's failure into one line.
"""

from __future__ import annotations

import keras
import tensorflow as tf

from ..core import failures
from .optimizer import Reduction, check_optimizer, install, set_accumulation

failures.install()


def is_keras3_optimizer(optimizer) -> bool:
    return isinstance(optimizer, keras.optimizers.Optimizer)


def distributed_optimizer(
    optimizer: keras.optimizers.Optimizer,
    *,
    device_dense,
    device_sparse,
    compression,
    sparse_as_dense,
    gradient_predivide_factor,
    op,
    backward_passes_per_step,
    average_aggregated_gradients,
    groups,
    process_set,
) -> keras.optimizers.Optimizer:
    """``hvd.DistributedOptimizer(optimizer, ...)`` for a Keras 3 optimizer; returns ``optimizer``.

    Horovod's semantics: ``op=Average`` averages (``gradient_predivide_factor`` f splits it into
    1/f before the sum and f/size after); ``backward_passes_per_step`` k accumulates k batches
    locally before one allreduce (Keras's ``gradient_accumulation_steps``, which averages the k
    gradients: without ``average_aggregated_gradients`` the sum is applied, as Horovod does).
    The LR is the user's, as in Horovod (scale it by ``hvd.size()`` yourself).
    """
    import horovod.tensorflow as hvd

    check_optimizer(optimizer, "hvd.DistributedOptimizer")
    if groups is not None:
        raise ValueError(
            "hvd.DistributedOptimizer(groups=/num_groups=) is not supported for Keras 3 optimizers "
            "on hvdtrain's build (all gradients go in one grouped allreduce): remove the argument"
        )
    prescale, postscale = (
        (1.0 / gradient_predivide_factor, gradient_predivide_factor)
        if op == hvd.Average
        else (1.0, 1.0)
    )
    set_accumulation(optimizer, backward_passes_per_step, "backward_passes_per_step")
    if backward_passes_per_step > 1 and not average_aggregated_gradients:
        postscale *= backward_passes_per_step
    install(
        optimizer,
        Reduction(
            op=op,
            compression=compression,
            prescale=prescale,
            postscale=postscale,
            sparse_as_dense=sparse_as_dense,
            process_set=process_set,
            device_dense=device_dense,
            device_sparse=device_sparse,
        ),
    )
    optimizer.register_local_var = _register_local_var
    return optimizer


def _register_local_var(var) -> None:
    raise NotImplementedError(
        "register_local_var is not supported for Keras 3 optimizers on hvdtrain's build: "
        "use hvd.PartialDistributedGradientTape(local_layers=...) in a custom loop"
    )


def load_model(keras_module, wrap_optimizer, filepath, custom_optimizers, custom_objects):
    """``hvd.load_model``: Keras 3 finds classes by their registered names, so load the
    model as saved (custom optimizers by class name), then make its restored optimizer
    distributed through Horovod's ``wrap_optimizer(cls)`` (which carries ``compression``)
    with a factory returning it."""
    objects = {cls.__name__: cls for cls in custom_optimizers or ()}
    objects.update(custom_objects or {})
    model = keras_module.models.load_model(filepath, custom_objects=objects)
    if getattr(model, "optimizer", None) is not None:
        loaded = model.optimizer
        wrap_optimizer(lambda: loaded)()
    return model


def is_horovod_op_error(err: tf.errors.OpError) -> bool:
    """A TensorFlow op error raised by a Horovod op (a peer failed, or the job is changing size):
    what elastic training recovers from. Keras 3's fit raises it as whichever OpError subclass."""
    return "horovod" in str(err).lower()
