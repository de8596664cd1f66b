"""A byte-level text corpus every machine already has: the Python standard library's own sources.

Read at run time from the running interpreter's installation, so nothing is downloaded or copied
into the repository. The split is by file (a model must not be scored on files it trained on)
and depends only on the sorted file list and a seed: every rank, and every machine with the same
Python version, builds the same corpus without talking to the others.
"""

from __future__ import annotations

import argparse
import hashlib
import math
import sysconfig
import tokenize
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..core import args as cli
from ..core.context import Context, main_process_only
from ..core.guards import UserError

VOCAB_SIZE = 256  # bytes
# Third-party packages differ between machines; test suites are stripped by some builds (the
# official Docker images, Debian): leaving both out keeps the corpus the same everywhere.
EXCLUDED_DIRS = frozenset({"site-packages", "dist-packages", "test", "tests", "idle_test"})


class DataError(UserError, ValueError):
    """Data that cannot be read; the message names the file or directory."""


def stdlib_root() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def data_dir(text: str) -> Path:
    """``--data-dir``: a directory with at least 2 ``.py`` files, checked at parse time, so a
    wrong path is one argparse line before any worker starts training."""
    root = Path(text)
    if not root.is_dir():
        raise argparse.ArgumentTypeError(
            f"{text}: no such directory" if not root.exists() else f"{text}: not a directory"
        )
    found = len(source_files(root))
    if found < 2:
        raise argparse.ArgumentTypeError(
            f"{text}: {found} Python files (outside {', '.join(sorted(EXCLUDED_DIRS))});"
            f" need at least 2 for a train/validation split"
        )
    return root


def source_files(root: str | Path | None = None) -> list[str]:
    """The ``.py`` files under ``root`` (default: the stdlib), as sorted relative POSIX paths."""
    root = Path(root) if root is not None else stdlib_root()
    found = (path.relative_to(root) for path in root.rglob("*.py"))
    return sorted(
        path.as_posix() for path in found if not EXCLUDED_DIRS.intersection(path.parts[:-1])
    )


def split_files(files: list[str], val_fraction: float, seed: int) -> tuple[list[str], list[str]]:
    """(train, val): a seeded shuffle of the sorted names, the first ``val_fraction`` to val.

    Each list keeps the shuffled order, so a byte budget takes a varied sample of the library
    rather than its alphabetical start.
    """
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be between 0 and 1 (exclusive), got {val_fraction}")
    if len(files) < 2:
        raise ValueError(f"need at least 2 files to split, got {len(files)}")
    ordered = sorted(files)
    shuffled = [ordered[i] for i in np.random.default_rng(seed).permutation(len(ordered))]
    n_val = min(len(files) - 1, max(1, round(val_fraction * len(files))))
    return shuffled[n_val:], shuffled[:n_val]


def read_bytes(root: str | Path, files: list[str], max_bytes: int) -> np.ndarray:
    """The files' bytes concatenated in order, cut at ``max_bytes`` (uint8)."""
    if max_bytes < 1:
        raise ValueError(f"max_bytes must be >= 1, got {max_bytes}")
    chunks, total = [], 0
    for name in files:
        if total >= max_bytes:
            break
        data = read_file(Path(root) / name)[: max_bytes - total]
        chunks.append(data)
        total += len(data)
    return np.frombuffer(b"".join(chunks), dtype=np.uint8)


def read_file(path: Path, text: bool = False) -> bytes | str:
    """The file's bytes, or with ``text`` its decoded source;
    ``DataError`` naming it if unreadable."""
    try:
        if not text:
            return path.read_bytes()
        with tokenize.open(path) as source:  # honours the file's encoding declaration
            return source.read()
    except OSError as err:
        raise DataError(
            f"{path}: cannot read ({type(err).__name__}: {err.strerror or err})"
        ) from None


@dataclass(frozen=True)
class ByteCorpus:
    train: np.ndarray  # uint8
    val: np.ndarray  # uint8
    train_files: list[str]
    val_files: list[str]

    def fingerprint(self) -> str:
        """Short hash of the data: equal on two ranks means they train on the same corpus."""
        digest = hashlib.sha256(self.train.tobytes())
        digest.update(self.val.tobytes())
        return digest.hexdigest()[:16]


def load_stdlib(
    max_bytes: int,
    val_bytes: int,
    val_fraction: float = 0.1,
    seed: int = 0,
    root: str | Path | None = None,
) -> ByteCorpus:
    """Train bytes (at most ``max_bytes``) and validation bytes (at most ``val_bytes``) from
    disjoint sets of stdlib files."""
    root = Path(root) if root is not None else stdlib_root()
    train_files, val_files = split_files(source_files(root), val_fraction, seed)
    return ByteCorpus(
        read_bytes(root, train_files, max_bytes),
        read_bytes(root, val_files, val_bytes),
        train_files,
        val_files,
    )


def unigram_cross_entropy(
    train: np.ndarray, evaluated: np.ndarray, smoothing: float = 1.0, vocab_size: int = VOCAB_SIZE
) -> float:
    """Nats per byte (token) of ``evaluated`` under byte (token) frequencies counted on ``train``
    (add-``smoothing``, over ``vocab_size`` symbols).

    The baseline a language model must beat: it knows how common each byte is, but no context.
    """
    if smoothing <= 0:
        raise ValueError(
            "smoothing must be > 0 (an unseen byte would cost infinitely many nats), got "
            f"{smoothing}"
        )
    counts = (
        np.bincount(np.asarray(train, dtype=np.int64).ravel(), minlength=vocab_size) + smoothing
    )
    log_probs = np.log(counts) - np.log(counts.sum())
    return float(-log_probs[np.asarray(evaluated, dtype=np.int64).ravel()].mean())


