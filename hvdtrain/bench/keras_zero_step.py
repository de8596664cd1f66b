"""Optimizer sharding (ZeRO) in Keras 3 (TensorFlow backend), the twin of ``zero_step`` (PyTorch):
the same two models at the same sizes, AdamW(1e-4) in float32 wrapped by
``hvdtrain.keras.wrap_optimizer``, per-rank state bytes, memory and step time, in the same modes
(``zero_common``) so the report's Keras rows line up with torch's.

Modes (``MODES``): ``unsharded`` and ``sharded``, ZeRO stage 1 (``shard_optimizer_state=True``).
Keras refuses ``shard_gradients`` (a Keras step computes every gradient at once), so there is no
``sharded-grads``: both modes hold every gradient between backward and the update.

The training step is ``keras_step``'s compiled custom loop (``GradientTape``, then
``optimizer.apply``, in one ``tf.function``), on a fixed batch.

* Step time: as ``zero_step.run``, each mode on its own model (same initial weights) and the
  modes taking turns window by window (``timing.windows``); the report takes the ratio
  sharded / unsharded window by window.
* Memory: ``memory`` runs in a launch of its own per model and mode, like torch's, but samples the
  RSS after each *whole* step only (``PHASES``): forward, backward and update run inside one
  ``tf.function`` call, so there is no point between them to sample from Python. Peak RSS is
  ``ru_maxrss``, which sees inside the call.
"""

from __future__ import annotations

import math

import horovod.tensorflow as hvd
import keras
import tensorflow as tf

import hvdtrain.keras as hk
from hvdtrain.keras import zero

from ..models.keras_gpt import build_model
from . import shapes
from .keras_step import barrier, gpu_sync, loop_step
from .timing import Plan, timed, windows
from .zero_common import MEMORY_STEPS, MODELS, modes, peak_rss, rss

MODES = modes("keras")
PHASES = ("step",)  # RSS is read after each whole step (one tf.function call)


def _build(name: str, quick: bool):
    """A maker of the model, its fixed batch, the loss and the batch per rank."""
    if name == "gpt":
        shape = shapes.zero_gpt_shape(quick)
        tokens = tf.random.uniform((shape.batch, shape.block + 1), 0, 256, dtype=tf.int32, seed=0)
        return (
            lambda: build_model(shape.block, shape.d_model, shape.layers, shape.heads),
            (tokens[:, :-1], tokens[:, 1:]),
            keras.losses.SparseCategoricalCrossentropy(from_logits=True),  # next byte
            shape.batch,
        )
    shape = shapes.zero_mlp_shape(quick)

    def make() -> keras.Model:  # shape.layers x Dense(width), ReLU between
        layers = [keras.layers.Dense(shape.width, activation="relu") for _ in range(shape.layers)]
        layers[-1] = keras.layers.Dense(shape.width)
        return keras.Sequential([keras.Input((shape.width,)), *layers])

    inputs, targets = tf.unstack(tf.random.normal((2, shape.batch, shape.width), seed=0))
    return make, (inputs, targets), keras.losses.MeanSquaredError(), shape.batch


def _wrapped(mode: str) -> keras.optimizers.Optimizer:
    return hk.wrap_optimizer(keras.optimizers.AdamW(1e-4), **MODES[mode])


def _parameters(model: keras.Model) -> int:
    return sum(math.prod(v.shape) for v in model.trainable_variables)


def run(quick: bool, window_count: int) -> dict:
    """Per model: every rank's state bytes and per-window step seconds of every mode,
    all-gathered."""
    plan = Plan(warmup=1, windows=window_count, iters=1 if quick else 2)
    sync = gpu_sync if tf.config.list_logical_devices("GPU") else None
    models, mine = {}, {}
    for name in MODELS:
        make, batch, loss_fn, batch_size = _build(name, quick)
        weights = make().get_weights()
        contenders, state = {}, {}
        for mode in MODES:
            model = make()
            model.set_weights(weights)
            optimizer = _wrapped(mode)
            step = loop_step(model, optimizer, loss_fn, batch, raw=False)
            step()  # AdamW makes its state on the first step
            state[mode] = zero.state_bytes(optimizer)
            contenders[mode] = timed(step, sync)
        mine[name] = {"state_bytes": state, "windows": windows(contenders, plan, barrier)}
        models[name] = {"parameters": _parameters(model), "batch_per_rank": batch_size}
    per_rank = hvd.allgather_object(mine, name="bench.keras_zero.results")
    for name in MODELS:
        models[name]["per_rank"] = [rank[name] for rank in per_rank]
    return {"modes": list(MODES), "models": models}


def memory(quick: bool, name: str, mode: str) -> dict:
    """One model and optimizer alone in this process, for every rank: the RSS before the optimizer
    exists and after each of ``MEMORY_STEPS`` whole steps, the peak RSS, the state bytes and the
    gradient bytes held between backward and the update."""
    make, batch, loss_fn, _ = _build(name, quick)
    model = make()
    before = rss()
    optimizer = _wrapped(mode)
    step = loop_step(model, optimizer, loss_fn, batch, raw=False)
    samples = []
    for _ in range(MEMORY_STEPS):
        step()
        samples.append(rss())
    mine = {
        "rss_before_bytes": before,
        "rss_phase_bytes": samples,
        "peak_rss_bytes": peak_rss(),  # before _grad_bytes's own gradient pass below
        "state_bytes": zero.state_bytes(optimizer),
        "grad_bytes": _grad_bytes(model, loss_fn, batch),
    }
    return {
        "framework": "keras",
        "model": name,
        "mode": mode,
        "parameters": _parameters(model),
        "steps": MEMORY_STEPS,
        "phases": list(PHASES),
        "per_rank": hvd.allgather_object(mine, name="bench.keras_zero.memory"),
    }


def _grad_bytes(model: keras.Model, loss_fn, batch) -> int:
    """Bytes of the gradients the step's tape returns, all held at once before ``apply`` (in both
    modes: the sharded optimizer flattens them bucket by bucket inside ``apply``). They live inside
    the step's graph, so they are counted from a gradient pass of their own on the same batch;
    an ``IndexedSlices`` gradient (an embedding's) counts its values and indices."""
    inputs, targets = batch

    @tf.function
    def gradients():
        with tf.GradientTape() as tape:
            loss = loss_fn(targets, model(inputs, training=True))
        return tape.gradient(loss, model.trainable_variables)

    total = 0
    for grad in gradients():
        parts = [grad.values, grad.indices] if isinstance(grad, tf.IndexedSlices) else [grad]
        total += sum(part.numpy().nbytes for part in parts)
    return total
