"""Horovod's own TensorFlow 2 API (``horovod.tensorflow``) and its elastic Keras state on Keras 3
variables, written as Horovod's docs show; run inside ``horovod_api_keras.py``'s launch (one
TensorFlow start-up for both)."""

from __future__ import annotations

import horovod.tensorflow as hvd
import horovod.tensorflow.keras as hvd_keras
import keras
import numpy as np
import tensorflow as tf
from horovod.common.exceptions import HorovodInternalError

from tests.workers.horovod_api_keras import STEPS, B, data, diff, flat, model, reference, shard


def _grads(net: keras.Model, x, y) -> list[np.ndarray]:
    with tf.GradientTape() as tape:
        loss = keras.losses.MeanSquaredError()(y, net(x))
    return [g.numpy() for g in tape.gradient(loss, net.trainable_variables)]


def tape_training() -> dict:
    """The tensorflow2 example's step: DistributedGradientTape, then on the first batch
    broadcast_variables of the model and the optimizer, in a tf.function. Ranks start from their
    own weights, so step 1 applies the mean of gradients taken at each rank's
    weights to rank 0's."""
    x, y = data(hvd.size() * B * STEPS)
    xs, ys = shard(x), shard(y)
    mnist_model = model(seed=hvd.rank())
    starts = hvd.allgather_object(mnist_model.get_weights())
    loss = keras.losses.MeanSquaredError()
    opt = keras.optimizers.SGD(0.1)

    @tf.function
    def training_step(images, labels, first_batch):
        with tf.GradientTape() as tape:
            probs = mnist_model(images, training=True)
            loss_value = loss(labels, probs)
        tape = hvd.DistributedGradientTape(tape)
        grads = tape.gradient(loss_value, mnist_model.trainable_variables)
        opt.apply_gradients(zip(grads, mnist_model.trainable_variables))
        if first_batch:
            hvd.broadcast_variables(mnist_model.variables, root_rank=0)
            hvd.broadcast_variables(opt.variables, root_rank=0)
        return loss_value

    for batch in range(STEPS):
        training_step(xs[batch * B : (batch + 1) * B], ys[batch * B : (batch + 1) * B], batch == 0)

    ref, g = model(), hvd.size() * B
    firsts = []
    for rank, start in enumerate(starts):
        ref.set_weights(start)
        firsts.append(_grads(ref, x[rank * B : (rank + 1) * B], y[rank * B : (rank + 1) * B]))
    ref.set_weights([w - 0.1 * np.mean(gs, axis=0) for w, *gs in zip(starts[0], *firsts)])
    want = reference(ref.get_weights(), keras.optimizers.SGD(0.1), x[g:], y[g:], g)
    return {
        "diff": diff(mnist_model.get_weights(), want),
        "weights": flat(mnist_model.get_weights()),
        "start_diff": diff(starts[0], starts[1]),
    }


def partial_tape() -> dict:
    """PartialDistributedGradientTape(local_layers=...): the local layer's gradient stays this
    rank's (divided by the size), the others are averaged."""
    x, y = data(hvd.size() * B)
    net = model()
    with tf.GradientTape() as tape:
        loss = keras.losses.MeanSquaredError()(shard(y), net(shard(x)))
    tape = hvd.PartialDistributedGradientTape(tape, local_layers=[net.layers[1]])
    got = [g.numpy() for g in tape.gradient(loss, net.trainable_variables)]
    own = _grads(net, shard(x), shard(y))
    mean = [np.mean(gs, axis=0) for gs in zip(*hvd.allgather_object(own))]
    return {
        "shared_diff": diff(got[:2], mean[:2]),
        "local_diff": diff(got[2:], [g / hvd.size() for g in own[2:]]),
    }


def collectives() -> dict:
    """allreduce, grouped_allreduce, allgather, broadcast_variables on Keras 3 variables,
    eager and traced."""
    a = keras.Variable(np.full((2,), hvd.rank() + 1.0))
    b = keras.Variable(np.full((3,), 10.0 * (hvd.rank() + 1)))
    traced = tf.function(lambda: hvd.grouped_allreduce([a, b], op=hvd.Sum))()
    found = {
        "allreduce": hvd.allreduce(a).numpy().tolist(),
        "grouped": [t.numpy().tolist() for t in hvd.grouped_allreduce([a, b])],
        "grouped_traced": [t.numpy().tolist() for t in traced],
        "allgather": hvd.allgather(a).numpy().tolist(),
    }
    hvd.broadcast_variables([a, b], root_rank=1)
    found["broadcast"] = [a.numpy().tolist(), b.numpy().tolist()]
    return found


def elastic_state() -> dict:
    """hvd.elastic.KerasState with hvd.elastic.run, as the elastic Keras example: after a
    HorovodInternalError on every rank, training goes on from the last commit (weights and
    optimizer slots), with Horovod shut down and initialised again."""
    x, y = data(hvd.size() * B * STEPS)
    net = model()
    net.compile(
        optimizer=hvd_keras.DistributedOptimizer(keras.optimizers.SGD(0.1, momentum=0.9)),
        loss="mse",
    )
    state = hvd_keras.elastic.KerasState(net, batch=0, epoch=0)
    attempts, entry = [], []

    @hvd_keras.elastic.run
    def train(state):
        entry.append(net.get_weights())
        attempts.append(hvd.size())
        net.fit(
            shard(x),
            shard(y),
            batch_size=B,
            shuffle=False,
            verbose=0,
            callbacks=[
                hvd_keras.elastic.CommitStateCallback(state),
                hvd_keras.elastic.UpdateEpochStateCallback(state),
            ],
        )
        if len(attempts) == 1:
            committed.extend(net.get_weights())
            net.fit(shard(x), shard(y), batch_size=B, shuffle=False, verbose=0)  # never committed
            raise HorovodInternalError("simulated: a peer failed")
        return net.get_weights()

    committed: list = []
    final = train(state)
    want = reference(
        entry[0],
        keras.optimizers.SGD(0.1, momentum=0.9),
        np.concatenate([x, x]),
        np.concatenate([y, y]),
        hvd.size() * B,
    )
    return {
        "attempts": len(attempts),
        "restored_diff": diff(entry[1], committed),
        "diff": diff(final, want),
        "weights": flat(final),
    }


def run_checks() -> dict:
    return {
        "tape": tape_training(),
        "partial_tape": partial_tape(),
        "collectives": collectives(),
        "elastic": elastic_state(),
    }
