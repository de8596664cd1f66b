"""Checkpoint checks for hvdtrain.keras across world sizes.

Each run loads the newest checkpoint in ``--ckpt`` (written by a job of another size, or none),
reports the state it got, trains an epoch and saves again. On more than one rank it also loads a
truncated copy and reports the error each rank got. ``keras_train.py`` makes the first checkpoint.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import keras
import numpy as np

import hvdtrain.keras as hk
from tests.workers.common import parse_args, report

keras.config.set_floatx("float64")


def _compiled_model(rank: int) -> keras.Model:
    model = keras.Sequential(
        [
            keras.Input((3,)),
            keras.layers.Dense(
                4, activation="tanh", kernel_initializer=keras.initializers.GlorotUniform(rank)
            ),
            keras.layers.Dense(1),
        ]
    )
    model.compile(optimizer=hk.wrap_optimizer(keras.optimizers.Adam(0.01)), loss="mse")
    return model


def _train(model: keras.Model, epoch: int) -> None:
    rng = np.random.default_rng(epoch)
    x = rng.normal(size=(24, 3))
    xs, ys = hk.shard(x, np.cos(x).sum(axis=1, keepdims=True), seed=epoch)
    model.fit(xs, ys, batch_size=4, verbose=0, callbacks=hk.callbacks())


def _state(model: keras.Model) -> dict:
    return {
        "weights": [w.ravel().tolist() for w in model.get_weights()],
        # the LR is compared on its own
        "optimizer": [
            np.ravel(v.numpy()).tolist()
            for v in model.optimizer.variables
            if not v.path.endswith("learning_rate")
        ],
        "learning_rate": float(model.optimizer.learning_rate.numpy()),
    }


def _truncated_copy(ckpt: Path, into: Path) -> Path:
    """A copy of the newest checkpoint whose payload lost its second half (rank 0 makes it)."""
    sidecar = sorted(ckpt.glob("step-*.json"))[-1]
    payload = sidecar.with_suffix(".keras")
    into.mkdir(parents=True, exist_ok=True)
    shutil.copy(sidecar, into / sidecar.name)
    (into / payload.name).write_bytes(payload.read_bytes()[: payload.stat().st_size // 2])
    return into / payload.name


def resume_and_save(ckpt: Path, out: Path) -> dict:
    """Resume from the newest checkpoint in ``ckpt`` (if any), train one epoch, save;
    report both states."""
    ctx = hk.current()
    model = _compiled_model(ctx.rank)
    meta = hk.load_checkpoint(ckpt, model)
    values = {
        "size": ctx.size,
        "loaded": _state(model),
        "meta": None
        if meta is None
        else {
            "step": meta.step,
            "epoch": meta.epoch,
            "world_size": meta.world_size,
            "config": meta.config,
            "base_lrs": meta.base_lrs,
        },
    }
    epoch = 0 if meta is None else meta.epoch + 1
    _train(model, epoch)
    values["saved_step"] = int(model.optimizer.iterations.numpy())
    hk.save_checkpoint(
        ckpt, model, step=values["saved_step"], epoch=epoch, config={"saved_by_size": ctx.size}
    )
    values["saved"] = _state(model)
    if ctx.size > 1:
        broken = ctx.broadcast_object(
            _truncated_copy(ckpt, out / "broken") if ctx.is_main else None, 0
        )
        try:
            hk.load_checkpoint(broken, _compiled_model(ctx.rank))
            values["truncated_error"] = None
        except hk.CheckpointError as err:
            values["truncated_error"] = str(err)
        values["truncated_path"] = str(broken)
    return values


def main() -> None:
    args = parse_args(ckpt=Path)
    ctx = hk.init(seed=0)
    report(args.out, ctx.rank, **resume_and_save(args.ckpt, args.out))


if __name__ == "__main__":
    main()
