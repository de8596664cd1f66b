"""scikit-learn's bundled 8x8 handwritten digits (1,797 images, no download), split for training.

The split is a pure function of the seed, so every rank computes the same train/validation/test
sets without talking to the others; the examples then shard the training set by rank. It is
stratified: with about 180 images per class, a random split can leave a class short in the
small test set. No torch or TensorFlow here; the examples add the channel axis they need.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

from ..core import args as cli
from ..core.context import Context, current

NUM_CLASSES = 10
IMAGE_SIZE = 8
_MAX_PIXEL = 16.0  # the dataset's pixels are counts 0..16


@dataclass(frozen=True)
class Part:
    """One split: ``images`` (N, 8, 8) float32 in [0, 1], ``labels`` (N,) int64 in 0..9."""

    images: np.ndarray
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.labels)


@dataclass(frozen=True)
class Splits:
    train: Part
    val: Part
    test: Part


def load_splits(
    seed: int = 0,
    val_fraction: float = 0.1,
    test_fraction: float = 0.2,
    train_samples: int | None = None,
) -> Splits:
    """Stratified train/validation/test split of the digits, identical for identical arguments.

    ``train_samples`` keeps a stratified subset of the training set (quick runs); the
    validation and test sets do not change with it.
    """
    for name, value in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if not 0.0 < value < 1.0:
            raise ValueError(f"{name} must be between 0 and 1, got {value}")
    if val_fraction + test_fraction >= 1.0:
        raise ValueError(
            f"val_fraction + test_fraction must be < 1, got {val_fraction + test_fraction}"
        )
    data = load_digits()
    images = (data.images / _MAX_PIXEL).astype(np.float32)
    labels = data.target.astype(np.int64)
    rest_x, test_x, rest_y, test_y = train_test_split(
        images, labels, test_size=test_fraction, stratify=labels, random_state=seed
    )
    train_x, val_x, train_y, val_y = train_test_split(
        rest_x,
        rest_y,
        test_size=val_fraction / (1 - test_fraction),
        stratify=rest_y,
        random_state=seed,
    )
    if train_samples is not None:
        if not NUM_CLASSES <= train_samples <= len(train_y):
            raise ValueError(
                f"train_samples must be between {NUM_CLASSES} and {len(train_y)}, got "
                f"{train_samples}"
            )
        if train_samples < len(train_y):
            train_x, _, train_y, _ = train_test_split(
                train_x, train_y, train_size=train_samples, stratify=train_y, random_state=seed
            )
    return Splits(Part(train_x, train_y), Part(val_x, val_y), Part(test_x, test_y))


def accuracy(scores: np.ndarray, labels: np.ndarray) -> float:
    """Fraction of rows of ``scores`` (N, classes: logits or probabilities)
    whose argmax is the label."""
    scores, labels = np.asarray(scores), np.asarray(labels)
    if scores.ndim != 2 or labels.shape != scores.shape[:1]:
        raise ValueError(
            f"accuracy needs scores (N, classes) and labels (N,), got {scores.shape} and "
            f"{labels.shape}"
        )
    if len(labels) == 0:
        raise ValueError("accuracy of an empty set is undefined")
    return float(np.mean(scores.argmax(axis=1) == labels))


def sharded_accuracy(
    predict: Callable[[np.ndarray], np.ndarray], part: Part, ctx: Context | None = None
) -> float:
    """Accuracy on all of ``part``, each rank predicting only its share (every ``size``-th image).

    ``predict`` maps images (n, 8, 8) to scores (n, classes). Collective: every rank calls it.
    The ranks' correct counts are combined, so the result is exact and the same on every rank.
    """
    ctx = ctx or current()
    images, labels = part.images[ctx.rank :: ctx.size], part.labels[ctx.rank :: ctx.size]
    correct = accuracy(predict(images), labels) * len(labels) if len(labels) else 0.0
    totals = ctx.average({"correct": correct, "count": float(len(labels))})
    if totals["count"] == 0:
        raise ValueError("accuracy of an empty set is undefined")
    return totals["correct"] / totals["count"]


def example_parser(framework: str) -> argparse.ArgumentParser:
    """The flags of the digits examples (``framework`` names the twin in ``--help``)."""
    parser = cli.training_parser(
        f"Train a small CNN on scikit-learn's digits with {framework} on Horovod.",
        epochs=15,
        batch_size=32,
        lr=1e-3,
    )
    group = parser.add_argument_group("digits")
    group.add_argument(
        "--train-samples",
        type=_train_samples,
        default=None,
        help="train on a stratified subset of this many images; default: all of it",
    )
    group.add_argument("--dropout", type=float, default=0.25)
    group.add_argument(
        "--log-model", action="store_true", help="log the trained model to the MLflow run"
    )
    group.add_argument(
        "--mixed-precision",
        action="store_true",
        help="PyTorch: AMP (fp16 autocast and a gradient scaler; needs a GPU); Keras: the "
        "mixed_bfloat16 policy (no loss scaling, so every rank takes the same steps)",
    )
    return parser


def _train_samples(text: str) -> int:
    """``--train-samples``, refused at parse time (one line) rather than by
    every rank after init."""
    value, most = int(text), len(load_splits().train)  # the split's sizes do not depend on the seed
    if not NUM_CLASSES <= value <= most:
        raise argparse.ArgumentTypeError(
            f"must be between {NUM_CLASSES} (one per class) and {most} "
            f"(the training split), got {value}"
        )
    return value


# --- on Spark: the training split as a Parquet dataset, each rank reading its own shard -----------

PARQUET_SCHEMA = (
    "image array<float>, label long"  # image: the 64 pixels of one 8x8 digit, row-major
)


def write_parquet(spark, part: Part, path: str) -> None:
    """``part`` as a Spark user keeps data: a DataFrame (``PARQUET_SCHEMA``) written to Parquet,
    one file per partition of the session's default parallelism."""
    rows = [(image.ravel().tolist(), int(label)) for image, label in zip(part.images, part.labels)]
    spark.createDataFrame(rows, PARQUET_SCHEMA).write.mode("overwrite").parquet(path)