def random_windows(
    data: np.ndarray, block: int, count: int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """``count`` training windows at seeded random offsets: inputs ``(count, block)`` and the next
    bytes as targets. Same seed, same windows on every rank, so a sharded sampler splits them."""
    starts = np.random.default_rng(seed).integers(0, _last_start(data, block) + 1, size=count)
    return _gather(data, block, starts)


def tiled_windows(data: np.ndarray, block: int) -> tuple[np.ndarray, np.ndarray]:
    """Non-overlapping windows covering ``data``: every byte after the first is a target exactly
    once (the tail that does not fill a window is left out). For evaluation."""
    starts = np.arange(0, _last_start(data, block) + 1, block)
    return _gather(data, block, starts)


def _last_start(data: np.ndarray, block: int) -> int:
    if block < 1:
        raise ValueError(f"block must be >= 1, got {block}")
    if len(data) < block + 1:
        raise ValueError(f"{len(data)} bytes are too few for windows of {block} + 1 bytes")
    return len(data) - block - 1


def _gather(data: np.ndarray, block: int, starts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    index = starts[:, None] + np.arange(block + 1)
    windows = np.asarray(data)[index].astype(np.int32)
    return windows[:, :-1], windows[:, 1:]


def encode(text: str) -> np.ndarray:
    return np.frombuffer(text.encode("utf-8"), dtype=np.uint8).astype(np.int32)


def decode(tokens) -> str:
    return bytes(np.asarray(tokens, dtype=np.uint8).tolist()).decode("utf-8", errors="replace")


def sample_token(logits: np.ndarray, temperature: float, rng: np.random.Generator) -> int:
    """One byte drawn from ``softmax(logits / temperature)``; temperature 0 takes the argmax."""
    logits = np.asarray(logits, dtype=np.float64)
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    if temperature == 0:
        return int(np.argmax(logits))
    scaled = logits / temperature
    probs = np.exp(scaled - scaled.max())
    return int(rng.choice(len(probs), p=probs / probs.sum()))


@main_process_only
def describe_bpe(corpus: ByteCorpus, train_ids: np.ndarray, vocab: int, unigram: float) -> None:
    """The BPE examples' first line (Hugging Face's and KerasHub's GPT-2): their corpus and the
    two baselines their validation loss is read against."""
    print(
        f"corpus: {len(corpus.train):,} train bytes = {len(train_ids):,} BPE tokens (vocabulary "
        f"{vocab}); unigram baseline {unigram:.4f} nats/token, chance {math.log(vocab):.4f}",
        flush=True,
    )


@main_process_only
def report(
    args: argparse.Namespace,
    ctx: Context,
    example: str,
    result: dict,
    wall_time_s: float,
    run_id: str | None,
    unit: str = "token",
) -> None:
    """The language-model examples' last lines and ``--results`` file: validation loss per
    ``unit`` (``byte`` for the byte-level gpt examples, ``token`` for the BPE ones) against the
    unigram baseline (and chance, when ``result`` has it), the sampled text."""
    chance = f"; chance {result['chance_ce']:.4f}" if "chance_ce" in result else ""
    print(
        f"validation loss: {result['val_loss']:.4f} nats/{unit} = {result['ratio']:.3f} x the "
        f"unigram baseline ({result['unigram_ce']:.4f}{chance}) "
        f"({ctx.size} workers, {wall_time_s:.1f} s)",
        flush=True,
    )
    print(f"--- sampled at temperature {args.temperature} ---\n{result['sample']}\n---", flush=True)
    cli.write_results(
        args,
        ctx,
        example=example,
        metric_name="val_loss/unigram_ce",
        metric=result["ratio"],
        wall_time_s=wall_time_s,
        run_id=run_id,
        **result,
    )


def example_parser(framework: str) -> argparse.ArgumentParser:
    """The flags of the gpt examples (``framework`` names the twin in ``--help``)."""
    parser = cli.training_parser(
        f"Train a small GPT on the Python standard library's source, {framework} on Horovod.",
        epochs=2,
        batch_size=16,
        lr=1.5e-3,
        warmup_steps=50,
    )
    group = parser.add_argument_group("data")
    group.add_argument(
        "--data-dir",
        type=data_dir,
        default=None,
        help="train on the .py files under this directory; default: the Python standard library",
    )
    group.add_argument(
        "--max-bytes", type=int, default=2_000_000, help="train on at most this many bytes"
    )
    group.add_argument(
        "--val-bytes", type=int, default=200_000, help="validate on at most this many bytes"
    )
    group.add_argument(
        "--windows", type=int, default=8_000, help="training windows per epoch, all ranks together"
    )
    group = parser.add_argument_group("model")
    group.add_argument("--block", type=int, default=64, help="context length in bytes")
    group.add_argument("--d-model", type=int, default=128)
    group.add_argument("--layers", type=int, default=4)
    group.add_argument("--heads", type=int, default=4)
    group = parser.add_argument_group("generation")
    group.add_argument("--prompt", default="def ")
    group.add_argument(
        "--sample-bytes", type=int, default=300, help="bytes to generate after the prompt"
    )
    group.add_argument("--temperature", type=float, default=0.8)
    return parser
