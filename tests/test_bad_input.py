"""Issue 8, item 5: every bad input a user can give ends in one clear line and, where the job
cannot go on, a non-zero exit, with nothing already written lost (the bad-input table of
docs/reliability.md; launcher rows are in test_cli_run.py, tracking rows in test_tracking*.py).

Multi-process rows run ``tests/workers/bad_*.py`` under ``horovodrun -np 2``; what a user sees
is horovodrun's output: each rank's lines prefixed ``[rank]<stderr>:``.
"""

from __future__ import annotations

import runpy
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from hvdtrain.core.checkpoint import read_meta
from tests import docs_table
from tests.launch import REPO, horovodrun, results
from tests.workers.bad_common import snapshot

ERROR = "hvdtrain: error: "


def error_lines(proc: subprocess.CompletedProcess) -> list[str]:
    """The lines of hvdtrain's one-line errors in a job's output (the rank prefix removed)."""
    return [
        line.split(ERROR, 1)[1]
        for line in (proc.stdout + proc.stderr).splitlines()
        if ERROR in line
    ]


def workers_output(proc: subprocess.CompletedProcess) -> str:
    """What the workers printed (horovodrun's own traceback about the failed job left out)."""
    return "\n".join(
        line for line in (proc.stdout + proc.stderr).splitlines() if line.startswith("[")
    )


def assert_row(proc: subprocess.CompletedProcess, key: str, **fill: str) -> str:
    """The job ended as the bad-input table's row ``key`` says (its exit status, exactly one line
    of its answer), with no other error line and no traceback; returns that line."""
    line = docs_table.row(key).check(proc.stdout + proc.stderr, proc.returncode, **fill)
    assert len(error_lines(proc)) <= 1, error_lines(proc)  # no second error, from another rank
    assert "Traceback" not in workers_output(proc), workers_output(proc)[-3000:]
    return line


def job(
    framework: str, mode: str, ckpt: Path, out: Path, *args: str, check: bool = False, **kwargs
):
    return horovodrun(
        f"bad_{framework}.py",
        "--mode",
        mode,
        "--ckpt",
        str(ckpt),
        *args,
        out=out,
        check=check,
        **kwargs,
    )


@pytest.fixture(scope="module")
def torch_ckpt(tmp_path_factory) -> Path:
    """Two committed torch checkpoints (steps 4 and 8) of the 8-wide model; tests copy them."""
    out = tmp_path_factory.mktemp("torch_ckpt")
    job("torch", "save", out / "ckpt", out, "--epochs", "2", check=True)
    assert sorted(p.name for p in (out / "ckpt").iterdir()) == [
        "step-00000004.json",
        "step-00000004.pt",
        "step-00000008.json",
        "step-00000008.pt",
    ]
    return out / "ckpt"


def copy_of(ckpt: Path, into: Path) -> Path:
    into.mkdir(parents=True)
    for path in ckpt.iterdir():
        (into / path.name).write_bytes(path.read_bytes())
    return into


# --- flags of the example scripts: argparse, exit 2, before Horovod starts -----------------------

FLAG_ROWS = docs_table.rows_for("test_bad_input.py::test_bad_flag_is_an_argparse_error_exit_2")


@pytest.mark.parametrize("row", FLAG_ROWS, ids=[r.command for r in FLAG_ROWS])
def test_bad_flag_is_an_argparse_error_exit_2(tmp_path, monkeypatch, capsys, row):
    """The table's command; the example runs in this process (its imports are cached) and stops
    before ``init``."""
    (tmp_path / "empty").mkdir()
    monkeypatch.chdir(tmp_path)
    script, *args = shlex.split(row.command)
    monkeypatch.setattr(sys, "argv", [script, *args])
    with pytest.raises(SystemExit) as stopped:
        runpy.run_path(str(REPO / script), run_name="__main__")
    err = capsys.readouterr().err
    assert row.check(err, stopped.value.code) == err.strip()  # that line only: no usage block
    # nothing written: no store, no checkpoint
    assert list(tmp_path.iterdir()) == [tmp_path / "empty"]


