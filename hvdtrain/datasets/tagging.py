"""Token classification data: standard-library source lines, each character tagged with the lexical
category of the Python token covering it, as Python's own ``tokenize`` module sees it.

The NER setup with code instead of prose: labels are BIO tags (``B-NAME`` starts a token, ``I-NAME``
continues it, ``O`` is whitespace), so adjacent tokens of one category, like ``(`` ``)``, stay two
entities. Evaluation is at entity level as in CoNLL/seqeval: an entity counts only when its exact
span and category are predicted. Only lines whose tokens all start and end on that line are used
(a line in the middle of a docstring cannot be tagged from the line alone). The split is by file,
seeded, so every rank (and both frameworks) builds the same arrays; ranks must run the same
Python to read the same files.
"""

from __future__ import annotations

import argparse
import io
import keyword
import tokenize
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..core import args as cli
from ..core.context import Context
from .text import data_dir, read_file, source_files, split_files, stdlib_root

CATEGORIES = ("KEYWORD", "NAME", "OP", "NUMBER", "STRING", "COMMENT")
LABELS = ("O", *(f"{prefix}-{category}" for category in CATEGORIES for prefix in "BI"))
IGNORE = -100  # label of padding positions (the loss-ignore convention of torch and Hugging Face)
PAD = 0  # input id of padding; NUL never occurs in source
UNKNOWN = 128  # input id of any non-ASCII character
NEWLINE = ord("\n")  # input id of the separator between the lines packed into one row
VOCAB_SIZE = 129
_COUNTS = ("tp", "predicted", "true")
_LABEL_ID = {name: index for index, name in enumerate(LABELS)}
_CATEGORY_OF = {
    tokenize.NAME: "NAME",
    tokenize.OP: "OP",
    tokenize.NUMBER: "NUMBER",
    tokenize.STRING: "STRING",
    tokenize.COMMENT: "COMMENT",
}
_LAYOUT = {tokenize.NEWLINE, tokenize.NL, tokenize.INDENT, tokenize.DEDENT, tokenize.ENDMARKER}
_FSTRING_START, _FSTRING_END = (
    getattr(tokenize, "FSTRING_START", None),
    getattr(tokenize, "FSTRING_END", None),
)

Span = tuple[int, int, str]  # [start, end) character offsets and category


@dataclass(frozen=True)
class TaggingData:
    """``*_ids``: (rows, max_len) int32 character ids of packed lines;
    ``*_labels``: their label ids."""

    train_ids: np.ndarray
    train_labels: np.ndarray
    heldout_ids: np.ndarray
    heldout_labels: np.ndarray
    train_files: tuple[str, ...]
    heldout_files: tuple[str, ...]


def tag_source(text: str) -> Iterator[tuple[str, list[Span]]]:
    """Each taggable line of ``text`` (indentation stripped) with its token spans."""
    lines = text.split("\n")
    spans: dict[int, list[Span]] = {}
    untaggable: set[int] = set()
    for category, (row, col), (end_row, end_col) in _categorized_tokens(text):
        if category is None or row != end_row:
            untaggable.update(range(row, end_row + 1))
        else:
            spans.setdefault(row, []).append((col, end_col, category))
    for row in sorted(spans.keys() - untaggable):
        line = lines[row - 1]
        indent = len(line) - len(line.lstrip())
        yield (
            line[indent:],
            [(start - indent, end - indent, category) for start, end, category in spans[row]],
        )


def _categorized_tokens(text: str) -> Iterator[tuple[str | None, tuple[int, int], tuple[int, int]]]:
    """(category or None for an error token, start, end) of each non-layout token. From Python
    3.12 an f-string arrives in pieces; it is merged back into one STRING, as
    older Pythons report it."""
    fstring_depth, fstring_start = 0, None
    for token in tokenize.generate_tokens(io.StringIO(text).readline):
        if token.type == _FSTRING_START:
            fstring_depth += 1
            fstring_start = fstring_start or token.start
        elif token.type == _FSTRING_END:
            fstring_depth -= 1
            if fstring_depth == 0:
                yield "STRING", fstring_start, token.end
                fstring_start = None
        elif fstring_depth == 0 and token.type not in _LAYOUT:
            category = _CATEGORY_OF.get(token.type)
            if category == "NAME" and keyword.iskeyword(token.string):
                category = "KEYWORD"
            yield category, token.start, token.end


