"""One training step of the same Keras 3 model on the same batch: (d) hvdtrain.keras vs (e) a
hand-written loop with ``hvd.DistributedGradientTape``, each both under ``model.fit`` and in a
``tf.function`` custom loop, so hvdtrain's own cost is compared like for like.

* ``hvdtrain fit``: ``model.fit`` with ``hk.wrap_optimizer`` and ``hk.callbacks()``;
* ``raw horovod fit``: ``model.fit`` of a model whose ``train_step`` uses the Horovod tape;
* ``hvdtrain loop`` / ``raw horovod loop``: the same compiled step calling ``optimizer.apply``.

Every variant starts from the same weights; data loading is left out (one fixed batch).
"""

from __future__ import annotations

import time
from collections.abc import Callable

import horovod.tensorflow as hvd
import keras
import tensorflow as tf

import hvdtrain.keras as hk

from ..models.keras_gpt import build_model
from . import shapes
from .timing import Plan, timed, windows

HVDTRAIN_FIT, RAW_FIT = "hvdtrain fit", "raw horovod fit"
HVDTRAIN_LOOP, RAW_LOOP = "hvdtrain loop", "raw horovod loop"


def horovod_gradients(tape: tf.GradientTape, loss, variables) -> list:
    """Gradients averaged by ``hvd.DistributedGradientTape``. It keys gradients by
    ``Variable.ref()``, which Keras 3 variables lack; their backing ``tf.Variable`` has it."""
    return hvd.DistributedGradientTape(tape).gradient(loss, [v.value for v in variables])


class RawHorovodModel(keras.Model):
    """The hand-written way: average the gradients with Horovod's tape inside ``train_step``."""

    def train_step(self, data):
        inputs, targets = data
        with tf.GradientTape() as tape:
            loss = self.compute_loss(x=inputs, y=targets, y_pred=self(inputs, training=True))
        self.optimizer.apply(
            horovod_gradients(tape, loss, self.trainable_variables), self.trainable_variables
        )
        return {"loss": loss}


def _mlp(quick: bool):
    shape = shapes.mlp_shape(quick)

    def make() -> keras.Model:
        inputs = keras.Input((shape.inputs,))
        x = keras.layers.Dense(shape.hidden, activation="relu")(inputs)
        x = keras.layers.Dense(shape.hidden, activation="relu")(x)
        return keras.Model(inputs, keras.layers.Dense(shape.classes)(x))

    batch = (
        tf.random.normal((shape.batch, shape.inputs)),
        tf.random.uniform((shape.batch,), 0, shape.classes, dtype=tf.int32),
    )
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    return make, batch, loss, lambda: keras.optimizers.SGD(0.01, momentum=0.9), shape.batch


def _gpt(quick: bool):
    shape = shapes.gpt_shape(quick)
    tokens = tf.random.uniform((shape.batch, shape.block + 1), 0, 256, dtype=tf.int32)
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    return (
        lambda: build_model(shape.block, shape.d_model, shape.layers, shape.heads),
        (tokens[:, :-1], tokens[:, 1:]),
        loss,
        lambda: keras.optimizers.AdamW(1e-3),
        shape.batch,
    )


MODELS = {"mlp": _mlp, "gpt": _gpt}


class _BatchClock(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.stamps: list[float] = []

    def on_train_batch_end(self, batch, logs=None):
        self.stamps.append(time.perf_counter())


def _fit_contender(model: keras.Model, batch, callbacks: list) -> Callable[[int], float]:
    """Seconds for ``iters`` steps inside one ``fit`` call, from the first batch's end to the last's
    (``fit``'s own start-up, hvdtrain's start-of-training broadcast included, is left out)."""
    dataset = tf.data.Dataset.from_tensors(batch).repeat()
    clock = _BatchClock()

    def run(iters: int) -> float:
        clock.stamps.clear()
        model.fit(
            dataset, epochs=1, steps_per_epoch=iters + 1, verbose=0, callbacks=[*callbacks, clock]
        )
        return clock.stamps[-1] - clock.stamps[0]

    return run


def loop_step(model: keras.Model, optimizer: keras.optimizers.Optimizer, loss_fn, batch, raw: bool):
    inputs, targets = batch

    @tf.function
    def step():
        with tf.GradientTape() as tape:
            loss = loss_fn(targets, model(inputs, training=True))
        variables = model.trainable_variables
        grads = horovod_gradients(tape, loss, variables) if raw else tape.gradient(loss, variables)
        optimizer.apply(grads, variables)
        return loss

    return step


def variants(
    make: Callable[[], keras.Model], batch, loss_fn, make_optimizer: Callable
) -> dict[str, Callable[[int], float]]:
    weights = make().get_weights()
    size = hvd.size()

    def fresh(cls=keras.Model):
        model = make()
        if cls is not keras.Model:
            model = cls(model.inputs, model.outputs)
        model.set_weights(weights)
        return model

    def raw_optimizer():
        optimizer = make_optimizer()
        optimizer.learning_rate = float(optimizer.learning_rate.numpy()) * size
        return optimizer

    hvdtrain_fit = fresh()
    hvdtrain_fit.compile(
        optimizer=hk.wrap_optimizer(make_optimizer()), loss=loss_fn, jit_compile=False
    )
    raw_fit = fresh(RawHorovodModel)
    raw_fit.compile(optimizer=raw_optimizer(), loss=loss_fn, jit_compile=False)
    hvdtrain_loop, raw_loop = fresh(), fresh()
    sync = gpu_sync if tf.config.list_logical_devices("GPU") else None
    return {
        HVDTRAIN_FIT: _fit_contender(hvdtrain_fit, batch, hk.callbacks()),
        RAW_FIT: _fit_contender(raw_fit, batch, []),
        HVDTRAIN_LOOP: timed(
            loop_step(hvdtrain_loop, hk.wrap_optimizer(make_optimizer()), loss_fn, batch, False),
            sync,
        ),
        RAW_LOOP: timed(loop_step(raw_loop, raw_optimizer(), loss_fn, batch, True), sync),
    }


def gpu_sync() -> None:
    """The compiled loop's steps return before a GPU finishes them."""
    tf.test.experimental.sync_devices()


def barrier() -> None:
    hvd.allreduce(tf.zeros([1]), op=hvd.Sum, name="bench.keras.barrier")


def run(quick: bool, window_count: int) -> dict:
    """Every rank's step seconds in each window per model and variant, all-gathered."""
    plan = Plan(warmup=3, windows=window_count, iters=3 if quick else 10)
    mine, batches = {}, {}
    for name, build in MODELS.items():
        make, batch, loss_fn, make_optimizer, batches[name] = build(quick)
        mine[name] = windows(variants(make, batch, loss_fn, make_optimizer), plan, barrier)
    return {
        "per_rank": hvd.allgather_object(mine, name="bench.keras_step.results"),
        "batch_per_rank": batches,
    }
