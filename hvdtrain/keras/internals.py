"""The private methods of Keras's ``Optimizer`` that ``hvdtrain.keras`` relies on, in one place.

Keras 3 offers no public hook between gradient accumulation and the update, nor a public test for
weight decay; these are the two methods hvdtrain uses, and a Keras release may move either without
notice. Every use goes through the names and functions below, and ``check`` (called by ``init``)
finds each on ``keras.optimizers.Optimizer``, so a release that moved one stops the job at start
with one line naming it. The tripwire (``keras.tripwire``) stays the behavioural guard: it proves
every update was data-parallel, whatever the names.
"""

from __future__ import annotations

from collections.abc import Callable

import keras

from ..core.guards import UserError

# Called by Keras once per real update (after micro-batch accumulation, inside its update ``cond``):
# where hvdtrain averages the gradients.
CLIP_GRADIENTS = "_clip_gradients"
# Whether weight decay applies to a variable (the user's exclusions): ZeRO's bucket groups.
USE_WEIGHT_DECAY = "_use_weight_decay"
# RMSprop's momentum slots (SGD's are public): Horovod's LR callbacks rescale them (momentum
# correction). An attribute of a built instance, so checked where it is read.
RMSPROP_MOMENTUMS = "_momentums"


class InternalsError(UserError, RuntimeError):
    """A private method hvdtrain relies on is gone: the same on every rank of a host."""

    per_host = True


def check() -> None:
    """``InternalsError`` naming the first private method ``keras.optimizers.Optimizer`` lacks."""
    for name in (CLIP_GRADIENTS, USE_WEIGHT_DECAY):
        if not callable(getattr(keras.optimizers.Optimizer, name, None)):
            raise InternalsError(
                f"hvdtrain.keras relies on keras.optimizers.Optimizer.{name}, which Keras "
                f"{keras.__version__} no longer has: install the tested versions (make install), "
                f"or update hvdtrain/keras/internals.py"
            )


def keras_clip_gradients(optimizer: keras.optimizers.Optimizer) -> Callable:
    """Keras's own ``_clip_gradients`` of ``optimizer``, whatever replaced it on the instance."""
    return getattr(type(optimizer), CLIP_GRADIENTS).__get__(optimizer)


def replace_clip_gradients(optimizer: keras.optimizers.Optimizer, method: Callable) -> None:
    setattr(optimizer, CLIP_GRADIENTS, method)


def uses_weight_decay(optimizer: keras.optimizers.Optimizer, variable) -> bool:
    return getattr(optimizer, USE_WEIGHT_DECAY)(variable)


def rmsprop_momentums(optimizer: keras.optimizers.RMSprop) -> list:
    """The momentum slots of a built ``RMSprop``; ``InternalsError`` if Keras moved them."""
    slots = getattr(optimizer, RMSPROP_MOMENTUMS, None)
    if not isinstance(slots, list):
        raise InternalsError(
            f"hvdtrain.keras relies on keras.optimizers.RMSprop.{RMSPROP_MOMENTUMS}, which Keras "
            f"{keras.__version__} no longer has: install the tested versions (make install), "
            f"or update hvdtrain/keras/internals.py"
        )
    return slots
