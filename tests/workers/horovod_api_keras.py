"""Horovod's own Keras API (``horovod.tensorflow.keras``, ``horovod.keras``) on Keras 3, written as
Horovod's docs show, on 2 ranks; each rank reports numbers for ``tests/test_horovod_api_keras.py``.

References are plain single-process Keras (or, for momentum correction, the update rule written
out) on the global batch, computed on every rank.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import horovod.keras as hvd_standalone
import horovod.tensorflow as htf
import horovod.tensorflow.keras as hvd
import keras
import numpy as np
import tensorflow as tf

from tests.workers.common import parse_args, report

keras.config.set_floatx("float64")  # distributed and single-process runs agree to ~1e-12

B, STEPS = 4, 6  # per-rank batch, updates per epoch


def model(seed: int = 0, embedding: bool = False) -> keras.Model:
    init = keras.initializers.GlorotUniform(seed)
    if embedding:
        return keras.Sequential(
            [
                keras.Input((2,), dtype="int32"),
                keras.layers.Embedding(10, 3, embeddings_initializer=init),
                keras.layers.Flatten(),
                keras.layers.Dense(1, kernel_initializer=init),
            ]
        )
    return keras.Sequential(
        [
            keras.Input((3,)),
            keras.layers.Dense(4, activation="tanh", kernel_initializer=init),
            keras.layers.Dense(1, kernel_initializer=init),
        ]
    )


def data(n: int, embedding: bool = False):
    rng = np.random.default_rng(7)  # the same global data on every rank
    x = rng.integers(0, 10, size=(n, 2)).astype("int32") if embedding else rng.normal(size=(n, 3))
    return x, np.sin(np.sum(x, axis=1, keepdims=True).astype("float64"))


def shard(a: np.ndarray, micro: int = 1) -> np.ndarray:
    """This rank's rows: each global batch of ``size * micro * B`` rows is ``micro`` micro-batches
    of ``B`` per rank; any partition of the global batch gives the same mean gradient."""
    size, rank, g = hvd.size(), hvd.rank(), hvd.size() * micro * B
    return np.concatenate(
        [a[u * g + (k * size + rank) * B :][:B] for u in range(len(a) // g) for k in range(micro)]
    )


def reference(init, optimizer, x, y, batch, epochs=1, embedding=False) -> list[np.ndarray]:
    """Plain Keras in one process on the global batches, in order."""
    ref = model(embedding=embedding)
    ref.set_weights(init)
    ref.compile(optimizer=optimizer, loss="mse")
    ref.fit(x, y, batch_size=batch, epochs=epochs, shuffle=False, verbose=0)
    return ref.get_weights()


def diff(a, b) -> float:
    return max(float(np.max(np.abs(np.asarray(u) - np.asarray(v)))) for u, v in zip(a, b))


def flat(weights) -> list[float]:
    return np.concatenate([np.ravel(w) for w in weights]).tolist()


def fit_check(
    make_opt, reference_opt, *, micro=1, embedding=False, epochs=1, module=hvd, **options
) -> dict:
    """Train with ``module.DistributedOptimizer(make_opt(), **options)`` and the docs' callbacks;
    compare with ``reference_opt`` on the global batch. Rank 1 starts from other weights: the
    broadcast callback must replace them with rank 0's."""
    x, y = data(hvd.size() * micro * B * STEPS, embedding)
    net = model(seed=hvd.rank(), embedding=embedding)
    init = htf.broadcast_object(net.get_weights(), 0)
    opt = module.DistributedOptimizer(make_opt(), **options)
    net.compile(optimizer=opt, loss="mse")
    callbacks = [
        module.callbacks.BroadcastGlobalVariablesCallback(0),
        module.callbacks.MetricAverageCallback(),
    ]
    net.fit(
        shard(x, micro),
        shard(y, micro),
        batch_size=B,
        epochs=epochs,
        shuffle=False,
        callbacks=callbacks,
        verbose=0,
    )
    want = reference(init, reference_opt, x, y, hvd.size() * micro * B, epochs, embedding)
    return {
        "diff": diff(net.get_weights(), want),
        "weights": flat(net.get_weights()),
        "same_class": type(opt) is type(make_opt()),
        "iterations": int(opt.iterations.numpy()),
    }


