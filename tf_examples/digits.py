"""Handwritten-digit classifier (Keras 3 on TensorFlow) trained data-parallel on Horovod.

A small CNN on scikit-learn's bundled 8x8 digits: nothing to download, the same stratified
train/validation/test split on every rank (``hvdtrain.datasets.digits``), the training set
sharded by rank, gradients averaged by Horovod, the test accuracy computed over the whole
test set and printed by rank 0.

    horovodrun -np 2 -H localhost:2 --gloo python tf_examples/digits.py
    hvdtrain run -np 2 tf_examples/digits.py --epochs 5 --no-tracking
    # on Spark, data from Parquet:
    python tf_examples/spark_digits.py --master local[2] --epochs 5

The PyTorch twin is ``torch_examples/digits.py``: same data, split, model and evaluation.
"""

from __future__ import annotations

import argparse
import time

import keras

import hvdtrain.keras as hk
from hvdtrain import tracking
from hvdtrain.core import args as cli
from hvdtrain.core.context import Context, main_process_only
from hvdtrain.datasets import digits
from hvdtrain.keras.tracking import log_model


def build_model(dropout: float) -> keras.Model:
    """Two 3x3 convolutions, one 2x2 max-pool, two dense layers: ~140k parameters."""
    return keras.Sequential(
        [
            keras.Input((digits.IMAGE_SIZE, digits.IMAGE_SIZE, 1)),
            keras.layers.Conv2D(32, 3, padding="same", activation="relu"),
            keras.layers.Conv2D(64, 3, padding="same", activation="relu"),
            keras.layers.MaxPooling2D(2),
            keras.layers.Flatten(),
            keras.layers.Dropout(dropout),
            keras.layers.Dense(128, activation="relu"),
            keras.layers.Dropout(dropout),
            keras.layers.Dense(digits.NUM_CLASSES),
        ]
    )


def with_channel(images):
    """Images get the channel axis Keras's convolutions expect: (N, 8, 8, 1)."""
    return images[..., None]


def train(
    args: argparse.Namespace,
    ctx: Context,
    tracker: tracking.Tracker | None,
    shard: digits.Part | None = None,
) -> dict:
    """``shard``: this rank's training rows, already sharded (on Spark, read from Parquet);
    default: the whole training split, sharded by ``hk.fit``."""
    splits = digits.load_splits(seed=args.seed, train_samples=args.train_samples)
    model = build_model(args.dropout)
    optimizer = hk.wrap_optimizer(keras.optimizers.Adam(args.lr), **cli.optimizer_kwargs(args))
    # Horovod's ops have no XLA kernels, and Keras would pick XLA on a GPU by itself.
    model.compile(
        optimizer=optimizer,
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
        jit_compile=False,
    )
    # Each epoch every rank trains on its equal share of a fresh permutation (so all run the same
    # number of steps), or within its Parquet shard on Spark; checkpoints, resume, tracking and
    # elastic restarts are hk.fit's, as ht.fit's in the torch twin.
    train_part = splits.train if shard is None else shard
    fit_started = time.perf_counter()
    history = hk.fit(
        model,
        with_channel(train_part.images),
        train_part.labels,
        batch_size=args.batch_size,
        epochs=args.epochs,
        seed=args.seed,
        tracker=tracker,
        sharded=shard is not None,
        validation_data=(with_channel(splits.val.images), splits.val.labels),
        **cli.fit_kwargs(args),
    )
    # all workers; a resumed job with nothing left to train logs no second test point
    elapsed = time.perf_counter() - fit_started
    samples_per_sec = history.samples_trained / elapsed if history.samples_trained else None
    test_accuracy = digits.sharded_accuracy(
        lambda images: keras.ops.convert_to_numpy(model(with_channel(images), training=False)),
        splits.test,
    )
    if tracker is not None and history.samples_trained:
        tracker.log_metrics(
            {"test_accuracy": test_accuracy}, step=int(model.optimizer.iterations.numpy())
        )
        if args.log_model:
            log_model(tracker, model, with_channel(splits.test.images[:4]))
    val_accuracy = history.history.get("val_accuracy", [])
    return {
        "test_accuracy": test_accuracy,
        "test_samples": len(splits.test),
        "val_accuracy": val_accuracy[-1] if val_accuracy else None,
        "samples_per_sec": samples_per_sec,
    }


@main_process_only
def report(
    args: argparse.Namespace, ctx: Context, result: dict, wall_time_s: float, run_id: str | None
) -> None:
    print(
        f"test accuracy: {result['test_accuracy']:.4f} on {result['test_samples']} images "
        f"({ctx.size} workers, {wall_time_s:.1f} s)",
        flush=True,
    )
    cli.write_results(
        args,
        ctx,
        example="digits",
        metric_name="test_accuracy",
        metric=result["test_accuracy"],
        wall_time_s=wall_time_s,
        run_id=run_id,
        **result,
    )


def main(argv: list[str] | None = None, parquet: str | None = None) -> dict:
    """``parquet``: train on this rank's shard of that dataset (``spark_digits.py``)."""
    started = time.perf_counter()
    args = cli.parse(digits.example_parser("Keras 3"), argv)
    ctx = hk.init(seed=args.seed)
    if args.mixed_precision:  # bf16 compute, fp32 weights and gradients: no loss scale to agree on
        keras.mixed_precision.set_global_policy("mixed_bfloat16")
    shard = digits.read_parquet_shard(parquet) if parquet else None
    with tracking.tracked(**cli.tracking_kwargs(args)) as tracker:
        result = train(args, ctx, tracker, shard)
    report(args, ctx, result, time.perf_counter() - started, tracker.run_id if tracker else None)
    return {**result, "run_id": tracker.run_id if tracker else None}


if __name__ == "__main__":
    main()
