"""A GPT-2 causal language model from KerasHub (Keras 3 on TensorFlow), trained data-parallel on
Horovod on the Python standard library's source, with a byte-level BPE vocabulary trained locally.

Model and preprocessing are loaded the way users load a KerasHub preset:
``keras_hub.models.GPT2CausalLM.from_preset(DIR)`` and
``keras_hub.models.GPT2CausalLMPreprocessor.from_preset(DIR)``. Nothing is downloaded: when
``--preset`` holds no preset yet, a first step (rank 0) trains a byte-level BPE vocabulary on the
training files (``tokenizers``) and writes it and a small, randomly initialised GPT-2 there with
``save_to_preset``, standing in for a downloaded preset such as ``gpt2_base_en``; every other rank
receives those files. KerasHub's tokenizer (on ``tensorflow-text``) turns the text into tokens, the
model trains on token windows sharded by rank (``hk.fit``, the preprocessor detached so Keras does
not tokenize again), with hvdtrain's checkpoints, ``--resume``, MLflow tracking and
``--shard-optimizer-state``. Rank 0 prints the validation loss per token next to chance (ln
vocabulary) and the unigram baseline, and samples with ``generate``, the preprocessor attached.

    hvdtrain run -np 2 tf_examples/hub_gpt2.py --preset gpt2-stdlib --epochs 1 --windows 2000

The PyTorch twin is ``torch_examples/hf_gpt2.py`` (Hugging Face ``transformers``): same data,
windows and evaluation.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import gpt  # the byte-level example beside this file: its LR decay is shared
import keras
import keras_hub
import numpy as np
import tokenizers

import hvdtrain.keras as hk
from hvdtrain import tracking
from hvdtrain.core import args as cli
from hvdtrain.core.context import Context, main_process_only
from hvdtrain.core.pretrained import prepare
from hvdtrain.core.sharding import samples_per_rank
from hvdtrain.datasets import text

END_OF_TEXT = "<|endoftext|>"


def parser() -> argparse.ArgumentParser:
    parser = text.example_parser("Keras 3, a KerasHub GPT-2")
    parser.set_defaults(block=64, lr=1e-3)
    group = parser.add_argument_group("KerasHub model")
    group.add_argument(
        "--preset",
        default="gpt2-stdlib",
        help="from_preset() directory; written (vocabulary trained, model from --d-model, "
        "--layers, --heads) if it holds no preset; --block is then in tokens",
    )
    group.add_argument(
        "--vocab-size", type=int, default=2000, help="BPE vocabulary of a newly trained tokenizer"
    )
    return parser


def as_text(data: np.ndarray) -> str:
    return bytes(data).decode("utf-8", errors="replace")


def write_preset(args: argparse.Namespace, corpus: text.ByteCorpus, directory: Path) -> None:
    """Train a byte-level BPE vocabulary on the training text, then save it and a small GPT-2 as a
    KerasHub preset (config, weights, tokenizer and preprocessor)."""
    bpe = tokenizers.Tokenizer(tokenizers.models.BPE())
    bpe.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.train_from_iterator(
        as_text(corpus.train).splitlines(keepends=True),
        tokenizers.trainers.BpeTrainer(
            vocab_size=args.vocab_size,
            special_tokens=[END_OF_TEXT],
            initial_alphabet=tokenizers.pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        ),
    )
    trained = json.loads(bpe.to_str())["model"]  # GPT-2's vocabulary.json and merges.txt
    tokenizer = keras_hub.models.GPT2Tokenizer(
        vocabulary=trained["vocab"], merges=[" ".join(pair) for pair in trained["merges"]]
    )
    backbone = keras_hub.models.GPT2Backbone(
        vocabulary_size=tokenizer.vocabulary_size(),
        num_layers=args.layers,
        num_heads=args.heads,
        hidden_dim=args.d_model,
        intermediate_dim=4 * args.d_model,
        dropout=0.0,
        max_sequence_length=args.block,
    )
    preprocessor = keras_hub.models.GPT2CausalLMPreprocessor(tokenizer, sequence_length=args.block)
    keras_hub.models.GPT2CausalLM(backbone, preprocessor).save_to_preset(str(directory))


def model_inputs(token_ids: np.ndarray) -> dict[str, np.ndarray]:
    """Token windows as the backbone takes them: every position a real token."""
    return {"token_ids": token_ids, "padding_mask": np.ones_like(token_ids, dtype=bool)}


def validation_loss(model: keras.Model, inputs: np.ndarray, targets: np.ndarray) -> float:
    """The loss over every validation window, each rank evaluating every size-th one."""
    ctx = hk.current()
    mine = slice(ctx.rank, None, ctx.size)
    count = len(inputs[mine])
    loss = model.evaluate(
        model_inputs(inputs[mine]), targets[mine], batch_size=64, verbose=0, return_dict=True
    )["loss"]
    totals = hk.average_metrics({"loss": loss * count, "count": count})
    return totals["loss"] / totals["count"]


@main_process_only
def generate(model: keras_hub.models.GPT2CausalLM, prompt: str, length: int) -> str:
    """``prompt`` continued for up to ``length`` characters (a token is at least one), within the
    model's context, by the sampler ``compile`` set."""
    text_out = model.generate(prompt, stop_token_ids=None)
    return str(text_out)[: len(prompt) + length]