@pytest.mark.slow
def test_bad_flag_under_hvdtrain_run_stops_the_job_with_status_2(tmp_path):
    row = docs_table.row(
        "hvdtrain run -np 2 torch_examples/digits.py --epochs 0 (a bad flag under the launcher)"
    )
    proc = subprocess.run(
        [str(Path(sys.executable).parent / "hvdtrain"), *shlex.split(row.command)[1:]],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
    )
    # One line from rank 0 (no usage block, no copy per rank); the launcher names the first rank to
    # exit.
    assert row.check(proc.stderr, proc.returncode) == proc.stderr.strip().splitlines()[-1]
    output = proc.stdout + proc.stderr
    assert output.count("digits.py: error: argument --epochs: must be >= 1, got 0") == 1
    assert "usage:" not in output


# --- checkpoints ---------------------------------------------------------------------------------


@pytest.mark.slow
def test_checkpoint_of_another_model_stops_every_rank_torch(tmp_path, torch_ckpt):
    ckpt = copy_of(torch_ckpt, tmp_path / "ckpt")
    before = snapshot(ckpt)
    proc = job("torch", "continue", ckpt, tmp_path, "--epochs", "3", "--width", "16")
    assert_row(proc, "resume from a checkpoint of another model (torch)", ckpt=str(ckpt))
    assert [r["error_type"] for r in results(tmp_path)] == [
        "CheckpointError"
    ] * 2  # every rank stopped
    assert snapshot(ckpt) == before


@pytest.mark.slow
def test_checkpoint_of_the_other_framework_is_refused(tmp_path, torch_ckpt):
    ckpt = copy_of(torch_ckpt, tmp_path / "ckpt")
    before = snapshot(ckpt)
    proc = job("keras", "continue", ckpt, tmp_path, "--epochs", "3")
    assert_row(proc, "resume from the other framework's checkpoints", ckpt=str(ckpt))
    assert [r["error_type"] for r in results(tmp_path)] == ["CheckpointError"] * 2
    assert snapshot(ckpt) == before


@pytest.mark.slow
def test_corrupt_or_partial_newest_checkpoint_is_skipped_for_the_previous_one(tmp_path, torch_ckpt):
    ckpt = copy_of(torch_ckpt, tmp_path / "ckpt")
    newest = ckpt / "step-00000008.pt"
    newest.write_bytes(newest.read_bytes()[:300])  # truncated payload, sidecar intact
    (ckpt / "step-00000012.pt").write_bytes(b"payload of a save cut short")  # no sidecar
    proc = job("torch", "resume", ckpt, tmp_path, check=True)
    warnings = [
        line.split("<stderr>:", 1)[1]
        for line in (proc.stdout + proc.stderr).splitlines()
        if "hvdtrain: warning" in line
    ]
    assert warnings == [
        assert_row(proc, "newest checkpoint partial (payload, no sidecar: a save cut short)"),
        assert_row(proc, "newest checkpoint truncated or corrupt (torch)"),
    ]
    # both ranks, from the previous good checkpoint
    assert proc.stdout.count("resumed at step 4") == 2
    # The corrupt one is kept aside, out of the way of later saves; training goes on from step 4.
    assert {"step-00000008.pt.corrupt", "step-00000008.json.corrupt"} <= {
        p.name for p in ckpt.iterdir()
    }
    job("torch", "continue", ckpt, tmp_path / "more", "--epochs", "3", check=True)
    assert [read_meta(ckpt / f"step-{s:08d}.json")[1].step for s in (8, 12)] == [8, 12]


