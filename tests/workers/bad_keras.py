"""Worker for tests/test_bad_input.py: a tiny hvdtrain.keras job fed bad checkpoints, a bad
checkpoint directory or NaN data (modes as in ``bad_torch.py``; ``empty``: ``hk.fit`` on empty
arrays; ``jit``: compiled with jit_compile=True; ``lengths``: x and y of different lengths;
``oversized``: a batch larger than a rank's share and a warmup longer than the job)."""

from __future__ import annotations

import keras
import numpy as np

import hvdtrain.keras as hk
from tests.workers.bad_common import args as parse
from tests.workers.bad_common import recorded, snapshot

args = parse()
ctx = hk.init(seed=0)
model = keras.Sequential(
    [
        keras.Input((4,)),
        keras.layers.Dense(args.width or 8, activation="tanh"),
        keras.layers.Dense(1),
    ]
)
model.compile(
    optimizer=hk.wrap_optimizer(
        keras.optimizers.SGD(0.05), warmup_steps=100 * (args.mode == "oversized")
    ),
    loss="mse",
    jit_compile=args.mode == "jit",
)
inputs = np.random.default_rng(0).normal(size=(64, 4))
x, y = hk.shard(inputs, inputs.sum(axis=1, keepdims=True), seed=0)


def train(epochs: int, resume: bool) -> None:
    meta = hk.load_checkpoint(args.ckpt, model) if resume else None
    model.fit(
        x,
        y,
        batch_size=8,
        epochs=epochs,
        initial_epoch=meta.epoch if meta else 0,
        verbose=0,
        callbacks=[*hk.callbacks(), hk.CheckpointCallback(args.ckpt)],
    )


with recorded(args.out, ctx.rank) as report:
    if args.mode == "resume":
        print(f"resumed at step {hk.load_checkpoint(args.ckpt, model).step}", flush=True)
    elif args.mode in ("jit", "lengths"):
        targets = inputs.sum(axis=1, keepdims=True)
        hk.fit(
            model, inputs, targets[: 60 if args.mode == "lengths" else None], batch_size=8, epochs=1
        )
    elif args.mode == "oversized":
        hk.fit(model, inputs, inputs.sum(axis=1, keepdims=True), batch_size=5000, epochs=1)
    elif args.mode == "empty":
        none = inputs[:0]
        hk.fit(model, none, none.sum(axis=1, keepdims=True), batch_size=8, epochs=args.epochs)
    elif args.mode == "nan":
        train(1, resume=False)
        report["before"] = snapshot(args.ckpt) if ctx.is_main else None
        if ctx.rank == 1:
            x[5, 0] = np.nan  # rank 1 only: its loss goes NaN, rank 0's not yet
        train(args.epochs, resume=True)
    else:
        train(args.epochs, resume=args.mode == "continue")