def train(args: argparse.Namespace, ctx: Context, tracker: tracking.Tracker | None) -> dict:
    corpus = text.load_stdlib(args.max_bytes, args.val_bytes, seed=args.seed, root=args.data_dir)
    directory = prepare(
        ctx, args.preset, lambda d: write_preset(args, corpus, d), marker="config.json"
    )
    preprocessor = keras_hub.models.GPT2CausalLMPreprocessor.from_preset(
        str(directory), sequence_length=args.block
    )
    # Detached for training: with a preprocessor, Keras would tokenize what fit is given again.
    model = keras_hub.models.GPT2CausalLM.from_preset(str(directory), preprocessor=None)
    tokenizer = preprocessor.tokenizer
    train_ids = np.asarray(tokenizer(as_text(corpus.train)), dtype=np.int32)
    val_ids = np.asarray(tokenizer(as_text(corpus.val)), dtype=np.int32)
    val_inputs, val_targets = text.tiled_windows(val_ids, args.block)
    vocab = tokenizer.vocabulary_size()
    unigram = text.unigram_cross_entropy(train_ids, val_targets, vocab_size=vocab)
    text.describe_bpe(corpus, train_ids, vocab, unigram)

    optimizer = hk.wrap_optimizer(
        keras.optimizers.AdamW(args.lr, weight_decay=0.01, global_clipnorm=1.0),
        **cli.optimizer_kwargs(args),
    )
    peak_lr = float(optimizer.learning_rate.numpy())  # scaled for the world size
    sampler = (
        keras_hub.samplers.RandomSampler(temperature=args.temperature, seed=args.seed)
        if args.temperature > 0
        else "greedy"
    )
    # Horovod's ops have no XLA kernels, and Keras would pick XLA on a GPU by itself.
    model.compile(
        optimizer=optimizer,
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        weighted_metrics=[],
        sampler=sampler,
        jit_compile=False,
    )
    inputs, targets = text.random_windows(train_ids, args.block, args.windows, args.seed)
    updates_per_epoch = math.ceil(
        math.ceil(samples_per_rank(len(inputs), ctx.size) / args.batch_size)
        / args.accumulation_steps
    )
    if tracker is not None:  # hk.fit logs the training params
        tracker.log_params(
            {
                "parameters": model.count_params(),
                "vocab_size": vocab,
                "unigram_ce": unigram,
                "corpus_fingerprint": corpus.fingerprint(),
            }
        )
    history = hk.fit(
        model,
        model_inputs(inputs),
        targets,
        batch_size=args.batch_size,
        epochs=args.epochs,
        seed=args.seed,
        validation_data=(model_inputs(val_inputs), val_targets),
        validation_batch_size=64,
        tracker=tracker,
        callbacks=[gpt.CosineDecay(peak_lr, args.epochs * updates_per_epoch)],
        **cli.fit_kwargs(args),
    )
    # A resumed run that had nothing left to train evaluates the restored model.
    val_loss = (
        history.history["val_loss"][-1]
        if history.history
        else validation_loss(model, val_inputs, val_targets)
    )
    if tracker is not None and history.samples_trained:  # else the earlier job logged it
        tracker.log_metrics(
            {"val_loss_ratio": val_loss / unigram}, step=int(optimizer.iterations.numpy())
        )
    # Every rank's weights, summed: equal on all ranks when the job was data-parallel.
    weights = [np.asarray(w, dtype=np.float64) for w in model.get_weights()]
    rank_sums = ctx.gather([sum(float(w.sum()) for w in weights)])
    model.preprocessor = preprocessor  # generate() takes and returns text again
    sample = generate(model, args.prompt, args.sample_bytes)
    return {
        "val_loss": val_loss,
        "unigram_ce": unigram,
        "chance_ce": math.log(vocab),
        "vocab_size": vocab,
        "ratio": val_loss / unigram,
        "train_tokens": len(train_ids),
        "epoch_loss": [float(v) for v in history.history.get("loss", [])],
        "rank_weight_sums": [row[0] for row in rank_sums],
        "sample": sample,
    }


def main(argv: list[str] | None = None) -> None:
    started = time.perf_counter()
    args = cli.parse(parser(), argv)
    ctx = hk.init(seed=args.seed)
    with tracking.tracked(**cli.tracking_kwargs(args)) as tracker:
        result = train(args, ctx, tracker)
    run_id = tracker.run_id if tracker else None
    text.report(args, ctx, "hub_gpt2", result, time.perf_counter() - started, run_id)


if __name__ == "__main__":
    main()
