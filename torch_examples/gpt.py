"""A GPT-style byte-level language model (PyTorch) trained from scratch, data-parallel on Horovod.

A small decoder-only transformer (``hvdtrain.models.torch_gpt``, the model ``hvdtrain bench``
times) learns to continue Python source code. The text is the standard library of the running
interpreter, read at run time (``hvdtrain.datasets.text``): nothing to download, the same
file-level train/validation split on every rank. Training windows are sharded by rank, gradients
averaged by Horovod; rank 0 prints the validation loss next to the unigram baseline (byte
frequencies, no context) and samples a few lines of code at the end.

    horovodrun -np 2 -H localhost:2 --gloo python torch_examples/gpt.py
    hvdtrain run -np 2 torch_examples/gpt.py --epochs 1 --windows 2000 --no-tracking

The Keras twin is ``tf_examples/gpt.py``: same data, windows, architecture and evaluation.
"""

from __future__ import annotations

import argparse
import math
import platform
import time

import numpy as np
import torch
from torch import nn
from torch.utils.data import TensorDataset

import hvdtrain.torch as ht
from hvdtrain import tracking
from hvdtrain.core import args as cli
from hvdtrain.core.context import Context, main_process_only
from hvdtrain.datasets import text
from hvdtrain.models.torch_gpt import GPT, next_byte_loss


@main_process_only
@torch.no_grad()
def generate(
    model: GPT, prompt: str, length: int, temperature: float, block: int, seed: int, device: str
) -> str:
    """Continue ``prompt`` one sampled byte at a time, seeing at most ``block`` bytes back."""
    model.eval()
    rng, tokens = np.random.default_rng(seed), list(text.encode(prompt))
    for _ in range(length):
        logits = model(torch.tensor([tokens[-block:]], device=device))[0, -1]
        tokens.append(text.sample_token(logits.cpu().numpy(), temperature, rng))
    return text.decode(tokens)


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
    windows = text.random_windows(corpus.train, args.block, args.windows, args.seed)
    val_windows = text.tiled_windows(corpus.val, args.block)
    unigram = text.unigram_cross_entropy(corpus.train, val_windows[1])
    describe(corpus, unigram)

    model = GPT(args.block, args.d_model, args.layers, args.heads).to(ctx.device)
    val_loss, _ = fit_language_model(
        args,
        ctx,
        tracker,
        model,
        windows,
        val_windows,
        unigram,
        {"corpus_fingerprint": corpus.fingerprint()},
    )
    sample = generate(
        model, args.prompt, args.sample_bytes, args.temperature, args.block, args.seed, ctx.device
    )
    return {
        "val_loss": val_loss,
        "unigram_ce": unigram,
        "ratio": val_loss / unigram,
        "sample": sample,
    }


def fit_language_model(
    args: argparse.Namespace,
    ctx: Context,
    tracker: tracking.Tracker | None,
    model: nn.Module,
    windows: tuple[np.ndarray, np.ndarray],
    val_windows: tuple[np.ndarray, np.ndarray],
    unigram: float,
    params: dict,
) -> tuple[float, ht.History]:
    """The recipe, shared with ``hf_gpt2.py``: AdamW with clipping, a cosine schedule over the run,
    ``ht.fit`` on the (inputs, next symbols) windows. Returns the final
    validation loss and the history."""
    optimizer = ht.wrap_optimizer(
        torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.01),
        model,
        **cli.optimizer_kwargs(args),
        max_grad_norm=1.0,
    )
    train_loader = ht.distributed_loader(
        TensorDataset(*map(torch.from_numpy, windows)), args.batch_size, seed=args.seed
    )
    total_steps = args.epochs * math.ceil(len(train_loader) / args.accumulation_steps)
    # Cosine decay to a tenth of the LR over the run: a short budget ends on small, careful steps.
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: 0.1 + 0.45 * (1 + math.cos(math.pi * min(step / total_steps, 1.0)))
    )
    if tracker is not None:
        # ht.fit logs the training params
        tracker.log_params(
            {
                "parameters": sum(p.numel() for p in model.parameters()),
                "unigram_ce": unigram,
                **params,
            }
        )
    val_loader = ht.eval_loader(TensorDataset(*map(torch.from_numpy, val_windows)), batch_size=64)
    history = ht.fit(
        model,
        optimizer,
        next_byte_loss,
        train_loader,
        epochs=args.epochs,
        val_loader=val_loader,
        scheduler=scheduler,
        scheduler_interval="step",
        tracker=tracker,
        **cli.fit_kwargs(args),
    )
    # A resumed run that had nothing left to train evaluates the restored model.
    val_loss = (
        history["val_loss"][-1]
        if history.epochs
        else ht.evaluate(model, val_loader, next_byte_loss)["loss"]
    )
    if tracker is not None and history.samples_trained:  # else the earlier job logged it
        tracker.log_metrics({"val_loss_ratio": val_loss / unigram}, step=history.global_step)
    return val_loss, history


def main(argv: list[str] | None = None) -> None:
    started = time.perf_counter()
    args = cli.parse(text.example_parser("PyTorch"), argv)
    ctx = ht.init(seed=args.seed)
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