def bio_labels(spans: Iterable[Span], length: int) -> list[int]:
    """Label id per character: B- on a token's first character, I- on the rest, O elsewhere."""
    labels = [_LABEL_ID["O"]] * length
    for start, end, category in spans:
        labels[start] = _LABEL_ID[f"B-{category}"]
        labels[start + 1 : end] = [_LABEL_ID[f"I-{category}"]] * (end - start - 1)
    return labels


def read_lines(files: Iterable[Path], max_len: int) -> list[tuple[str, list[int]]]:
    """(line, label id per character) of every taggable line of at most ``max_len`` characters."""
    lines = []
    for path in files:
        try:
            tagged = list(tag_source(read_file(path, text=True)))
        except (SyntaxError, UnicodeDecodeError, tokenize.TokenError):
            continue  # not valid Python for this interpreter: nothing to learn from
        lines += [
            (line, bio_labels(spans, len(line))) for line, spans in tagged if len(line) <= max_len
        ]
    return lines


def pack(lines: Sequence[tuple[str, list[int]]], max_len: int) -> tuple[np.ndarray, np.ndarray]:
    """Rows of ``max_len`` character ids and labels, each holding whole consecutive lines joined by
    newlines (labelled ``O``), padded with ``PAD``/``IGNORE``. Packing spares the model the padding
    that one short line per row would cost (the mean taggable line is ~32 characters)."""
    rows: list[tuple[str, list[int]]] = []
    for line, labels in lines:
        if rows and len(rows[-1][0]) + 1 + len(line) <= max_len:
            rows[-1] = (f"{rows[-1][0]}\n{line}", rows[-1][1] + [_LABEL_ID["O"]] + labels)
        else:
            rows.append((line, labels))
    ids = np.full((len(rows), max_len), PAD, dtype=np.int32)
    label_ids = np.full((len(rows), max_len), IGNORE, dtype=np.int32)
    for index, (text, labels) in enumerate(rows):
        ids[index, : len(text)] = [code if code < UNKNOWN else UNKNOWN for code in map(ord, text)]
        label_ids[index, : len(labels)] = labels
    return ids, label_ids


def load(
    max_len: int = 128,
    heldout_fraction: float = 0.1,
    seed: int = 0,
    max_files: int | None = None,
    max_train_lines: int | None = None,
    max_heldout_lines: int | None = None,
    root: str | Path | None = None,
) -> TaggingData:
    """Packed tagged lines of the standard library (or of ``root``), split by file with the language
    model's corpus rules (``text.source_files``/``split_files``); ``max_*`` take seeded subsets (of
    files, of lines) for shorter runs."""
    if max_len < 8:
        raise ValueError(f"max_len must be >= 8, got {max_len}")
    root = Path(root) if root is not None else stdlib_root()
    files = source_files(root)
    if not files:
        raise ValueError(f"no Python files under {root}")
    rng = np.random.default_rng(seed)
    if max_files is not None and max_files < len(files):
        files = sorted(files[i] for i in rng.choice(len(files), max_files, replace=False))
    train_files, heldout_files = split_files(files, heldout_fraction, seed)
    train = pack(
        _subset(read_lines([root / name for name in train_files], max_len), max_train_lines, rng),
        max_len,
    )
    heldout = pack(
        _subset(
            read_lines([root / name for name in heldout_files], max_len), max_heldout_lines, rng
        ),
        max_len,
    )
    return TaggingData(*train, *heldout, tuple(train_files), tuple(heldout_files))


def _subset(lines: list, limit: int | None, rng: np.random.Generator) -> list:
    """A seeded subset of ``limit`` lines, in their original order."""
    if limit is None or limit >= len(lines):
        return lines
    return [lines[i] for i in np.sort(rng.choice(len(lines), limit, replace=False))]


def entities(labels: Sequence[int]) -> set[Span]:
    """Entities of one label sequence, CoNLL style: an entity starts at a ``B-`` (or at an ``I-``
    not continuing its own category) and runs over the ``I-`` labels of its category."""
    found, start, category = set(), 0, None
    for position, label in enumerate([*labels, IGNORE]):
        name = LABELS[label] if 0 <= label < len(LABELS) else "O"
        prefix, _, this = name.partition("-")
        if category is not None and not (prefix == "I" and this == category):
            found.add((start, position, category))
            category = None
        if prefix == "B" or (prefix == "I" and category is None):
            start, category = position, this
    return found


