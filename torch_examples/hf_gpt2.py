"""A GPT-2 causal language model from Hugging Face ``transformers``, trained
data-parallel on Horovod on the Python standard library's source, with a BPE tokenizer
trained locally with ``tokenizers``.

Model and tokenizer are loaded the way users load them: ``AutoTokenizer.from_pretrained(DIR)`` and
``AutoModelForCausalLM.from_pretrained(DIR)``. Nothing is downloaded (``HF_HUB_OFFLINE=1``): when
``--model-dir`` holds no model yet, a first step (rank 0) trains a byte-level BPE tokenizer on the
training files and writes it and a small, randomly initialised GPT-2 there with ``save_pretrained``,
standing in for a downloaded checkpoint; every other rank receives those files. Training windows
are sharded by rank; hvdtrain's checkpoints, ``--resume``, MLflow tracking, ``--log-model`` and
``--shard-optimizer-state`` work on the model unchanged. Rank 0 prints the validation loss per
token next to chance (ln vocabulary) and the unigram baseline, and samples with ``generate``.

    hvdtrain run -np 2 torch_examples/hf_gpt2.py --model-dir gpt2-stdlib --epochs 1 --windows 2000
"""

from __future__ import annotations

import os

# before transformers is imported: never reach for the hub
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import argparse  # noqa: E402
import math  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import gpt  # noqa: E402  (the byte-level example beside this file: the training recipe is shared)
import numpy as np  # noqa: E402
import tokenizers  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402

import hvdtrain.torch as ht  # noqa: E402
from hvdtrain import tracking  # noqa: E402
from hvdtrain.core import args as cli  # noqa: E402
from hvdtrain.core.context import Context, main_process_only  # noqa: E402
from hvdtrain.core.pretrained import prepare  # noqa: E402
from hvdtrain.datasets import text  # noqa: E402
from hvdtrain.torch.hf import Logits  # noqa: E402
from hvdtrain.torch.tracking import log_model  # noqa: E402

END_OF_TEXT = "<|endoftext|>"


def parser() -> argparse.ArgumentParser:
    parser = text.example_parser("PyTorch, a Hugging Face GPT-2")
    parser.set_defaults(block=64, lr=1e-3)
    group = parser.add_argument_group("Hugging Face model")
    group.add_argument(
        "--model-dir",
        default="gpt2-stdlib",
        help="from_pretrained() directory; written (tokenizer trained, model from --d-model, "
        "--layers, --heads) if it holds no model; --block is then in tokens",
    )
    group.add_argument(
        "--vocab-size", type=int, default=2000, help="BPE vocabulary of a newly trained tokenizer"
    )
    group.add_argument(
        "--log-model", action="store_true", help="log the trained model to the MLflow run"
    )
    return parser


def as_text(data: np.ndarray) -> str:
    return bytes(data).decode("utf-8", errors="replace")


def write_gpt2(args: argparse.Namespace, corpus: text.ByteCorpus, directory: Path) -> None:
    """Train a byte-level BPE tokenizer on the training text, then save it and a small GPT-2."""
    bpe = tokenizers.Tokenizer(tokenizers.models.BPE())
    bpe.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = tokenizers.decoders.ByteLevel()
    bpe.train_from_iterator(
        as_text(corpus.train).splitlines(keepends=True),
        tokenizers.trainers.BpeTrainer(
            vocab_size=args.vocab_size,
            special_tokens=[END_OF_TEXT],
            initial_alphabet=tokenizers.pre_tokenizers.ByteLevel.alphabet(),
        ),
    )
    tokenizer = transformers.PreTrainedTokenizerFast(
        tokenizer_object=bpe, eos_token=END_OF_TEXT, bos_token=END_OF_TEXT, unk_token=END_OF_TEXT
    )
    tokenizer.save_pretrained(directory)
    eos = tokenizer.convert_tokens_to_ids(END_OF_TEXT)
    config = transformers.GPT2Config(
        vocab_size=len(tokenizer),
        n_positions=args.block,
        n_embd=args.d_model,
        n_layer=args.layers,
        n_head=args.heads,
        bos_token_id=eos,
        eos_token_id=eos,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
    )
    transformers.GPT2LMHeadModel(config).save_pretrained(directory)


@main_process_only
@torch.no_grad()
def generate(
    model: Logits, tokenizer, prompt: str, length: int, temperature: float, seed: int
) -> str:
    """``prompt`` continued by ``generate`` for up to ``length`` characters (a token is at least
    one), within the model's context."""
    model.eval()
    torch.manual_seed(seed)
    ids = tokenizer(prompt, return_tensors="pt")["input_ids"].to(model.model.device)
    tokens = min(length, model.model.config.max_position_embeddings - ids.shape[1])
    out = model.model.generate(
        ids,
        max_new_tokens=tokens,
        do_sample=temperature > 0,
        temperature=temperature or None,
        top_k=0,
        pad_token_id=tokenizer.eos_token_id,
    )
    return tokenizer.decode(out[0])[: len(prompt) + length]


def train(args: argparse.Namespace, ctx: Context, tracker: tracking.Tracker | None) -> dict:
    corpus = text.load_stdlib(args.max_bytes, args.val_bytes, seed=args.seed, root=args.data_dir)
    if not ctx.is_main:
        transformers.utils.logging.disable_progress_bar()  # only rank 0 shows progress
    directory = prepare(
        ctx, args.model_dir, lambda d: write_gpt2(args, corpus, d), marker="config.json"
    )
    tokenizer = transformers.AutoTokenizer.from_pretrained(directory)
    model = Logits(transformers.AutoModelForCausalLM.from_pretrained(directory)).to(ctx.device)
    train_ids = np.array(tokenizer(as_text(corpus.train))["input_ids"], dtype=np.int32)
    val_ids = np.array(tokenizer(as_text(corpus.val))["input_ids"], dtype=np.int32)
    val_windows = text.tiled_windows(val_ids, args.block)
    vocab = len(tokenizer)
    unigram = text.unigram_cross_entropy(train_ids, val_windows[1], vocab_size=vocab)
    text.describe_bpe(corpus, train_ids, vocab, unigram)
    windows = text.random_windows(train_ids, args.block, args.windows, args.seed)
    val_loss, _ = gpt.fit_language_model(
        args,
        ctx,
        tracker,
        model,
        windows,
        val_windows,
        unigram,
        {"vocab_size": vocab, "corpus_fingerprint": corpus.fingerprint()},
    )
    model_uri = None
    if tracker is not None and args.log_model:
        # MLflow exports for the example's shape and strides
        example = np.ascontiguousarray(val_windows[0][:2])
        model_uri = log_model(tracker, model, torch.from_numpy(example).to(ctx.device))
    sample = generate(model, tokenizer, args.prompt, args.sample_bytes, args.temperature, args.seed)
    return {
        "val_loss": val_loss,
        "unigram_ce": unigram,
        "chance_ce": math.log(vocab),
        "vocab_size": vocab,
        "ratio": val_loss / unigram,
        "sample": sample,
        "model_uri": model_uri,
    }


def main(argv: list[str] | None = None) -> None:
    started = time.perf_counter()
    args = cli.parse(parser(), argv)
    ctx = ht.init(seed=args.seed)
    with tracking.tracked(**cli.tracking_kwargs(args)) as tracker:
        result = train(args, ctx, tracker)
    run_id = tracker.run_id if tracker else None
    text.report(args, ctx, "hf_gpt2", result, time.perf_counter() - started, run_id)


if __name__ == "__main__":
    main()