@pytest.mark.slow
def test_keras_corrupt_newest_checkpoint_is_skipped_and_another_model_refused(tmp_path):
    ckpt = tmp_path / "ckpt"
    job("keras", "save", ckpt, tmp_path / "save", "--epochs", "2", check=True)
    newest = sorted(ckpt.glob("*.keras"))[-1]
    newest.write_bytes(newest.read_bytes()[:500])
    proc = job("keras", "resume", ckpt, tmp_path / "resume", check=True)
    assert newest.name == "step-00000008.keras"
    assert_row(proc, "newest checkpoint truncated or corrupt (Keras)")
    assert proc.stdout.count("resumed at step 4") == 2
    before = snapshot(ckpt)
    proc = job("keras", "resume", ckpt, tmp_path / "other", "--width", "16")
    line = assert_row(proc, "resume from a checkpoint of another model (Keras)", ckpt=str(ckpt))
    # step 8 was set aside as corrupt
    assert line.startswith(f"hvdtrain: error: {ckpt}/step-00000004.keras: ")
    assert "variable.shape=(4, 16), Received: value.shape=(4, 8)" in line
    assert snapshot(ckpt) == before


@pytest.mark.slow
@pytest.mark.parametrize("framework", ["torch", "keras"])
def test_checkpoint_dir_that_is_a_file_stops_the_job(tmp_path, framework):
    not_a_dir = tmp_path / "ckpt"
    not_a_dir.write_text("my notes")
    proc = job(framework, "save", not_a_dir, tmp_path / "out", "--epochs", "1")
    # before training
    assert_row(proc, "--checkpoint-dir is a file (or under one)", ckpt=str(not_a_dir))
    assert [r["error_type"] for r in results(tmp_path / "out")] == [
        "CheckpointError"
    ] * 2  # every rank stopped
    assert not_a_dir.read_text() == "my notes"


@pytest.mark.slow
def test_a_checkpoint_directory_belongs_to_one_job_at_a_time(tmp_path, torch_ckpt):
    """Issue 25 (B2): reused without resuming, it trained an epoch before being refused (and its
    MLflow run file was rewritten meanwhile); two jobs at once interleaved their checkpoints.
    Both are refused before training, the directory untouched."""
    ckpt = copy_of(torch_ckpt, tmp_path / "ckpt")
    before = snapshot(ckpt)
    proc = job("torch", "save", ckpt, tmp_path / "reused", "--epochs", "1")
    assert_row(
        proc,
        "--checkpoint-dir ckpt reused without --resume (it holds an earlier job's checkpoints)",
        ckpt=str(ckpt),
    )
    assert [r["error_type"] for r in results(tmp_path / "reused")] == ["CheckpointError"] * 2
    assert snapshot(ckpt) == before
    # Another job holds it (the lock is the process's: any process that claimed it will do).
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from hvdtrain.core.checkpoint import claim; "
            "claim(sys.argv[1], resume=True); print('held', flush=True); time.sleep(120)",
            str(ckpt),
        ],
        stdout=subprocess.PIPE,
        text=True,
        cwd=REPO,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        proc = job("torch", "continue", ckpt, tmp_path / "second", "--epochs", "3")
        line = assert_row(
            proc,
            "a second job on a checkpoint directory another job is using",
            ckpt=str(ckpt),
        )
        assert f"(pid {holder.pid}: " in line
    finally:
        holder.kill()
        holder.wait()
    assert snapshot(ckpt) == before


@pytest.mark.slow
def test_resume_with_nothing_left_to_train_says_so(tmp_path, torch_ckpt):
    """Issue 25: ``--resume --epochs 1`` after two epochs trained nothing and said nothing."""
    ckpt = copy_of(torch_ckpt, tmp_path / "ckpt")
    before = snapshot(ckpt)
    proc = job("torch", "continue", ckpt, tmp_path / "out", "--epochs", "1")
    line = assert_row(
        proc, "--resume with an --epochs the checkpoint already reached", ckpt=str(ckpt)
    )
    assert line.endswith("is at epoch 2 (step 8) and epochs=1; pass a larger --epochs to train on")
    assert snapshot(ckpt) == before  # nothing trained, nothing saved


