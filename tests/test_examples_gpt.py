"""The GPT examples: the byte-corpus module on hand-made files and on the real stdlib, then each
framework's example on 2 ranks with a tiny model and budget and ``--no-tracking``.

Four horovodrun launches: torch (one epoch, then resumed with nothing left to train, which must
score the restored model the same), Keras (one epoch, then resumed to two from its checkpoint,
since the Keras resume and LR decay are the example's own code).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from hvdtrain.datasets import text
from tests.launch import REPO, run_example

CHANCE = math.log(text.VOCAB_SIZE)  # nats/byte of a uniform guess
TINY = (
    "--no-tracking",
    "--max-bytes",
    "300000",
    "--val-bytes",
    "20000",
    "--windows",
    "4800",
    "--block",
    "32",
    "--d-model",
    "64",
    "--layers",
    "2",
    "--heads",
    "2",
    "--lr",
    "3e-3",
    "--warmup-steps",
    "10",
    "--prompt",
    "import ",
    "--sample-bytes",
    "60",
)


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """A fake stdlib: ten modules, a package, and the directories that must be left out."""
    for i in range(10):
        (tmp_path / f"mod{i}.py").write_bytes(f"# module {i}\n".encode() * (i + 1))
    for name in (
        "pkg/__init__.py",
        "pkg/sub.py",
        "site-packages/numpy/core.py",
        "test/test_x.py",
        "idlelib/idle_test/t.py",
        "pkg/notes.txt",
    ):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"x = 1\n")
    return tmp_path


def test_source_files_are_sorted_relative_and_skip_third_party_and_tests(tree):
    assert text.source_files(tree) == sorted(
        [f"mod{i}.py" for i in range(10)] + ["pkg/__init__.py", "pkg/sub.py"]
    )
    real = text.source_files()
    assert len(real) > 300 and real == sorted(real) and "os.py" in real
    assert not any(part in text.EXCLUDED_DIRS for name in real for part in name.split("/")[:-1])


def test_file_split_is_a_seeded_partition(tree):
    files = text.source_files(tree)
    train, val = text.split_files(files, 0.25, seed=1)
    assert sorted(train + val) == files and not set(train) & set(val)
    assert len(val) == 3  # round(0.25 * 12)
    # input order is irrelevant
    assert text.split_files(list(reversed(files)), 0.25, seed=1) == (train, val)
    assert any(text.split_files(files, 0.25, seed=s)[1] != val for s in range(2, 6))
    with pytest.raises(ValueError, match="val_fraction must be between 0 and 1"):
        text.split_files(files, 1.0, seed=0)
    with pytest.raises(ValueError, match="at least 2 files"):
        text.split_files(files[:1], 0.5, seed=0)


def test_corpus_concatenates_its_files_in_split_order_up_to_the_budget(tree):
    corpus = text.load_stdlib(max_bytes=50, val_bytes=10_000, val_fraction=0.25, seed=1, root=tree)
    everything = b"".join((tree / name).read_bytes() for name in corpus.train_files)
    assert corpus.train.dtype == np.uint8 and corpus.train.tobytes() == everything[:50]
    assert corpus.val.tobytes() == b"".join((tree / name).read_bytes() for name in corpus.val_files)
    assert (
        corpus.fingerprint() == text.load_stdlib(50, 10_000, 0.25, seed=1, root=tree).fingerprint()
    )
    assert (
        corpus.fingerprint() != text.load_stdlib(51, 10_000, 0.25, seed=1, root=tree).fingerprint()
    )
    with pytest.raises(ValueError, match="max_bytes must be >= 1"):
        text.read_bytes(tree, corpus.train_files, 0)


def test_stdlib_corpus_is_the_same_in_another_process():
    """What every rank and every machine with this Python does: no shared state, same bytes."""
    code = (
        "from hvdtrain.datasets import text; print(text.load_stdlib(400_000, 40_000, "
        "seed=3).fingerprint())"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONHASHSEED": "123"}
    other = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd="/", check=True
    ).stdout.strip()
    corpus = text.load_stdlib(400_000, 40_000, seed=3)
    assert other == corpus.fingerprint()
    assert len(corpus.train) == 400_000 and len(corpus.val) == 40_000
    assert not set(corpus.train_files) & set(corpus.val_files)


def test_unigram_cross_entropy_on_hand_made_bytes():
    train = np.array([0, 0, 0, 1], dtype=np.uint8)
    # Add-one smoothing: counts 4 and 2 for the seen bytes, 1 for the 254 others, 260 in all.
    assert text.unigram_cross_entropy(train, np.array([0, 1])) == pytest.approx(
        -(math.log(4 / 260) + math.log(2 / 260)) / 2
    )
    assert text.unigram_cross_entropy(train, np.array([7])) == pytest.approx(-math.log(1 / 260))
    assert text.unigram_cross_entropy(train, np.array([0, 1]), smoothing=1e-9) == pytest.approx(
        -(math.log(0.75) + math.log(0.25)) / 2
    )
    with pytest.raises(ValueError, match="smoothing must be > 0"):
        text.unigram_cross_entropy(train, train, smoothing=0.0)
    uniform = np.arange(256, dtype=np.uint8)
    assert text.unigram_cross_entropy(uniform, uniform) == pytest.approx(CHANCE)


def test_windows_pair_each_byte_with_the_next():
    data = np.arange(200, dtype=np.uint8)
    inputs, targets = text.random_windows(data, block=8, count=50, seed=0)
    assert inputs.shape == targets.shape == (50, 8) and inputs.dtype == np.int32
    # consecutive bytes: the target is the next one
    np.testing.assert_array_equal(targets, inputs + 1)
    np.testing.assert_array_equal(np.diff(inputs, axis=1), 1)
    assert inputs.min() >= 0 and targets.max() <= 199
    np.testing.assert_array_equal(inputs, text.random_windows(data, 8, 50, seed=0)[0])
    assert not np.array_equal(inputs, text.random_windows(data, 8, 50, seed=1)[0])
    inputs, targets = text.tiled_windows(data[:33], block=8)
    # every byte after the first, exactly once
    np.testing.assert_array_equal(targets.ravel(), data[1:33])
    np.testing.assert_array_equal(inputs.ravel(), data[:32])
    with pytest.raises(ValueError, match="too few"):
        text.tiled_windows(data[:8], block=8)
    with pytest.raises(ValueError, match="block must be >= 1"):
        text.random_windows(data, block=0, count=1, seed=0)


def test_sampling_follows_the_tempered_softmax():
    rng = np.random.default_rng(0)
    logits = np.log([0.25, 0.75])
    draws = [text.sample_token(logits, 1.0, rng) for _ in range(4000)]
    assert np.mean(draws) == pytest.approx(0.75, abs=0.03)
    sharp = [text.sample_token(logits, 0.1, rng) for _ in range(500)]  # (3:1)^10: nearly always 1
    assert np.mean(sharp) > 0.99
    assert text.sample_token(np.array([0.0, 5.0, 1.0]), 0.0, rng) == 1
    with pytest.raises(ValueError, match="temperature must be >= 0"):
        text.sample_token(logits, -1.0, rng)


def test_encode_decode_round_trip():
    assert text.decode(text.encode("déf f(x):\n")) == "déf f(x):\n"
    # a model may emit invalid UTF-8: shown, not raised
    assert text.decode([0x66, 0xFF]) == "f\ufffd"


def check_result(found: dict, stdout: str, framework: str) -> None:
    """Far better than chance and than the no-context baseline,
    which is computed on the right bytes."""
    corpus = text.load_stdlib(300_000, 20_000)
    assert found["unigram_ce"] == pytest.approx(
        text.unigram_cross_entropy(corpus.train, text.tiled_windows(corpus.val, 32)[1]), rel=1e-12
    )
    assert (found["framework"], found["example"], found["workers"]) == (framework, "gpt", 2)
    assert found["metric_name"] == "val_loss/unigram_ce"
    assert found["metric"] == pytest.approx(found["val_loss"] / found["unigram_ce"])
    assert found["val_loss"] < 0.5 * CHANCE and found["metric"] < 0.9, found
    assert found["sample"].startswith("import ") and len(found["sample"]) > len("import ") + 20
    # rank 0 only
    assert stdout.count("validation loss:") == stdout.count("--- sampled at temperature") == 1


@pytest.mark.slow
def test_torch_gpt_learns_the_stdlib(tmp_path):
    usage = subprocess.run(
        [sys.executable, str(REPO / "torch_examples/gpt.py"), "--help"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert all(
        flag in usage
        for flag in ("--max-bytes", "--windows", "--block", "--temperature", "--resume")
    )
    ckpt = ("--epochs", "1", "--checkpoint-dir", str(tmp_path / "ckpt"))
    found, stdout = run_example("torch_examples/gpt.py", *TINY, *ckpt, out=tmp_path / "first")
    check_result(found, stdout, "torch")
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == [
        "step-00000150.json",
        "step-00000150.pt",
    ]
    # Resumed with nothing left to train: the restored model scores exactly what the trained one
    # did.
    again, _ = run_example(
        "torch_examples/gpt.py", *TINY, *ckpt, "--resume", out=tmp_path / "again"
    )
    assert again["val_loss"] == pytest.approx(found["val_loss"], rel=1e-9)
    # --data-dir: the corpus is that tree's, not the standard library's.
    own = tmp_path / "own"
    shutil.copytree(
        Path(json.__file__).parent, own / "json", ignore=shutil.ignore_patterns("__pycache__")
    )
    mine, _ = run_example(
        "torch_examples/gpt.py",
        *TINY,
        "--epochs",
        "1",
        "--windows",
        "480",
        "--data-dir",
        str(own),
        out=tmp_path / "own_run",
    )
    corpus = text.load_stdlib(300_000, 20_000, seed=0, root=own)
    want = text.unigram_cross_entropy(corpus.train, text.tiled_windows(corpus.val, 32)[1])
    assert mine["unigram_ce"] == pytest.approx(want) and want != pytest.approx(found["unigram_ce"])


@pytest.mark.slow
def test_keras_gpt_learns_the_stdlib_and_resumes(tmp_path):
    ckpt = str(tmp_path / "ckpt")
    first, _ = run_example(
        "tf_examples/gpt.py",
        *TINY,
        "--epochs",
        "1",
        "--checkpoint-dir",
        ckpt,
        out=tmp_path / "first",
    )
    resumed, stdout = run_example(
        "tf_examples/gpt.py",
        *TINY,
        "--epochs",
        "2",
        "--checkpoint-dir",
        ckpt,
        "--resume",
        out=tmp_path / "resumed",
    )
    check_result(resumed, stdout, "keras")
    assert "Epoch 2/2" in stdout and "Epoch 1/2" not in stdout  # continued, not restarted
    assert resumed["val_loss"] < first["val_loss"] - 0.05
    meta = json.loads((tmp_path / "ckpt" / "step-00000300.json").read_text())
    assert (meta["step"], meta["epoch"]) == (300, 2)
