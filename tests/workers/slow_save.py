"""Worker for tests/test_slow_save.py: a 2-rank job under ``hvdtrain run --hang-timeout T`` whose
rank 0 takes ``--sleep`` seconds (longer than T) to save its first checkpoint (torch) or to log
the model (Keras), after which the job goes on with collectives. A job the hang bound took for
hung would end there; this one must finish."""

import os
import time

import numpy as np

from hvdtrain import tracking
from tests.workers.common import parse_args, report


class SlowOnce:
    """Sleeps ``seconds`` on rank 0 the first time it is called after ``arm()``."""

    def __init__(self, seconds: float):
        self.seconds, self.armed = seconds, False

    def arm(self):
        self.armed = os.environ.get("HOROVOD_RANK") == "0"

    def __call__(self, *args):
        if self.armed:
            self.armed = False
            time.sleep(self.seconds)


def torch_job(args, slow: SlowOnce) -> dict:
    import torch
    from torch.utils.data import TensorDataset

    import hvdtrain.torch as ht

    ctx = ht.init(seed=0)
    model = torch.nn.Linear(3, 1)
    optimizer = ht.wrap_optimizer(torch.optim.SGD(model.parameters(), lr=0.05), model)
    # a model whose state is slow to gather: its save is slow
    model.register_state_dict_post_hook(slow)
    slow.arm()
    data = TensorDataset(
        torch.randn(64, 3, generator=torch.Generator().manual_seed(0)), torch.ones(64, 1)
    )
    history = ht.fit(
        model,
        optimizer,
        torch.nn.MSELoss(),
        ht.distributed_loader(data, 8),
        epochs=2,
        checkpoint_dir=args.out / "ckpt",
        progress=False,
    )
    return {"steps": history.global_step, "size": ctx.size}


def keras_job(args, slow: SlowOnce) -> dict:
    import keras

    import hvdtrain.keras as hk
    from hvdtrain.keras.tracking import log_model

    ctx = hk.init(seed=0)

    class SlowToDescribe(keras.layers.Dense):
        """A layer whose config takes long to build:
        saving the model (a checkpoint, a model upload) is slow."""

        def get_config(self):
            slow()
            return super().get_config()

    model = keras.Sequential([keras.Input((3,)), SlowToDescribe(1)])
    model.compile(
        optimizer=hk.wrap_optimizer(keras.optimizers.SGD(0.05)), loss="mse", jit_compile=False
    )
    x, y = np.random.default_rng(0).normal(size=(64, 3)), np.ones((64, 1))
    with tracking.tracked(experiment="slow") as tracker:
        history = hk.fit(
            model, x, y, batch_size=8, epochs=2, checkpoint_dir=str(args.out / "ckpt"), verbose=0
        )
        slow.arm()
        uri = log_model(tracker, model, x[:2])
        loss = hk.average_metrics({"loss": float(model.evaluate(x, y, verbose=0))})["loss"]
    return {
        "steps": int(model.optimizer.iterations.numpy()),
        "size": ctx.size,
        "epochs": len(history.epoch),
        "model_uri": uri,
        "loss": loss,
    }


def main():
    args = parse_args(framework=str, sleep=float)
    slow = SlowOnce(args.sleep)
    found = (torch_job if args.framework == "torch" else keras_job)(args, slow)
    report(args.out, int(os.environ["HOROVOD_RANK"]), **found)


if __name__ == "__main__":
    main()