def metric_average() -> dict:
    """MetricAverageCallback: later callbacks and History see the mean of the ranks' losses."""
    x, y = data(hvd.size() * B * STEPS)
    seen = []

    class Local(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            seen.append(float(logs["loss"]))

    net = model()
    net.compile(optimizer=hvd.DistributedOptimizer(keras.optimizers.SGD(0.1)), loss="mse")
    history = net.fit(
        shard(x),
        shard(y),
        batch_size=B,
        epochs=2,
        shuffle=False,
        verbose=0,
        callbacks=[
            hvd.callbacks.BroadcastGlobalVariablesCallback(0),
            Local(),
            hvd.callbacks.MetricAverageCallback(),
        ],
    )
    return {"local": seen, "averaged": [float(v) for v in history.history["loss"]]}


def warmup_with_momentum_correction() -> dict:
    """LearningRateWarmupCallback over 2 epochs with SGD(momentum=0.9): the LR of every batch, and
    the weights against Keras 2's update rule with the momentum scaled by new/old LR while the LR
    changes (what Horovod's momentum correction did), written out."""
    x, y = data(hvd.size() * B * STEPS)
    initial_lr, momentum, epochs, warmup = 0.05 * hvd.size(), 0.9, 3, 2
    lrs = []

    class Record(keras.callbacks.Callback):
        def on_train_batch_begin(self, batch, logs=None):
            lrs.append(float(self.model.optimizer.learning_rate.numpy()))

    net = model()
    init = net.get_weights()
    net.compile(
        optimizer=hvd.DistributedOptimizer(keras.optimizers.SGD(initial_lr, momentum=momentum)),
        loss="mse",
    )
    history = net.fit(
        shard(x),
        shard(y),
        batch_size=B,
        epochs=epochs,
        shuffle=False,
        verbose=0,
        callbacks=[
            hvd.callbacks.BroadcastGlobalVariablesCallback(0),
            hvd.callbacks.MetricAverageCallback(),
            hvd.callbacks.LearningRateWarmupCallback(
                initial_lr=initial_lr, warmup_epochs=warmup, verbose=1
            ),
            Record(),
        ],
    )

    # Keras 2's update with Horovod's correction: velocity = momentum * new / old LR * velocity -
    # LR * gradient while the LR changes. Keras reads the momentum as a float32 constant.
    ref, g = model(), hvd.size() * B
    ref.set_weights(init)
    velocity, old_lr, keras_momentum = (
        [np.zeros_like(w) for w in init],
        initial_lr,
        float(np.float32(momentum)),
    )
    for step, lr in enumerate(lrs):
        mu = keras_momentum * (lr / old_lr if step < warmup * STEPS else 1.0)
        batch = step % STEPS
        with tf.GradientTape() as tape:
            loss = keras.losses.MeanSquaredError()(
                y[batch * g : (batch + 1) * g], ref(x[batch * g : (batch + 1) * g])
            )
        grads = tape.gradient(loss, ref.trainable_variables)
        velocity = [mu * v - lr * gr.numpy() for v, gr in zip(velocity, grads)]
        ref.set_weights([w + v for w, v in zip(ref.get_weights(), velocity)])
        old_lr = lr
    return {
        "lrs": lrs,
        "logged_lr": [float(v) for v in history.history["lr"]],
        "initial_lr": initial_lr,
        "diff": diff(net.get_weights(), ref.get_weights()),
        "weights": flat(net.get_weights()),
    }


def lr_schedule() -> list[float]:
    """LearningRateScheduleCallback(multiplier=0.5, start_epoch=1), staircase: the LR each epoch."""
    x, y = data(hvd.size() * B * STEPS)
    net = model()
    net.compile(optimizer=hvd.DistributedOptimizer(keras.optimizers.Adam(0.01)), loss="mse")
    history = net.fit(
        shard(x),
        shard(y),
        batch_size=B,
        epochs=4,
        shuffle=False,
        verbose=0,
        callbacks=[
            hvd.callbacks.BroadcastGlobalVariablesCallback(0),
            hvd.callbacks.LearningRateScheduleCallback(
                initial_lr=0.01, multiplier=0.5, start_epoch=1
            ),
        ],
    )
    return [float(v) for v in history.history["lr"]]


def load_model(out: Path) -> dict:
    """hvd.load_model: the saved optimizer (its state too) comes back distributed; training goes on
    as one process would after keras.models.load_model."""
    x, y = data(hvd.size() * B * STEPS)
    net = model()
    net.compile(optimizer=hvd.DistributedOptimizer(keras.optimizers.Adam(0.01)), loss="mse")
    net.fit(
        shard(x),
        shard(y),
        batch_size=B,
        shuffle=False,
        verbose=0,
        callbacks=[hvd.callbacks.BroadcastGlobalVariablesCallback(0)],
    )
    path = out / "saved.keras"
    if hvd.rank() == 0:
        net.save(path)
    hvd.allreduce(0.0, name="saved")  # the file exists before anyone loads it
    loaded = hvd.load_model(path, compression=hvd.Compression.fp16)
    state_restored = diff(loaded.optimizer.variables, net.optimizer.variables) == 0.0
    loaded.fit(
        shard(x),
        shard(y),
        batch_size=B,
        shuffle=False,
        verbose=0,
        callbacks=[hvd.callbacks.BroadcastGlobalVariablesCallback(0)],
    )
    plain = keras.models.load_model(path)
    plain.fit(x, y, batch_size=hvd.size() * B, shuffle=False, verbose=0)
    return {
        "class": type(loaded.optimizer).__name__,
        "state_restored": state_restored,
        "diff": diff(loaded.get_weights(), plain.get_weights()),
    }


def plain_optimizer_is_caught() -> str:
    """A Horovod script that forgot DistributedOptimizer:
    the broadcast callback's tripwire stops it."""
    x, y = data(hvd.size() * B * STEPS)
    net = model()
    net.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
    try:
        net.fit(
            shard(x),
            shard(y),
            batch_size=B,
            shuffle=False,
            verbose=0,
            callbacks=[hvd.callbacks.BroadcastGlobalVariablesCallback(0)],
        )
    except Exception as err:  # noqa: BLE001 - the test asserts on its type and text
        return f"{type(err).__name__}: {err}"
    return "not stopped"


def refusals() -> dict:
    found = {}
    for name, call in {
        "groups": lambda: hvd.DistributedOptimizer(keras.optimizers.SGD(0.1), groups=2),
        "twice": lambda: hvd.DistributedOptimizer(
            hvd.DistributedOptimizer(keras.optimizers.SGD(0.1))
        ),
        "local_var": lambda: hvd.DistributedOptimizer(keras.optimizers.SGD(0.1)).register_local_var(
            model().weights[0]
        ),
    }.items():
        try:
            call()
            found[name] = "accepted"
        except (ValueError, NotImplementedError) as err:
            found[name] = str(err)
    return found


def main() -> None:
    args = parse_args()
    hvd.init()
    sgd = lambda: keras.optimizers.SGD(0.1)  # noqa: E731
    results = {
        "sgd_momentum": fit_check(
            lambda: keras.optimizers.SGD(0.1, momentum=0.9),
            keras.optimizers.SGD(0.1, momentum=0.9),
            epochs=2,
        ),
        "adam_standalone": fit_check(
            lambda: keras.optimizers.Adam(0.01), keras.optimizers.Adam(0.01), module=hvd_standalone
        ),
        "predivide": fit_check(sgd, sgd(), gradient_predivide_factor=2.0),
        "sum": fit_check(sgd, keras.optimizers.SGD(0.1 * hvd.size()), op=hvd.Sum),
        "fp16": fit_check(sgd, sgd(), compression=hvd.Compression.fp16),
        "sparse": fit_check(sgd, sgd(), embedding=True),
        "sparse_as_dense": fit_check(sgd, sgd(), embedding=True, sparse_as_dense=True),
        "passes_averaged": fit_check(
            sgd, sgd(), micro=2, backward_passes_per_step=2, average_aggregated_gradients=True
        ),
        "passes_summed": fit_check(
            sgd, keras.optimizers.SGD(0.2), micro=2, backward_passes_per_step=2
        ),
        "metric_average": metric_average(),
        "warmup": warmup_with_momentum_correction(),
        "schedule": lr_schedule(),
        "plain_optimizer": plain_optimizer_is_caught(),
        "refusals": refusals(),
    }
    with tempfile.TemporaryDirectory() as tmp:
        shared = Path(htf.broadcast_object(tmp, 0))  # one host: rank 0's directory
        results["load_model"] = load_model(shared)
        hvd.allreduce(0.0, name="loaded")  # rank 0 keeps its directory until every rank loaded
    from tests.workers.horovod_api_tf import run_checks  # the TF2 API, in the same launch

    results.update(run_checks())
    report(args.out, hvd.rank(), **results)


if __name__ == "__main__":
    main()