@pytest.mark.slow
def test_full_disk_keeps_the_previous_checkpoints_and_stops(tmp_path, torch_ckpt):
    ckpt = copy_of(torch_ckpt, tmp_path / "ckpt")
    before = snapshot(ckpt)
    # Rank 0 may write no file over 1 kB: the sidecar (~0.4 kB) would fit, the payload cannot.
    proc = job("torch", "continue", ckpt, tmp_path / "full", "--epochs", "3", "--fsize", "1000")
    assert_row(proc, "disk full while saving a checkpoint", ckpt=str(ckpt))
    assert snapshot(ckpt) == before  # no temporary file left, nothing pruned or overwritten
    # and the newest one still loads
    state = torch.load(ckpt / "step-00000008.pt", weights_only=True)
    assert state["model"]["0.weight"].shape == (8, 4)


# --- training data and optimizer that cannot train data-parallel: stopped at the start ----------


@pytest.mark.slow
@pytest.mark.parametrize("framework", ["torch", "keras"])
def test_a_batch_beyond_the_share_and_a_warmup_beyond_the_job_are_said(tmp_path, framework):
    """Issue 25's twenty tries #10 and #14: both trained as asked without a word."""
    proc = job(framework, "oversized", tmp_path / "ckpt", tmp_path / "out", timeout=120)
    fit = {"torch": "ht.fit", "keras": "hk.fit"}[framework]
    for key in (
        "a batch size larger than a worker's share of an epoch",
        "a warmup longer than the job (2 workers)",
    ):
        docs_table.row(key).check(proc.stdout + proc.stderr, proc.returncode, fit=fit)
    assert not error_lines(proc)


@pytest.mark.slow
@pytest.mark.parametrize(
    "framework, mode, key",
    [
        ("torch", "empty", "ht.fit on an empty dataset"),
        ("keras", "empty", "hk.fit on empty arrays"),
        (
            "torch",
            "unequal",
            "ht.fit with per-rank loaders of unequal length (not ht.distributed_loader)",
        ),
    ],
    ids=["torch-empty", "keras-empty", "torch-unequal"],
)
def test_empty_or_unequal_training_data_is_refused_before_training(tmp_path, framework, mode, key):
    """Issue 25 (B6, B7, B9): no "finished" job with a zero loss, no hang until the hang timeout:
    every rank stops before its first step, nothing is written."""
    proc = job(framework, mode, tmp_path / "ckpt", tmp_path / "out", "--epochs", "2", timeout=120)
    assert_row(proc, key)
    assert [r["error_type"] for r in results(tmp_path / "out")] == ["TrainingDataError"] * 2
    assert not (tmp_path / "ckpt").exists() or not list((tmp_path / "ckpt").iterdir())


@pytest.mark.slow
@pytest.mark.parametrize(
    "mode, key",
    [
        ("jit", "hk.fit on a model compiled with jit_compile=True"),
        ("lengths", "hk.fit with x and y of different lengths"),
    ],
)
def test_a_keras_refusal_is_one_line_not_a_traceback_per_rank(tmp_path, mode, key):
    """Issue 25: refusals every rank makes alike (the same model, the same arrays) printed one
    traceback per rank; now rank 0's one line, before training."""
    proc = job("keras", mode, tmp_path / "ckpt", tmp_path / "out", timeout=120)
    assert_row(proc, key)
    assert all(r["error"] for r in results(tmp_path / "out"))  # every rank stopped


