"""A GPT-style byte-level language model (Keras 3 on TensorFlow) trained from scratch, data-parallel
on Horovod.

A small decoder-only transformer (``hvdtrain.models.keras_gpt``, the model ``hvdtrain bench``
times) learns to continue Python source code. The text is the standard library of the running
interpreter, read at run time (``hvdtrain.datasets.text``): nothing to download, the same
file-level train/validation split on every rank. Training windows are sharded by rank, gradients
averaged by Horovod; rank 0 prints the validation loss next to the unigram baseline (byte
frequencies, no context) and samples a few lines of code at the end.

    horovodrun -np 2 -H localhost:2 --gloo python tf_examples/gpt.py
    hvdtrain run -np 2 tf_examples/gpt.py --epochs 1 --windows 2000 --no-tracking

The PyTorch twin is ``torch_examples/gpt.py``: same data, windows, architecture and evaluation.
"""

from __future__ import annotations

import argparse
import math
import platform
import time

import keras
import numpy as np

import hvdtrain.keras as hk
from hvdtrain import tracking
from hvdtrain.core import args as cli
from hvdtrain.core.context import Context, main_process_only
from hvdtrain.core.sharding import samples_per_rank
from hvdtrain.datasets import text
from hvdtrain.models.keras_gpt import build_model


class CosineDecay(keras.callbacks.Callback):
    """Sets the LR before every batch: the scaled LR decayed along a cosine to a tenth of it at
    ``total_steps``, so a short budget ends on small, careful steps. Warmup still applies on top."""

    def __init__(self, peak_lr: float, total_steps: int):
        super().__init__()
        self.peak_lr, self.total_steps = peak_lr, total_steps

    def on_train_batch_begin(self, batch, logs=None):
        progress = min(int(self.model.optimizer.iterations.numpy()) / self.total_steps, 1.0)
        self.model.optimizer.learning_rate = self.peak_lr * (
            0.1 + 0.45 * (1 + math.cos(math.pi * progress))
        )


@main_process_only
def generate(
    model: keras.Model, prompt: str, length: int, temperature: float, block: int, seed: int
) -> str:
    """Continue ``prompt`` one sampled byte at a time, seeing at most ``block`` bytes back.

    The context is right-padded to ``block`` bytes: the causal mask keeps the padding from
    affecting earlier positions, and one fixed shape lets Keras trace its predict step once.
    """
    rng, tokens = np.random.default_rng(seed), list(text.encode(prompt))
    for _ in range(length):
        context = tokens[-block:]
        window = np.zeros((1, block), dtype=np.int32)
        window[0, : len(context)] = context
        logits = model.predict_on_batch(window)
        tokens.append(text.sample_token(logits[0, len(context) - 1], temperature, rng))
    return text.decode(tokens)


def validation_loss(model: keras.Model, inputs: np.ndarray, targets: np.ndarray) -> float:
    """The loss over every validation window, each rank evaluating every size-th one."""
    ctx = hk.current()
    mine = slice(ctx.rank, None, ctx.size)
    count = len(inputs[mine])
    loss = float(model.evaluate(inputs[mine], targets[mine], batch_size=64, verbose=0)) * count
    totals = hk.average_metrics({"loss": loss, "count": count})
    return totals["loss"] / totals["count"]


@main_process_only
def describe(corpus: text.ByteCorpus, unigram: float) -> None:
    print(
        f"corpus: Python {platform.python_version()} standard library, {len(corpus.train):,} train "
        f"bytes from {len(corpus.train_files)} files, {len(corpus.val):,} validation bytes from "
        f"{len(corpus.val_files)} other files; unigram baseline {unigram:.4f} nats/byte",
        flush=True,
    )


def train(args: argparse.Namespace, ctx: Context, tracker: tracking.Tracker | None) -> dict:
    corpus = text.load_stdlib(args.max_bytes, args.val_bytes, seed=args.seed, root=args.data_dir)
    val_inputs, val_targets = text.tiled_windows(corpus.val, args.block)
    unigram = text.unigram_cross_entropy(corpus.train, val_targets)
    describe(corpus, unigram)

    model = build_model(args.block, args.d_model, args.layers, args.heads)
    optimizer = hk.wrap_optimizer(
        keras.optimizers.AdamW(args.lr, weight_decay=0.01, clipnorm=1.0),
        **cli.optimizer_kwargs(args),
    )
    # scaled for the world size; the decay starts here
    peak_lr = float(optimizer.learning_rate.numpy())
    # Horovod's ops have no XLA kernels, and Keras would pick XLA on a GPU by itself.
    model.compile(
        optimizer=optimizer,
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        jit_compile=False,
    )
    windows = text.random_windows(corpus.train, args.block, args.windows, args.seed)
    # optimizer.iterations counts updates: one per accumulation group of batches, as in the torch
    # twin.
    updates_per_epoch = math.ceil(
        math.ceil(samples_per_rank(len(windows[0]), ctx.size) / args.batch_size)
        / args.accumulation_steps
    )
    if tracker is not None:
        # hk.fit logs the training params
        tracker.log_params(
            {
                "parameters": model.count_params(),
                "unigram_ce": unigram,
                "corpus_fingerprint": corpus.fingerprint(),
            }
        )
    # Each epoch every rank trains on its equal share of a fresh permutation (so all run the same
    # number of steps); checkpoints, resume and tracking are hk.fit's, as ht.fit's in the torch
    # twin.
    history = hk.fit(
        model,
        *windows,
        batch_size=args.batch_size,
        epochs=args.epochs,
        seed=args.seed,
        validation_data=(val_inputs, val_targets),
        validation_batch_size=64,
        tracker=tracker,
        callbacks=[CosineDecay(peak_lr, args.epochs * updates_per_epoch)],
        **cli.fit_kwargs(args),
    )
    # A resumed run that had nothing left to train evaluates the restored model (every window once
    # over the ranks).
    val_loss = (
        history.history["val_loss"][-1]
        if history.history
        else validation_loss(model, val_inputs, val_targets)
    )
    if tracker is not None and history.samples_trained:  # else the earlier job logged it
        tracker.log_metrics(
            {"val_loss_ratio": val_loss / unigram}, step=int(optimizer.iterations.numpy())
        )
    sample = generate(
        model, args.prompt, args.sample_bytes, args.temperature, args.block, args.seed
    )
    return {
        "val_loss": val_loss,
        "unigram_ce": unigram,
        "ratio": val_loss / unigram,
        "sample": sample,
    }


def main(argv: list[str] | None = None) -> None:
    started = time.perf_counter()
    args = cli.parse(text.example_parser("Keras 3"), argv)
    ctx = hk.init(seed=args.seed)
    with tracking.tracked(**cli.tracking_kwargs(args)) as tracker:
        result = train(args, ctx, tracker)
    text.report(
        args,
        ctx,
        "gpt",
        result,
        time.perf_counter() - started,
        tracker.run_id if tracker else None,
        unit="byte",
    )


if __name__ == "__main__":
    main()
