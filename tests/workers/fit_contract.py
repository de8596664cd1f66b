"""Worker for tests/test_fit_contract.py, either framework on 2 ranks: the samples each rank sees
each epoch, and a job stopped mid-epoch after a checkpoint then resumed, against the same job
uninterrupted (same initial weights, Adam, 2 epochs of 7 steps: 50 samples, 4 per rank per step)."""

import os

import numpy as np

from tests.workers.common import parse_args, report

SAMPLES, BATCH, EPOCHS, SEED, EVERY, CRASH_AT = 50, 4, 2, 7, 3, 5


class Crash(Exception):
    """The job stopping mid-epoch, after the checkpoint of step ``EVERY``."""


def features() -> tuple[np.ndarray, np.ndarray]:
    x = np.arange(SAMPLES, dtype="float64").reshape(-1, 1)  # a sample's feature is its index
    return x, np.sin(x / 7.0)


def torch_job(out) -> dict:
    import torch
    from torch.utils.data import TensorDataset

    import hvdtrain.torch as ht

    ht.init(seed=0)
    torch.set_default_dtype(torch.float64)
    x, y = map(torch.from_numpy, features())
    order = {}
    loader = ht.distributed_loader(TensorDataset(x, y), BATCH, seed=SEED)
    for epoch in range(EPOCHS):
        ht.set_epoch(loader, epoch)
        order[epoch] = [int(v) for batch, _ in loader for v in batch[:, 0]]

    def train(checkpoint_dir, crash=False, resume=False) -> list[float]:
        torch.manual_seed(1)  # the same initial weights every time
        model = torch.nn.Sequential(torch.nn.Linear(1, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))
        optimizer = ht.wrap_optimizer(
            torch.optim.Adam(model.parameters(), lr=0.01), model, lr_scaling="none"
        )
        steps = []

        def loss(outputs, targets):
            steps.append(None)
            if crash and len(steps) > CRASH_AT:
                raise Crash()
            return torch.nn.functional.mse_loss(outputs, targets)

        try:
            ht.fit(
                model,
                optimizer,
                loss,
                ht.distributed_loader(TensorDataset(x, y), BATCH, seed=SEED),
                epochs=EPOCHS,
                checkpoint_dir=checkpoint_dir,
                checkpoint_every=EVERY,
                resume=resume,
                progress=False,
            )
        except Crash:
            pass
        return torch.cat([p.detach().flatten() for p in model.parameters()]).tolist()

    return {"order": order, **resumed_vs_whole(train, out)}


def keras_job(out) -> dict:
    import keras

    import hvdtrain.keras as hk

    hk.init(seed=0)
    keras.config.set_floatx("float64")
    x, y = features()
    seen: list[list[int]] = []

    class Recording(keras.Sequential):
        def train_step(self, data):
            seen[-1].extend(int(v) for v in keras.ops.convert_to_numpy(data[0])[:, 0])
            return super().train_step(data)

    def model_of(kind):
        model = kind(
            [
                keras.Input((1,)),
                keras.layers.Dense(
                    8, activation="tanh", kernel_initializer=keras.initializers.GlorotUniform(1)
                ),
                keras.layers.Dense(1, kernel_initializer=keras.initializers.GlorotUniform(2)),
            ]
        )
        model.compile(
            optimizer=hk.wrap_optimizer(keras.optimizers.Adam(0.01), lr_scaling="none"),
            loss="mse",
            jit_compile=False,
            run_eagerly=kind is Recording,
        )
        return model

    epochs = keras.callbacks.LambdaCallback(on_epoch_begin=lambda epoch, logs: seen.append([]))
    hk.fit(
        model_of(Recording),
        x,
        y,
        batch_size=BATCH,
        epochs=EPOCHS,
        seed=SEED,
        callbacks=[epochs],
        verbose=0,
    )
    order = dict(enumerate(seen))

    def train(checkpoint_dir, crash=False, resume=False) -> list[float]:
        model = model_of(keras.Sequential)

        def stop(batch, logs):
            if crash and int(model.optimizer.iterations.numpy()) == CRASH_AT:
                raise Crash()

        try:
            hk.fit(
                model,
                x,
                y,
                batch_size=BATCH,
                epochs=EPOCHS,
                seed=SEED,
                checkpoint_dir=checkpoint_dir,
                checkpoint_every=EVERY,
                resume=resume,
                callbacks=[keras.callbacks.LambdaCallback(on_train_batch_end=stop)],
                verbose=0,
            )
        except Crash:
            pass
        return np.concatenate([np.ravel(w) for w in model.get_weights()]).tolist()

    return {"order": order, **resumed_vs_whole(train, out)}


def resumed_vs_whole(train, out) -> dict:
    from hvdtrain.core.checkpoint import CheckpointDir, read_meta

    whole = train(str(out / "whole"))
    crashed = out / "crashed"
    train(str(crashed), crash=True)
    [(step, sidecar)] = CheckpointDir(crashed, "").checkpoints()
    meta = read_meta(sidecar)[1]
    resumed = train(str(crashed), resume=True)
    return {
        "whole": whole,
        "resumed": resumed,
        "checkpoint": {
            "step": meta.step,
            "epoch": meta.epoch,
            "epoch_samples": meta.extra["epoch_samples"],
        },
    }


def main():
    args = parse_args(framework=str)
    found = (torch_job if args.framework == "torch" else keras_job)(args.out)
    report(args.out, int(os.environ["HOROVOD_RANK"]), **found)


if __name__ == "__main__":
    main()