@pytest.mark.slow
def test_plain_torch_optimizer_under_fit_stops_at_the_first_tripwire_check(tmp_path):
    """Issue 25 (B5): without wrap_optimizer every rank would train its own model, exit 0."""
    proc = job("torch", "plain", tmp_path / "ckpt", tmp_path / "out", "--epochs", "1", timeout=120)
    assert_row(proc, "ht.fit with a plain torch optimizer (no ht.wrap_optimizer)")
    assert [r["error_type"] for r in results(tmp_path / "out")] == ["DataParallelError"] * 2
    assert not list((tmp_path / "ckpt").glob("step-*"))  # stopped at step 1 of 4


@pytest.mark.slow
def test_save_checkpoint_on_rank_0_alone_is_named_within_seconds(tmp_path):
    """Issue 25 (B10): Horovod's ``if rank == 0: save`` idiom with hvdtrain's collective save:
    rank 0 names the cause 10 s in, before the hang timeout (24 s here: Horovod's stall shutdown
    after 12 s, at the earliest 16 s in) stops the job."""
    proc = job(
        "torch",
        "rank0save",
        tmp_path / "ckpt",
        tmp_path / "out",
        env={"HVDTRAIN_HANG_TIMEOUT": "24"},
        timeout=150,
    )
    row = docs_table.row("if rank == 0: ht.save_checkpoint(...) (Horovod's rank-0 idiom)")
    row.check(proc.stdout + proc.stderr, proc.returncode)
    output = proc.stdout + proc.stderr
    # The warning comes before the hang timeout ends the job.
    assert output.index("has waited 10 s in ht.save_checkpoint") < output.index(
        "Horovod has been shut down"
    )
    assert list((tmp_path / "ckpt").glob("step-00000001.pt"))  # the save itself went through


@pytest.mark.slow
def test_mid_epoch_resume_on_less_data_is_refused(tmp_path):
    """Issue 25 (B8): the checkpoint's position lies past the end of this job's epoch: refused at
    the resume, not 0 steps trained (Keras) or a StopIteration traceback per rank (torch)."""
    proc = job("torch", "shrunk", tmp_path / "ckpt", tmp_path / "out", timeout=120)
    assert_row(
        proc, "resume from a mid-epoch checkpoint with less training data than it was taken on"
    )
    assert [r["error_type"] for r in results(tmp_path / "out")] == ["ResumeError"] * 2
    assert [p.name for p in sorted((tmp_path / "ckpt").glob("step-*"))] == [
        "step-00000002.json",
        "step-00000002.pt",
    ]  # nothing trained, nothing saved


@pytest.mark.slow
def test_mid_epoch_resume_with_another_batch_size_says_what_is_trained_again(tmp_path):
    """Issue 25: the position rounds down to a whole batch, so some samples are trained twice;
    it did so in silence."""
    proc = job("torch", "rebatched", tmp_path / "ckpt", tmp_path / "out", timeout=120)
    line = assert_row(
        proc, "resume from a mid-epoch checkpoint with another --batch-size (or number of workers)"
    )
    assert line.endswith(
        "48 samples into epoch 1, not a whole number of this job's global "
        "batches of 20 (batch size x workers): 8 samples of it are trained again"
    )
    assert [r["error"] for r in results(tmp_path / "out")] == [None] * 2  # and it trains on


# --- NaN loss ------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("framework", ["keras", "torch"])
def test_nan_loss_stops_every_rank_at_the_same_step(tmp_path, framework):
    """A clean epoch (a checkpoint), then one NaN sample on one rank: the averaged loss is NaN,
    every rank stops at the same step with the same error, and no checkpoint holds the diverged
    weights."""
    proc = job(framework, "nan", tmp_path / "ckpt", tmp_path, "--epochs", "2")
    line = assert_row(proc, "NaN or infinite loss (lr too high, a NaN in the data)").removeprefix(
        ERROR
    )
    ranks = results(tmp_path)
    assert [r["error"] for r in ranks] == [line] * 2  # both ranks, same step
    assert snapshot(tmp_path / "ckpt") == ranks[0]["before"] and len(ranks[0]["before"]) == 2
