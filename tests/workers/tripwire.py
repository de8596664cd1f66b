"""Worker for tests/test_tripwire.py: a few data-parallel steps, healthy or with the gradient
averaging broken on purpose; each rank reports the steps it finished and how it stopped.

``--fault``:
  none        healthy training
  unreduced   torch: the step runs inside ``skip_synchronize()`` with no ``synchronize()``;
              Keras: an optimizer whose update path no longer calls ``_clip_gradients`` (what a
              Keras release that renamed it would do)
  diverged    every update is averaged, but rank 1 changes its weights outside the optimizer
              (torch: before the first step; Keras: in its ``train_step`` after each update)
"""

import os

from tests.workers.common import parse_args, report

STEPS, BATCH = 6, 4


def torch_job(args, finished: list) -> None:
    import torch

    import hvdtrain.torch as ht

    ctx = ht.init(seed=0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 1))
    optimizer = ht.wrap_optimizer(torch.optim.SGD(model.parameters(), lr=0.1), model)
    if args.fault == "diverged" and ctx.rank == 1:
        with torch.no_grad():
            model[0].bias.add_(0.01)
    # each rank its own batches, as with a sharded loader
    data = torch.Generator().manual_seed(ctx.rank)
    for step in range(1, STEPS + 1):
        x, y = torch.randn(BATCH, 3, generator=data), torch.randn(BATCH, 1, generator=data)
        optimizer.zero_grad()
        torch.nn.functional.mse_loss(model(x), y).backward()
        if args.fault == "unreduced":
            with optimizer.skip_synchronize():
                optimizer.step()
        else:
            optimizer.step()
        finished.append(step)


def keras_job(args, finished: list) -> None:
    import keras
    import numpy as np

    import hvdtrain.keras as hk

    ctx = hk.init(seed=0)

    class FutureSGD(keras.optimizers.SGD):
        """SGD whose update path skips ``_clip_gradients``."""

        def _backend_apply_gradients(self, grads, trainable_variables):
            self._backend_update_step(grads, trainable_variables, self.learning_rate)

    class DriftingModel(keras.Sequential):
        """Rank 1 nudges a bias after each update: a local change no allreduce sees."""

        def train_step(self, data):
            logs = super().train_step(data)
            if ctx.rank == 1:
                self.layers[0].bias.assign_add(keras.ops.full((4,), 0.01))
            return logs

    make = DriftingModel if args.fault == "diverged" else keras.Sequential
    model = make(
        [keras.Input((3,)), keras.layers.Dense(4, activation="tanh"), keras.layers.Dense(1)]
    )
    optimizer = (FutureSGD if args.fault == "unreduced" else keras.optimizers.SGD)(0.1)
    model.compile(optimizer=hk.wrap_optimizer(optimizer), loss="mse", jit_compile=False)
    rng = np.random.default_rng(ctx.rank)
    x, y = rng.normal(size=(STEPS * BATCH, 3)), rng.normal(size=(STEPS * BATCH, 1))
    done = keras.callbacks.LambdaCallback(
        on_train_batch_end=lambda batch, logs: finished.append(
            int(model.optimizer.iterations.numpy())
        )
    )
    model.fit(
        x,
        y,
        batch_size=BATCH,
        epochs=1,
        shuffle=False,
        verbose=0,
        callbacks=[*hk.callbacks(), done],
    )


def main():
    args = parse_args(framework=str, fault=str)
    finished: list[int] = []
    error = None
    try:
        (torch_job if args.framework == "torch" else keras_job)(args, finished)
    except Exception as err:  # the report shows how the job stopped; the error still ends it
        error = err
    report(
        args.out,
        int(os.environ["HOROVOD_RANK"]),
        finished=finished,
        error=None if error is None else f"{type(error).__name__}: {error}",
    )
    if error is not None:
        raise error


if __name__ == "__main__":
    main()