def entity_counts(true_labels: np.ndarray, predicted_labels: np.ndarray) -> dict[str, float]:
    """Per category: ``tp`` (exact span and category), ``predicted`` and ``true`` entity counts.

    Padding (``IGNORE`` in ``true_labels``) is left out of the predictions too. Counts add up over
    batches and ranks; ``report`` turns them into precision/recall/F1.
    """
    counts = dict.fromkeys(
        (f"{category}/{kind}" for category in CATEGORIES for kind in _COUNTS), 0.0
    )
    for true_row, predicted_row in zip(np.asarray(true_labels), np.asarray(predicted_labels)):
        length = int(np.sum(true_row != IGNORE))
        truth, predicted = (
            entities(true_row[:length].tolist()),
            entities(predicted_row[:length].tolist()),
        )
        for kind, found in (("tp", truth & predicted), ("predicted", predicted), ("true", truth)):
            for _, _, category in found:
                counts[f"{category}/{kind}"] += 1
    return counts


def evaluate(
    predict: Callable[[np.ndarray], np.ndarray],
    ids: np.ndarray,
    labels: np.ndarray,
    ctx: Context,
    batch_size: int = 256,
) -> dict[str, dict[str, float]]:
    """Entity-level ``report`` of ``predict`` (a batch of ids -> label ids) over all ranks.

    Each rank tags every ``size``-th row, so every row counts exactly once; the counts are summed
    over ranks (rank average times world size, exact for counts), so all ranks
    return the same report.
    """
    mine_ids, mine_labels = ids[ctx.rank :: ctx.size], labels[ctx.rank :: ctx.size]
    counts = entity_counts(mine_labels[:0], mine_labels[:0])
    for start in range(0, len(mine_ids), batch_size):
        batch = entity_counts(
            mine_labels[start : start + batch_size], predict(mine_ids[start : start + batch_size])
        )
        counts = {key: counts[key] + batch[key] for key in counts}
    return report({key: round(value * ctx.size) for key, value in ctx.average(counts).items()})


def report(counts: Mapping[str, float]) -> dict[str, dict[str, float]]:
    """Per category and ``micro avg``: precision, recall, f1 and support (true entities)."""
    rows = {
        category: _scores(*(counts[f"{category}/{kind}"] for kind in _COUNTS))
        for category in CATEGORIES
    }
    rows["micro avg"] = _scores(
        *(sum(counts[f"{category}/{kind}"] for category in CATEGORIES) for kind in _COUNTS)
    )
    return rows


def _scores(tp: float, predicted: float, true: float) -> dict[str, float]:
    precision = tp / predicted if predicted else 0.0
    recall = tp / true if true else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": precision, "recall": recall, "f1": f1, "support": int(true)}


def format_report(rows: Mapping[str, Mapping[str, float]]) -> str:
    """A seqeval-style table of ``report``'s rows."""
    lines = [f"{'':>10} {'precision':>9} {'recall':>9} {'f1':>9} {'support':>9}"]
    for name, row in rows.items():
        if name == "micro avg":
            lines.append("")
        lines.append(
            f"{name:>10} {row['precision']:>9.4f} {row['recall']:>9.4f} {row['f1']:>9.4f} "
            f"{row['support']:>9d}"
        )
    return "\n".join(lines)


def example_parser(framework: str) -> argparse.ArgumentParser:
    """The flags of the token-tagging examples (``framework`` names the twin in ``--help``)."""
    parser = cli.training_parser(
        f"BERT-style token classification of Python source, {framework} on Horovod.",
        epochs=2,
        batch_size=32,
        lr=2e-3,
        warmup_steps=30,
    )
    group = parser.add_argument_group("data and model")
    group.add_argument(
        "--data-dir",
        type=data_dir,
        default=None,
        help="tag the .py files under this directory; default: the Python standard library",
    )
    group.add_argument(
        "--files", type=int, default=250, help="standard-library files to read (all: 0)"
    )
    group.add_argument(
        "--train-lines", type=int, default=40000, help="training lines to use (all: 0)"
    )
    group.add_argument(
        "--heldout-lines", type=int, default=5000, help="held-out lines to evaluate (all: 0)"
    )
    group.add_argument(
        "--max-len", type=int, default=128, help="characters per row of packed lines"
    )
    group.add_argument("--dim", type=int, default=64, help="model width")
    group.add_argument("--layers", type=int, default=2, help="transformer encoder layers")
    group.add_argument("--heads", type=int, default=4, help="attention heads")
    return parser