def read_parquet_shard(path: str) -> Part:
    """This rank's equal share of a dataset ``write_parquet`` wrote
    (``hvdtrain.spark.read_shard``)."""
    from ..spark import read_shard

    table = read_shard(path, columns=["image", "label"])
    pixels = table.column("image").combine_chunks().flatten().to_numpy()
    return Part(
        pixels.astype(np.float32).reshape(-1, IMAGE_SIZE, IMAGE_SIZE),
        table.column("label").to_numpy().astype(np.int64),
    )


def spark_main(example_main: Callable, framework: str, argv: list[str] | None = None) -> list:
    """Driver of the Spark twins of the digits examples: write the training split to Parquet,
    then run ``example_main(flags, parquet)`` on ``--num-proc`` Spark tasks
    (``hvdtrain.spark.run``). The example's own flags pass through; rank 0 prints the
    test accuracy as without Spark."""
    import tempfile

    from pyspark.sql import SparkSession

    from .. import spark as hs

    parser = argparse.ArgumentParser(
        description=f"The digits example ({framework}) on Spark; other flags: the example's.",
        add_help=False,
    )
    parser.add_argument("--master", default="local[2]", help="Spark master URL (default local[2])")
    parser.add_argument(
        "--num-proc", type=int, default=2, help="Horovod workers = Spark tasks running at once"
    )
    parser.add_argument(
        "--parquet",
        default=None,
        help="where the training split is written (default: a temp dir; "
        "on a cluster: a path every executor reads, e.g. a shared file system)",
    )
    parser.add_argument(
        "--nics",
        default=None,
        help="network interfaces for Gloo, comma-separated (default: lo in "
        "local mode, else Horovod's pick)",
    )
    spark_args, flags = parser.parse_known_args(argv)
    args = cli.parse(example_parser(framework), flags)  # refused here, once, before Spark starts
    spark = (
        SparkSession.builder.master(spark_args.master)
        .appName(f"hvdtrain digits ({framework})")
        .config("spark.ui.enabled", "false")
        # Executors run this virtualenv's Python (on a cluster: the same path on every host).
        .config("spark.pyspark.python", os.environ.get("PYSPARK_PYTHON", sys.executable))
        .getOrCreate()
    )
    with tempfile.TemporaryDirectory(prefix="hvdtrain-digits-") as tmp:
        path = spark_args.parquet or f"{tmp}/train.parquet"
        write_parquet(
            spark, load_splits(seed=args.seed, train_samples=args.train_samples).train, path
        )
        return hs.run(
            example_main,
            num_proc=spark_args.num_proc,
            args=(flags, path),
            nics=spark_args.nics.split(",") if spark_args.nics else None,
        )
