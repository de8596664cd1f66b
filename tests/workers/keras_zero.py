"""Worker for tests/test_zero_keras.py:
Keras optimizer-state sharding against the unsharded optimizer."""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

import hvdtrain.keras as hk
from hvdtrain.keras import zero
from tests.workers.common import parse_args, report

keras.config.set_floatx("float64")
args = parse_args(mode=str, ckpt=str, out_ckpt=str, steps=int)
ctx = hk.init(seed=100)
GLOBAL_BATCH = 12  # divisible by 1, 2 and 3 workers
CLIP = 0.3


def make_optimizer(name: str, accumulation: int = 1, clip: float | None = CLIP):
    if name == "sgd":
        return keras.optimizers.SGD(
            0.05,
            momentum=0.9,
            global_clipnorm=clip,
            gradient_accumulation_steps=accumulation if accumulation > 1 else None,
        )
    opt = keras.optimizers.AdamW(
        0.01,
        weight_decay=0.1,
        global_clipnorm=clip,
        gradient_accumulation_steps=accumulation if accumulation > 1 else None,
    )
    opt.exclude_from_weight_decay(var_names=["bias"])
    return opt


def mlp(seed: int = 0) -> keras.Model:
    """83 parameters (kernels 70, biases 13), as the torch worker's."""
    init = keras.initializers.GlorotUniform(seed)
    return keras.Sequential(
        [
            keras.Input((4,)),
            keras.layers.Dense(10, activation="tanh", kernel_initializer=init),
            keras.layers.Dense(3, kernel_initializer=init),
        ]
    )


def data(n: int = 2000):
    rng = np.random.default_rng(7)
    return rng.normal(size=(n, 4)), rng.normal(size=(n, 3))


def wrapped(
    model, name, shard, accumulation=1, warmup_steps=0, lr_scaling="none", clip=CLIP, **options
):
    opt = hk.wrap_optimizer(
        make_optimizer(name, accumulation, clip),
        lr_scaling=lr_scaling,
        warmup_steps=warmup_steps,
        accumulation_steps=accumulation,
        shard_optimizer_state=shard,
        **options,
    )
    opt.build(model.trainable_variables)
    hk.broadcast_model(model, opt)
    return opt


def train(model, opt, first, steps, accumulation=1):
    x, y = data()
    per_rank = GLOBAL_BATCH // ctx.size

    @tf.function
    def step(xb, yb):
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(tf.square(model(xb) - yb))
        opt.apply(tape.gradient(loss, model.trainable_variables), model.trainable_variables)

    for s in range(first, first + steps):
        for micro in range(accumulation):
            start = (s * accumulation + micro) * GLOBAL_BATCH + ctx.rank * per_rank
            step(x[start : start + per_rank], y[start : start + per_rank])


def flat(model) -> list[float]:
    return np.concatenate([np.ravel(w) for w in model.get_weights()]).tolist()


def slot_numels(opt) -> list[int]:
    """Elements of each optimizer variable made per model (or shard) variable."""
    return sorted(int(np.prod(v.shape)) for v in opt.variables if len(v.shape) > 0)


def equivalence(name, accumulation):
    runs = {}
    for shard in (False, True):
        model = mlp()
        opt = wrapped(model, name, shard, accumulation, warmup_steps=3, lr_scaling="linear")
        train(model, opt, 0, 20, accumulation)
        runs[shard] = {
            "final": flat(model),
            "slots": slot_numels(opt),
            "state_bytes": zero.state_bytes(opt),
            "iterations": int(opt.iterations.numpy()),
        }
    unclipped = mlp()  # the same without clipping: proves clipping acted
    train(
        unclipped,
        wrapped(unclipped, name, True, accumulation, 3, "linear", clip=None),
        0,
        20,
        accumulation,
    )
    return {"unsharded": runs[False], "sharded": runs[True], "unclipped": flat(unclipped)}


def fit_equivalence():
    """model.fit with hk.callbacks(): sharded and unsharded reach the same weights."""
    x, y = data(240)
    finals = {}
    for shard in (False, True):
        model = mlp()
        model.compile(
            optimizer=hk.wrap_optimizer(make_optimizer("adamw"), shard_optimizer_state=shard),
            loss="mse",
        )
        shard_x, shard_y = hk.shard(x, y, seed=0)
        model.fit(
            shard_x,
            shard_y,
            batch_size=GLOBAL_BATCH // ctx.size,
            epochs=2,
            shuffle=False,
            verbose=0,
            callbacks=hk.callbacks(),
        )
        finals[shard] = flat(model)
    return {"unsharded": finals[False], "sharded": finals[True]}


def reductions():
    """SGD, 10 steps, with each wire option, sharded and unsharded: op="sum" (the update sees
    N x the average) and fp16 compression (float16 on the wire; sharded sums the slices in the
    gradients' float64, unsharded in Gloo's float16)."""
    finals = {}
    for options in ({"op": "sum"}, {"compression": "fp16"}, {}):
        key = ",".join(f"{k}={v}" for k, v in options.items()) or "plain"
        for shard in (False, True):
            model = mlp()
            train(model, wrapped(model, "sgd", shard, clip=None, **options), 0, 10)
            finals[f"{key}/{'sharded' if shard else 'unsharded'}"] = flat(model)
    return finals


def suite():
    return {
        f"{name}-{acc}": equivalence(name, acc) for name in ("sgd", "adamw") for acc in (1, 2)
    } | {"fit": fit_equivalence(), "reductions": reductions()}


def compiled(shard: bool):
    """lr_scaling="none": with the same global batch,
    a resumed run on any world size continues the trajectory."""
    model = mlp()
    model.compile(
        optimizer=hk.wrap_optimizer(
            make_optimizer("adamw"), lr_scaling="none", shard_optimizer_state=shard
        ),
        loss="mse",
    )
    model.optimizer.build(model.trainable_variables)
    hk.broadcast_model(model)
    return model


def save():
    model = compiled(True)
    k = args.steps
    train(model, model.optimizer, 0, k)
    hk.save_checkpoint(args.ckpt, model, step=k)
    saved = {"weights": flat(model), "slots": slot_numels(model.optimizer)}
    train(model, model.optimizer, k, k)
    at_2k = flat(model)
    train(model, model.optimizer, 2 * k, k)
    return {"saved": saved, "at_2k": at_2k, "at_3k": flat(model)}


def resume():
    model = compiled(args.mode == "resume-sharded")
    meta = hk.load_checkpoint(args.ckpt, model)
    loaded = {
        "step": meta.step,
        "saved_world_size": meta.world_size,
        "weights": flat(model),
        "iterations": int(model.optimizer.iterations.numpy()),
        "slots": slot_numels(model.optimizer),
    }
    train(model, model.optimizer, meta.step, args.steps)
    if args.out_ckpt:
        hk.save_checkpoint(args.out_ckpt, model, step=meta.step + args.steps)
    return {"loaded": loaded, "continued": flat(model)}


modes = {"suite": suite, "save": save, "resume": resume, "resume-sharded": resume}
report(args.out, ctx.rank, size=ctx.size, **modes[args.mode]())
