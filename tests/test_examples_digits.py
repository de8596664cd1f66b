"""The digits examples: the shared data module, then each framework's example on 2 ranks.

Three horovodrun launches with a tiny budget and ``--no-tracking``: torch (4 epochs), Keras
(2 epochs, then resumed to 4 from its checkpoint, since the Keras resume is the example's own code;
``ht.fit``'s resume is covered by the torch adapter's tests).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from sklearn.datasets import load_digits

from hvdtrain.core.context import Context
from hvdtrain.datasets import digits
from tests.launch import REPO, run_example

CHANCE = 1 / digits.NUM_CLASSES
TINY = ("--no-tracking", "--seed", "1")


def rows(*parts: digits.Part) -> list[bytes]:
    """Each sample (image and label) as bytes, sorted:
    equal lists mean equal multisets of samples."""
    return sorted(
        p.images[i].tobytes() + p.labels[i].tobytes() for p in parts for i in range(len(p))
    )


def test_splits_partition_the_dataset_and_are_stratified():
    splits = digits.load_splits(seed=0)
    full = load_digits()
    everything = digits.Part((full.images / 16).astype(np.float32), full.target.astype(np.int64))
    # no overlap, nothing lost
    assert rows(splits.train, splits.val, splits.test) == rows(everything)
    assert (len(splits.train), len(splits.val), len(splits.test)) == (1257, 180, 360)
    class_share = np.bincount(everything.labels) / len(everything)
    for part in (splits.train, splits.val, splits.test):
        assert part.images.dtype == np.float32 and part.images.shape[1:] == (8, 8)
        assert part.labels.dtype == np.int64
        assert part.images.min() == 0.0 and part.images.max() == 1.0
        assert np.abs(np.bincount(part.labels, minlength=10) - class_share * len(part)).max() <= 1.0


def test_splits_depend_only_on_the_seed():
    first, again, other = (
        digits.load_splits(seed=3),
        digits.load_splits(seed=3),
        digits.load_splits(seed=4),
    )
    for name in ("train", "val", "test"):
        np.testing.assert_array_equal(getattr(first, name).images, getattr(again, name).images)
        np.testing.assert_array_equal(getattr(first, name).labels, getattr(again, name).labels)
    assert rows(first.test) != rows(other.test)


def test_train_samples_takes_a_stratified_subset_of_train_only():
    full, small = digits.load_splits(seed=2), digits.load_splits(seed=2, train_samples=100)
    assert np.bincount(small.train.labels).tolist() == [10] * 10
    assert set(rows(small.train)) <= set(rows(full.train))
    assert rows(small.val) == rows(full.val) and rows(small.test) == rows(full.test)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"val_fraction": 0.0}, "val_fraction must be between 0 and 1"),
        ({"test_fraction": 1.5}, "test_fraction must be between 0 and 1"),
        ({"val_fraction": 0.5, "test_fraction": 0.5}, "val_fraction + test_fraction must be < 1"),
        ({"train_samples": 5}, "train_samples must be between 10 and 1257"),
        ({"train_samples": 2000}, "train_samples must be between 10 and 1257"),
    ],
)
def test_bad_split_arguments_are_one_line_errors(kwargs, message):
    with pytest.raises(ValueError, match=message.replace("+", r"\+")):
        digits.load_splits(**kwargs)


def test_accuracy_on_hand_made_scores():
    scores = np.array([[0.1, 0.9, 0.0], [2.0, -1.0, 0.5], [0.2, 0.3, 0.5], [5.0, 4.0, 3.0]])
    assert digits.accuracy(scores, np.array([1, 0, 1, 0])) == 0.75
    assert digits.accuracy(scores, np.array([0, 1, 0, 1])) == 0.0
    with pytest.raises(ValueError, match=r"scores \(N, classes\) and labels \(N,\)"):
        digits.accuracy(scores, np.array([1, 0]))
    with pytest.raises(ValueError, match="empty"):
        digits.accuracy(np.zeros((0, 3)), np.zeros(0, dtype=int))


def single_rank_context(rank: int = 0, size: int = 1) -> Context:
    """A job's context as one process sees it;
    ``average`` over a single contribution is the value."""
    return Context(
        framework="numpy",
        rank=rank,
        size=size,
        local_rank=rank,
        local_size=size,
        device="cpu",
        broadcast_object=lambda obj, root: obj,
        average=dict,
    )


def test_sharded_accuracy_predicts_this_ranks_share_only():
    part = digits.load_splits().test
    seen = []

    def predict(images):
        seen.append(images)
        # one-hot of the first labels: right on the full set
        return np.eye(10)[part.labels[: len(images)]]

    assert digits.sharded_accuracy(predict, part, single_rank_context()) == 1.0
    np.testing.assert_array_equal(seen[0], part.images)
    seen.clear()
    digits.sharded_accuracy(predict, part, single_rank_context(rank=1, size=3))
    np.testing.assert_array_equal(seen[0], part.images[1::3])
    with pytest.raises(ValueError, match="empty"):
        digits.sharded_accuracy(
            predict, digits.Part(part.images[:0], part.labels[:0]), single_rank_context()
        )


def checkpoint_epochs(directory: Path) -> dict[int, int]:
    """step -> epoch of each checkpoint kept in ``directory``."""
    return {
        meta["step"]: meta["epoch"]
        for meta in (json.loads(p.read_text()) for p in directory.glob("step-*.json"))
    }


def assert_far_better_than_chance(result: dict, framework: str) -> None:
    assert {
        k: result[k]
        for k in ("framework", "example", "workers", "metric_name", "test_samples", "run_id")
    } == {
        "framework": framework,
        "example": "digits",
        "workers": 2,
        "metric_name": "test_accuracy",
        "test_samples": 360,
        "run_id": None,
    }
    assert result["metric"] == result["test_accuracy"] >= 8 * CHANCE
    # a count over the whole test set
    assert result["metric"] * 360 == pytest.approx(round(result["metric"] * 360))
    assert result["wall_time_s"] > 0


@pytest.mark.slow
def test_torch_example_learns_and_checkpoints(tmp_path):
    ckpt = tmp_path / "ckpt"
    result, stdout = run_example(
        "torch_examples/digits.py",
        *TINY,
        "--epochs",
        "4",
        "--checkpoint-dir",
        str(ckpt),
        out=tmp_path,
    )
    assert_far_better_than_chance(result, "torch")
    steps = 20  # ceil(1257 / 2 ranks / 32 per batch)
    assert checkpoint_epochs(ckpt) == {2 * steps: 2, 3 * steps: 3, 4 * steps: 4}
    assert stdout.count("test accuracy:") == 1  # rank 0 only


@pytest.mark.slow
def test_keras_example_learns_and_resumes(tmp_path):
    ckpt = tmp_path / "ckpt"
    first, _ = run_example(
        "tf_examples/digits.py", *TINY, "--epochs", "2", "--checkpoint-dir", str(ckpt), out=tmp_path
    )
    assert first["framework"] == "keras" and first["metric"] > 3 * CHANCE
    result, stdout = run_example(
        "tf_examples/digits.py",
        *TINY,
        "--epochs",
        "4",
        "--checkpoint-dir",
        str(ckpt),
        "--resume",
        out=tmp_path,
    )
    assert_far_better_than_chance(result, "keras")
    # continued where the first job stopped
    assert "Epoch 3/4" in stdout and "Epoch 1/4" not in stdout
    steps = 20
    assert checkpoint_epochs(ckpt) == {2 * steps: 2, 3 * steps: 3, 4 * steps: 4}
    assert stdout.count("test accuracy:") == 1


@pytest.mark.parametrize("script", ["torch_examples/digits.py", "tf_examples/digits.py"])
def test_help_lists_shared_and_digits_flags(script):
    proc = subprocess.run(
        [sys.executable, str(REPO / script), "--help"],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
    )
    assert proc.returncode == 0, proc.stderr
    for flag in (
        "--epochs",
        "--lr-scaling",
        "--warmup-steps",
        "--compression",
        "--accumulation-steps",
        "--checkpoint-dir",
        "--resume",
        "--experiment",
        "--results",
        "--train-samples",
        "--log-model",
        "--mixed-precision",
    ):
        assert flag in proc.stdout
