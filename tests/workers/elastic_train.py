"""Elastic digits training for tests/test_elastic.py, either framework, tracked in MLflow.

Each training batch appends ``{"pid", "host", "rank", "size"}`` to ``<out>/progress.jsonl`` and
sleeps ``--batch-sleep`` s, so the test can remove and add workers while training runs. Each
commit (``save``), rollback (``restore``) and membership change (``sync``) of the elastic state
appends the digest of the model and optimizer state right after it to ``<out>/state.jsonl``.
Rank 0 writes ``<out>/result.json`` at the end.
"""

import json
import os
import socket
import time

from hvdtrain import elastic, tracking
from hvdtrain.datasets import digits
from tests.workers.common import parse_args

BATCH, LR = 16, 1e-3


def progress_line(out, ctx) -> str:
    return (
        json.dumps(
            {
                "pid": os.getpid(),
                "host": os.environ.get("HOROVOD_HOSTNAME"),
                "rank": ctx.rank,
                "size": ctx.size,
                "time": time.time(),
            }
        )
        + "\n"
    )


def train_torch(args, tracker):
    import torch

    import hvdtrain.torch as ht
    from torch_examples.digits import as_dataset, batch_accuracy, build_model, predictor

    ctx = ht.current()
    splits = digits.load_splits(seed=0, train_samples=args.train_samples)
    model = build_model(0.0)
    optimizer = ht.wrap_optimizer(torch.optim.Adam(model.parameters(), lr=LR), model)
    loss = torch.nn.CrossEntropyLoss()

    def slowed_loss(outputs, targets):
        with open(args.out / "progress.jsonl", "a") as f:
            f.write(progress_line(args.out, ctx))
        time.sleep(args.batch_sleep)
        return loss(outputs, targets)

    history = ht.fit(
        model,
        optimizer,
        slowed_loss,
        ht.distributed_loader(as_dataset(splits.train), BATCH),
        epochs=args.epochs,
        val_loader=ht.eval_loader(as_dataset(splits.val), 256),
        metrics={"accuracy": batch_accuracy},
        tracker=tracker,
        log_every=1,
        commit_every=args.commit_every,
        progress=False,
    )
    return {
        "steps": history.global_step,
        "epochs": history.epochs,
        "test_accuracy": digits.sharded_accuracy(predictor(model, "cpu"), splits.test),
    }


def train_keras(args, tracker):
    import keras

    import hvdtrain.keras as hk
    from tf_examples.digits import build_model, with_channel

    ctx = hk.current()
    splits = digits.load_splits(seed=0, train_samples=args.train_samples)
    model = build_model(0.0)
    model.compile(
        optimizer=hk.wrap_optimizer(keras.optimizers.Adam(LR)),
        jit_compile=False,
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )

    class Progress(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            with open(args.out / "progress.jsonl", "a") as f:
                f.write(progress_line(args.out, ctx))
            time.sleep(args.batch_sleep)

    history = hk.fit(
        model,
        with_channel(splits.train.images),
        splits.train.labels,
        batch_size=BATCH,
        epochs=args.epochs,
        validation_data=(with_channel(splits.val.images), splits.val.labels),
        callbacks=[Progress()],
        tracker=tracker,
        log_every=1,
        commit_every=args.commit_every,
        progress=False,
    )
    accuracy = digits.sharded_accuracy(
        lambda images: keras.ops.convert_to_numpy(model(with_channel(images), training=False)),
        splits.test,
    )
    return {
        "steps": int(model.optimizer.iterations.numpy()),
        "test_accuracy": accuracy,
        "epochs": [
            {"epoch": e + 1, "loss": loss}
            for e, loss in zip(history.epoch, history.history["loss"])
        ],
    }


def model_weights(snapshot) -> list:
    """The model's weights alone (a membership change re-scales the LR in the optimizer's state)."""
    model = snapshot.model
    return (
        [model.state_dict()] if hasattr(model, "state_dict") else [v.numpy() for v in model.weights]
    )


def record_state_events(out) -> None:
    """Wrap the elastic state's save, restore and sync to log the digests of the whole state
    (model and optimizer) and of the model's weights after each."""
    for name in ("save", "restore", "sync"):
        original = getattr(elastic.TrainingState, name)

        def recorded(self, _original=original, _name=name):
            _original(self)
            with open(out / "state.jsonl", "a") as f:
                f.write(
                    json.dumps(
                        {
                            "event": _name,
                            "pid": os.getpid(),
                            "host": socket.gethostname(),
                            "rank": self.ctx.rank,
                            "size": self.ctx.size,
                            "step": self.position.step,
                            "time": time.time(),
                            "digest": elastic.digest(self.snapshot.capture()),
                            "weights": elastic.digest(model_weights(self.snapshot)),
                        }
                    )
                    + "\n"
                )

        setattr(elastic.TrainingState, name, recorded)


def main():
    args = parse_args(
        framework=str,
        epochs=int,
        train_samples=int,
        batch_sleep=float,
        commit_every=int,
        tracking=int,
    )
    if args.framework == "torch":
        import hvdtrain.torch as adapter
    else:
        import hvdtrain.keras as adapter
    ctx = adapter.init(seed=0)
    record_state_events(args.out)
    with tracking.tracked(
        {"framework": args.framework}, "elastic", enabled=bool(args.tracking)
    ) as tracker:
        result = (train_torch if args.framework == "torch" else train_keras)(args, tracker)
    if ctx.is_main:
        (args.out / "result.json").write_text(
            json.dumps({**result, "run_id": tracker.run_id if tracker else None, "size": ctx.size})
        )


if __name__ == "__main__":
    main()
