"""Handwritten-digit classifier (PyTorch) trained data-parallel on Horovod.

A small CNN on scikit-learn's bundled 8x8 digits: nothing to download, the same stratified
train/validation/test split on every rank (``hvdtrain.datasets.digits``), the training set
sharded by rank, gradients averaged by Horovod, the test accuracy computed over the whole
test set and printed by rank 0.

    horovodrun -np 2 -H localhost:2 --gloo python torch_examples/digits.py
    hvdtrain run -np 2 torch_examples/digits.py --epochs 5 --no-tracking
    # on Spark, data from Parquet:
    python torch_examples/spark_digits.py --master local[2] --epochs 5

The Keras twin is ``tf_examples/digits.py``: same data, split, model and evaluation.
"""

from __future__ import annotations

import argparse
import time

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import hvdtrain.torch as ht
from hvdtrain import tracking
from hvdtrain.core import args as cli
from hvdtrain.core.context import Context, main_process_only
from hvdtrain.datasets import digits
from hvdtrain.torch.tracking import log_model


def build_model(dropout: float) -> nn.Module:
    """Two 3x3 convolutions, one 2x2 max-pool, two dense layers: ~140k parameters."""
    return nn.Sequential(
        nn.Conv2d(1, 32, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(32, 64, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Dropout(dropout),
        nn.Linear(64 * (digits.IMAGE_SIZE // 2) ** 2, 128),
        nn.ReLU(),
        nn.Dropout(dropout),
        nn.Linear(128, digits.NUM_CLASSES),
    )


def as_dataset(part: digits.Part) -> TensorDataset:
    """Images get the channel axis torch's convolutions expect: (N, 1, 8, 8)."""
    return TensorDataset(torch.from_numpy(part.images).unsqueeze(1), torch.from_numpy(part.labels))


def batch_accuracy(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return (outputs.argmax(dim=1) == targets).float().mean()


def predictor(model: nn.Module, device: str):
    """Images (n, 8, 8) as numpy -> logits as numpy, for the framework-free evaluation."""

    @torch.no_grad()
    def predict(images):
        model.eval()
        return model(torch.from_numpy(images).unsqueeze(1).to(device)).cpu().numpy()

    return predict


def train(
    args: argparse.Namespace,
    ctx: Context,
    tracker: tracking.Tracker | None,
    shard: digits.Part | None = None,
) -> dict:
    """``shard``: this rank's training rows, already sharded (on Spark, read from Parquet);
    default: the whole training split, sharded here."""
    splits = digits.load_splits(seed=args.seed, train_samples=args.train_samples)
    if shard is None:
        train_loader = ht.distributed_loader(
            as_dataset(splits.train), args.batch_size, seed=args.seed
        )
    else:
        train_loader = DataLoader(
            as_dataset(shard),
            args.batch_size,
            shuffle=True,
            generator=torch.Generator().manual_seed(args.seed + ctx.rank),
        )
    model = build_model(args.dropout).to(ctx.device)
    optimizer = ht.wrap_optimizer(
        torch.optim.Adam(model.parameters(), lr=args.lr), model, **cli.optimizer_kwargs(args)
    )
    fit_started = time.perf_counter()
    history = ht.fit(
        model,
        optimizer,
        nn.CrossEntropyLoss(),
        train_loader,
        epochs=args.epochs,
        val_loader=ht.eval_loader(as_dataset(splits.val), batch_size=256),
        metrics={"accuracy": batch_accuracy},
        tracker=tracker,
        amp=args.mixed_precision,
        **cli.fit_kwargs(args),
    )
    # all workers; a resumed job with nothing left to train logs no second test point
    elapsed = time.perf_counter() - fit_started
    samples_per_sec = history.samples_trained / elapsed if history.samples_trained else None
    test_accuracy = digits.sharded_accuracy(predictor(model, ctx.device), splits.test)
    if tracker is not None and history.samples_trained:
        tracker.log_metrics({"test_accuracy": test_accuracy}, step=history.global_step)
        if args.log_model:
            log_model(
                tracker, model, torch.from_numpy(splits.test.images[:4]).unsqueeze(1).to(ctx.device)
            )
    return {
        "test_accuracy": test_accuracy,
        "test_samples": len(splits.test),
        "val_accuracy": history["val_accuracy"][-1] if history.epochs else None,
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
    args = cli.parse(digits.example_parser("PyTorch"), argv)
    ctx = ht.init(seed=args.seed)
    if args.mixed_precision and not ctx.on_gpu:
        raise SystemExit(
            f"rank {ctx.rank}: --mixed-precision (torch AMP, fp16 with a gradient scaler) needs a "
            "GPU; this worker has none"
        )
    shard = digits.read_parquet_shard(parquet) if parquet else None
    with tracking.tracked(**cli.tracking_kwargs(args)) as tracker:
        result = train(args, ctx, tracker, shard)
    report(args, ctx, result, time.perf_counter() - started, tracker.run_id if tracker else None)
    return {**result, "run_id": tracker.run_id if tracker else None}


if __name__ == "__main__":
    main()
