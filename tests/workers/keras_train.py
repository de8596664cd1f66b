"""Training checks for hvdtrain.keras, run on 2 ranks; each rank reports numbers for the test.

Single-process references are computed on every rank with plain Keras on the full batch. The
run ends by writing the first checkpoint of the resume-across-world-sizes sequence.
"""

from __future__ import annotations

import sys
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

import hvdtrain.keras as hk
from hvdtrain.core.context import main_process_only
from tests.workers.common import parse_args, report
from tests.workers.keras_checkpoint import resume_and_save

keras.config.set_floatx("float64")  # so distributed and single-process runs agree to ~1e-12


def _model(seed: int, dropout: float = 0.0) -> keras.Model:
    layers = [
        keras.Input((3,)),
        keras.layers.Dense(
            4, activation="tanh", kernel_initializer=keras.initializers.GlorotUniform(seed)
        ),
    ]
    if dropout:
        layers.append(keras.layers.Dropout(dropout))
    return keras.Sequential([*layers, keras.layers.Dense(1)])


def _data(n: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(123)  # the same global data on every rank
    x = rng.normal(size=(n, 3))
    return x, np.sin(x.sum(axis=1, keepdims=True))


def _reference(init_weights, optimizer, x, y, batch_size, steps, lrs=None) -> list[np.ndarray]:
    """Plain Keras, one process, on the full (global) batches, in order."""
    model = _model(0)
    model.set_weights(init_weights)
    loss_fn = keras.losses.MeanSquaredError()
    for step in range(steps):
        if lrs is not None:
            optimizer.learning_rate = lrs[step]
        xb, yb = (
            x[step * batch_size : (step + 1) * batch_size],
            y[step * batch_size : (step + 1) * batch_size],
        )
        with tf.GradientTape() as tape:
            loss = loss_fn(yb, model(xb))
        optimizer.apply_gradients(
            zip(tape.gradient(loss, model.trainable_variables), model.trainable_variables)
        )
    return model.get_weights()


def _max_diff(a, b) -> float:
    return max(float(np.max(np.abs(u - v))) for u, v in zip(a, b))


def _rank0_weights(model: keras.Model):
    return hk.current().broadcast_object(model.get_weights(), 0)


def worked_example(rank: int) -> float:
    model = keras.Sequential(
        [
            keras.Input((1,)),
            keras.layers.Dense(
                1, use_bias=False, kernel_initializer=keras.initializers.Constant(1.0)
            ),
        ]
    )
    model.compile(
        optimizer=hk.wrap_optimizer(keras.optimizers.SGD(0.1), lr_scaling="none"),
        loss=keras.losses.MeanSquaredError(reduction="sum"),
    )
    x, y = ([[1.0], [2.0]], [[2.0], [4.0]]) if rank == 0 else ([[3.0], [4.0]], [[16 / 3], [4.0]])
    # verbose=2 on every rank: the test checks only rank 0 printed the epoch line.
    model.fit(np.array(x), np.array(y), batch_size=2, epochs=1, verbose=2, callbacks=hk.callbacks())
    return float(model.get_weights()[0][0, 0])


def fit_vs_reference(
    make_opt, make_ref_opt, steps: int, batch: int, accumulation_steps: int = 1, **wrap
) -> dict:
    """``fit`` on 2 ranks with ``batch`` samples each vs one process on the global batch."""
    global_batch = 2 * batch * accumulation_steps
    x, y = _data(steps * global_batch)
    # different initial weights per rank: the broadcast must fix them
    model = _model(hk.current().rank)
    model.compile(
        optimizer=hk.wrap_optimizer(make_opt(), accumulation_steps=accumulation_steps, **wrap),
        loss="mse",
    )
    init = _rank0_weights(model)
    after_batch = []
    record = keras.callbacks.LambdaCallback(
        on_train_batch_end=lambda b, logs: after_batch.append(model.get_weights())
    )
    # rank r gets samples r, r+2, ...: step s covers the global batch s
    xs, ys = hk.shard(x, y, shuffle=False)
    model.fit(
        xs,
        ys,
        batch_size=batch,
        shuffle=False,
        epochs=1,
        verbose=0,
        callbacks=[*hk.callbacks(), record],
    )
    expected = _reference(init, make_ref_opt(), x, y, global_batch, steps)
    return {
        "diff": _max_diff(model.get_weights(), expected),
        "micro_steps": len(after_batch),
        "first_micro_step_diff": _max_diff(after_batch[0], init),
        "weights": _flat(model.get_weights()),
    }


def custom_loop(use_apply: bool, steps: int = 10, batch: int = 4) -> dict:
    """A GradientTape loop calling ``apply_gradients`` inside tf.function, or ``apply`` eagerly."""
    x, y = _data(steps * 2 * batch)
    model = _model(hk.current().rank)
    opt = hk.wrap_optimizer(keras.optimizers.SGD(0.1, momentum=0.9), lr_scaling="none")
    hk.broadcast_model(model, opt)  # no fit, so no callbacks: broadcast by hand
    init = model.get_weights()
    xs, ys = hk.shard(x, y, shuffle=False)
    loss_fn = keras.losses.MeanSquaredError()

    def step(xb, yb):
        with tf.GradientTape() as tape:
            loss = loss_fn(yb, model(xb))
        grads = tape.gradient(loss, model.trainable_variables)
        if use_apply:
            opt.apply(grads)
        else:
            opt.apply_gradients(zip(grads, model.trainable_variables))

    step = step if use_apply else tf.function(step)
    for s in range(steps):
        step(xs[s * batch : (s + 1) * batch], ys[s * batch : (s + 1) * batch])
    expected = _reference(init, keras.optimizers.SGD(0.1, momentum=0.9), x, y, 2 * batch, steps)
    return {"diff": _max_diff(model.get_weights(), expected)}


def warmup(steps: int = 6, batch: int = 4) -> dict:
    """SGD 0.05 on 2 ranks, linear scaling (0.1) and 4 warmup steps:
    0.05, 0.0625, 0.075, 0.0875, 0.1, 0.1."""
    x, y = _data(steps * 2 * batch)
    model = _model(hk.current().rank)
    model.compile(
        optimizer=hk.wrap_optimizer(keras.optimizers.SGD(0.05), warmup_steps=4), loss="mse"
    )
    init = _rank0_weights(model)
    xs, ys = hk.shard(x, y, shuffle=False)
    model.fit(xs, ys, batch_size=batch, shuffle=False, verbose=0, callbacks=hk.callbacks())
    lrs = [0.05, 0.0625, 0.075, 0.0875, 0.1, 0.1]
    expected = _reference(init, keras.optimizers.SGD(0.05), x, y, 2 * batch, steps, lrs=lrs)
    return {
        "diff": _max_diff(model.get_weights(), expected),
        "lr_after": float(model.optimizer.learning_rate.numpy()),
    }


def seeds_and_metrics(rank: int) -> dict:
    """Dropout, per-rank seeds and different data per rank;
    what callbacks see before/after averaging."""
    x, y = _data(64)
    model = _model(rank, dropout=0.5)
    initial = model.get_weights()
    model.compile(
        optimizer=hk.wrap_optimizer(keras.optimizers.Adam(0.01)), loss="mse", metrics=["mae"]
    )
    local, seen, first_batch = [], [], []
    keep_local = keras.callbacks.LambdaCallback(
        on_epoch_end=lambda e, logs: local.append(dict(logs))
    )
    keep_seen = keras.callbacks.LambdaCallback(
        on_epoch_end=lambda e, logs: seen.append(dict(logs)),
        on_train_batch_end=lambda b, logs: (
            None if first_batch else first_batch.append(_flat(model.get_weights()))
        ),
    )
    xs, ys = hk.shard(x, y, seed=7)
    history = model.fit(
        xs,
        ys,
        batch_size=8,
        epochs=2,
        verbose=0,
        callbacks=[keep_local, *hk.callbacks(), keep_seen],
    )
    return {
        "initial": _flat(initial),
        "first_batch": first_batch[0],
        "final": _flat(model.get_weights()),
        "local": local,
        "seen": seen,
        "history": history.history,
    }


def uneven(rank: int) -> dict:
    """1001 samples on 2 ranks: arrays and tf.data shards, and the steps fit runs on each."""
    x = np.arange(1001, dtype="float64").reshape(-1, 1)
    ids = hk.shard(x[:, 0].astype(int), shuffle=True, seed=3)
    ids_drop = hk.shard(x[:, 0].astype(int), shuffle=True, seed=3, drop_last=True)
    dataset = hk.shard_dataset(tf.data.Dataset.range(1001))
    dataset_drop = hk.shard_dataset(tf.data.Dataset.range(1001), drop_last=True)
    model = keras.Sequential([keras.Input((1,)), keras.layers.Dense(1)])
    model.compile(optimizer=hk.wrap_optimizer(keras.optimizers.SGD(1e-7)), loss="mse")
    batches = []
    count = keras.callbacks.LambdaCallback(on_train_batch_end=lambda b, logs: batches.append(b))
    xs = hk.shard(x)
    model.fit(xs, xs, batch_size=10, epochs=1, verbose=0, callbacks=[*hk.callbacks(), count])
    ds_batches = []
    train = (
        hk.shard_dataset(tf.data.Dataset.from_tensor_slices((x, x)))
        .shuffle(64, seed=rank)
        .batch(10)
    )
    count_ds = keras.callbacks.LambdaCallback(
        on_train_batch_end=lambda b, logs: ds_batches.append(b)
    )
    model.fit(train, epochs=1, shuffle=False, verbose=0, callbacks=[*hk.callbacks(), count_ds])
    return {
        "ids": ids.tolist(),
        "ids_drop": ids_drop.tolist(),
        "dataset": [int(v) for v in dataset.as_numpy_iterator()],
        "dataset_drop": [int(v) for v in dataset_drop.as_numpy_iterator()],
        "fit_steps": len(batches),
        "fit_steps_dataset": len(ds_batches),
    }


def refusals() -> dict:
    """Errors raised identically on every rank, before any collective could leave one waiting."""
    messages = {}

    def catch(name, fn):
        try:
            fn()
        except (ValueError, TypeError) as err:
            messages[name] = f"{type(err).__name__}: {err}"

    x, y = _data(8)
    plain = _model(0)
    plain.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
    catch("unwrapped", lambda: plain.fit(x, y, verbose=0, callbacks=hk.callbacks()))
    jit = _model(0)
    jit.compile(
        optimizer=hk.wrap_optimizer(keras.optimizers.SGD(0.1)), loss="mse", jit_compile=True
    )
    catch("jit", lambda: jit.fit(x, y, verbose=0, callbacks=hk.callbacks()))
    schedule = keras.optimizers.schedules.ExponentialDecay(0.1, 10, 0.9)
    catch(
        "schedule", lambda: hk.wrap_optimizer(keras.optimizers.SGD(schedule), lr_scaling="linear")
    )
    built = keras.optimizers.SGD(0.1)
    built.build(plain.trainable_variables)
    catch("built", lambda: hk.wrap_optimizer(built, accumulation_steps=2))
    wrapped = hk.wrap_optimizer(keras.optimizers.SGD(0.1))
    catch("twice", lambda: hk.wrap_optimizer(wrapped))
    return messages


def saved_model(out) -> dict:
    """A model trained with a wrapped Adam,
    saved as a plain ``.keras`` file for the test to load."""
    x, y = _data(32)
    model = _model(0)
    model.compile(
        optimizer=hk.wrap_optimizer(keras.optimizers.Adam(0.01), accumulation_steps=2), loss="mse"
    )
    xs, ys = hk.shard(x, y, shuffle=False)
    model.fit(xs, ys, batch_size=4, verbose=0, callbacks=hk.callbacks())
    main_process_only(model.save)(str(out / "model.keras"))
    return {
        "weights": _flat(model.get_weights()),
        "iterations": int(model.optimizer.iterations.numpy()),
        "learning_rate": float(model.optimizer.learning_rate.numpy()),
        "probe_x": x[:4].tolist(),
        "probe_y": model.predict(x[:4], verbose=0).ravel().tolist(),
    }


class DenseThenEmbedding(keras.Model):
    """Its ``Embedding`` gradient (an IndexedSlices) comes after dense ones in the gradient list."""

    def __init__(self):
        super().__init__()
        self.dense, self.embed, self.head = (
            keras.layers.Dense(4),
            keras.layers.Embedding(10, 4),
            keras.layers.Dense(1),
        )

    def call(self, inputs):
        ids, x = inputs
        return self.head(self.dense(x) + keras.ops.sum(self.embed(ids), axis=1))


def sparse_gradients(steps: int = 3) -> dict:
    """Embedding gradients averaged over 2 ranks like one process on the global batch."""
    rng = np.random.default_rng(5)
    ids, dense, y = rng.integers(0, 10, (8, 2)), rng.normal(size=(8, 3)), rng.normal(size=(8, 1))
    model = DenseThenEmbedding()
    model.compile(
        optimizer=hk.wrap_optimizer(keras.optimizers.SGD(0.1), lr_scaling="none"), loss="mse"
    )
    model([ids[:1], dense[:1]])
    hk.broadcast_model(model)
    start = model.get_weights()
    mine = slice(4 * hk.current().rank, 4 * hk.current().rank + 4)
    for _ in range(steps):
        model.train_on_batch([ids[mine], dense[mine]], y[mine])
    reference = DenseThenEmbedding()
    reference([ids[:1], dense[:1]])
    reference.set_weights(start)
    reference.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
    for _ in range(steps):
        reference.train_on_batch([ids, dense], y)
    return {
        "max_diff": _max_diff(model.get_weights(), reference.get_weights()),
        "moved": _max_diff(model.get_weights(), start),
    }


def _flat(weights) -> list[float]:
    return np.concatenate([np.ravel(w) for w in weights]).tolist()


def main() -> None:
    args = parse_args(ckpt=Path)
    ctx = hk.init(seed=0)
    sgd = lambda: keras.optimizers.SGD(0.05)  # noqa: E731
    adam = lambda: keras.optimizers.Adam(0.01)  # noqa: E731
    report(
        args.out,
        ctx.rank,
        size=ctx.size,
        framework=ctx.framework,
        worked_example=worked_example(ctx.rank),
        sgd=fit_vs_reference(sgd, lambda: keras.optimizers.SGD(0.1), steps=20, batch=4),
        adam=fit_vs_reference(adam, adam, steps=20, batch=4, lr_scaling="none"),
        accumulation=fit_vs_reference(
            lambda: keras.optimizers.SGD(0.1, momentum=0.9),
            lambda: keras.optimizers.SGD(0.1, momentum=0.9),
            steps=10,
            batch=4,
            accumulation_steps=2,
            lr_scaling="none",
        ),
        fp16=fit_vs_reference(
            sgd, lambda: keras.optimizers.SGD(0.1), steps=5, batch=4, compression="fp16"
        ),
        loop_apply_gradients=custom_loop(use_apply=False),
        loop_apply=custom_loop(use_apply=True),
        warmup=warmup(),
        seeds_and_metrics=seeds_and_metrics(ctx.rank),
        uneven=uneven(ctx.rank),
        refusals=refusals(),
        saved=saved_model(args.out),
        sparse=sparse_gradients(),
        checkpoint=resume_and_save(args.ckpt, args.out),
        torch_imported="torch" in sys.modules,
    )


if __name__ == "__main__":
    main()
