"""The framework-free core: LR rules, sharding policy, checkpoint directory (single process)."""

import errno
import math
import subprocess
import sys

import numpy as np
import pytest

from hvdtrain.core.checkpoint import CheckpointDir, CheckpointError, CheckpointMeta, first_line
from hvdtrain.core.guards import NonFiniteLossError, check_finite
from hvdtrain.core.lr import warmup_multiplier
from hvdtrain.core.sharding import samples_per_rank, shard_indices


def _meta(step):
    return CheckpointMeta(step=step, epoch=0, world_size=2, framework="torch", payload="")


def _save(directory, step):
    return directory.save(_meta(step), lambda tmp: open(tmp, "w").write(f"weights {step}"))


def test_checkpoints_keep_the_newest_and_skip_a_broken_one(tmp_path, caplog):
    directory = CheckpointDir(tmp_path, ".pt", keep=2)
    for step in (10, 20, 30):
        _save(directory, step)
    assert [step for step, _ in directory.checkpoints()] == [20, 30]
    assert not (tmp_path / "step-00000010.pt").exists()
    (tmp_path / "step-00000030.json").write_text("{not json")
    (tmp_path / "step-00000040.pt").write_text("a save cut short before its sidecar")
    with caplog.at_level("WARNING", "hvdtrain.checkpoint"):
        payload, meta = directory.latest()
    assert meta.step == 20 and payload.read_text() == "weights 20"
    assert [r.getMessage() for r in caplog.records] == [
        "hvdtrain: warning: skipping checkpoint step-00000040.pt: partial checkpoint "
        "(step-00000040.json missing)",
        "hvdtrain: warning: skipping checkpoint step-00000030.json: unreadable checkpoint "
        "metadata (Expecting property name enclosed in double quotes: line 1 column 2 (char 1))",
    ]


def test_a_new_run_in_an_old_runs_directory_is_refused(tmp_path):
    directory = CheckpointDir(tmp_path, ".pt")
    _save(directory, 1200)
    with pytest.raises(CheckpointError, match="later step \\(1200 > 100\\)"):
        _save(directory, 100)
    # nothing already written is lost
    assert [step for step, _ in directory.checkpoints()] == [1200]


def test_a_killed_save_leaves_no_checkpoint_that_looks_complete(tmp_path):
    directory = CheckpointDir(tmp_path, ".pt")

    def dies(tmp):
        open(tmp, "w").write("half")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        directory.save(_meta(5), dies)
    assert list(tmp_path.iterdir()) == [] and directory.latest() is None


def test_a_failed_save_keeps_what_was_written_and_says_so_in_one_line(tmp_path):
    directory = CheckpointDir(tmp_path, ".pt")
    _save(directory, 10)
    before = sorted(p.name for p in tmp_path.iterdir())

    def disk_full(tmp):
        open(tmp, "w").write("half")
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(CheckpointError) as failed:
        directory.save(_meta(20), disk_full)
    assert str(failed.value) == (
        f"{tmp_path}/step-00000020.pt: cannot write checkpoint (OSError: [Errno 28] No space "
        f"left on device); step-00000010 and older are kept"
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # the temporary file is gone too


def test_a_directory_that_is_a_file_is_refused_before_training(tmp_path):
    (tmp_path / "notes").write_text("mine")
    for root in (tmp_path / "notes", tmp_path / "notes" / "ckpt"):
        want = f"^{root}: cannot write checkpoints there \\((FileExists|NotADirectory)Error"
        with pytest.raises(CheckpointError, match=want):
            CheckpointDir(root, ".pt").check_writable()
    assert (tmp_path / "notes").read_text() == "mine"


def test_a_multi_line_error_becomes_one_line():
    err = RuntimeError(
        "Error(s) in loading state_dict for Sequential:\n\tsize mismatch for 0.weight."
    )
    assert (
        first_line(err)
        == "Error(s) in loading state_dict for Sequential: size mismatch for 0.weight."
    )
    assert (
        first_line(ValueError("x" * 500)) == "x" * 297 + "..."
        and first_line(ValueError()) == "no detail"
    )


def test_check_finite_names_the_metric_and_step():
    check_finite({"loss": 0.5, "accuracy": 1.0}, step=3)
    for value in (math.nan, math.inf):
        with pytest.raises(NonFiniteLossError) as stopped:
            check_finite({"accuracy": 0.1, "loss": value}, step=120)
        assert str(stopped.value) == (
            f"loss is {value} at step 120; stopping: lower the learning rate or check the data"
        )
    assert NonFiniteLossError.collective and isinstance(stopped.value, RuntimeError)


@pytest.mark.parametrize(
    "raised,rank,want",
    [
        (
            "CheckpointError('ckpt/step-1.pt: truncated')",
            "0",
            ["hvdtrain: error: ckpt/step-1.pt: truncated"],
        ),
        (
            "CheckpointError('ckpt/step-1.pt: truncated')",
            "1",
            ["hvdtrain: error: ckpt/step-1.pt: truncated"],
        ),
        # rank 0 says it
        (
            "CheckpointError('ckpt/step-1.pt: truncated', collective=True)",
            "1",
            [],
        ),
        ("ValueError('a bug of the script')", "0", ["ValueError: a bug of the script"]),
    ],
)
def test_user_errors_end_the_script_in_one_line(raised, rank, want):
    code = (
        "from hvdtrain.core import context, failures\n"
        "from hvdtrain.core.checkpoint import CheckpointError\n"
        f"context.set_current(context.Context('torch', {rank}, 2, 0, 2, 'cpu', None, None))\n"
        f"failures.install()\nraise {raised}"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert (lines if "Error(" in raised and "ValueError" not in raised else lines[-1:]) == want
    assert ("Traceback" in proc.stderr) == ("ValueError" in raised)


@pytest.mark.parametrize(
    "n,size,drop_last", [(1001, 2, False), (1001, 2, True), (10, 3, False), (7, 4, True)]
)
def test_every_rank_gets_the_same_number_of_samples(n, size, drop_last):
    shards = [shard_indices(n, r, size, seed=3, epoch=1, drop_last=drop_last) for r in range(size)]
    want = n // size if drop_last else math.ceil(n / size)
    assert {len(s) for s in shards} == {want} == {samples_per_rank(n, size, drop_last)}
    seen = np.concatenate(shards)
    if drop_last:
        assert len(set(seen)) == len(seen)  # disjoint
    else:
        assert set(seen) == set(range(n))  # every sample at least once
    assert not np.array_equal(
        shards[0], shard_indices(n, 0, size, seed=3, epoch=2, drop_last=drop_last)
    )


def test_warmup_ramps_from_base_to_scaled():
    assert [warmup_multiplier(s, 4, 2.0) for s in range(6)] == [0.5, 0.625, 0.75, 0.875, 1.0, 1.0]
    assert warmup_multiplier(0, 4, 1.0) == 1.0 and warmup_multiplier(0, 0, 2.0) == 1.0
