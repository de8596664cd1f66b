"""Issue 8: a failed, frozen or diverged worker ends the job fast, with one line that explains it.

Real jobs under ``hvdtrain run`` (2 workers, Gloo on localhost). Each test prints the measured
time from the fault to the launcher's exit (``pytest -s`` shows them).
"""

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from mlflow.tracking import MlflowClient

from hvdtrain.core import failures, tuning
from hvdtrain.core.checkpoint import CheckpointDir, read_meta
from hvdtrain.launch import parsers
from hvdtrain.tracking import legs
from tests import docs_table
from tests.launch import REPO, WORKERS, own_lines, worker_process
from tests.mlflow_server import free_port

HVDTRAIN = str(Path(sys.executable).parent / "hvdtrain")
HANG_TIMEOUT = (
    12  # small, so the hang tests stay short; the checks below allow for a loaded machine
)


def _start(*args, cwd: Path, env: dict | None = None, **popen: object) -> subprocess.Popen:
    full_env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("MLFLOW_", "HVDTRAIN_", "HOROVOD_"))
    }
    full_env.update(
        {
            "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
            "OMP_NUM_THREADS": "1",
            "TF_CPP_MIN_LOG_LEVEL": "3",
            **(env or {}),
        }
    )
    return subprocess.Popen(
        [HVDTRAIN, "run", "-np", "2", *args],
        cwd=cwd,
        env=full_env,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        **popen,
    )


def _wait_for_checkpoint(proc: subprocess.Popen, directory: Path, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while not CheckpointDir(directory, "").checkpoints():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, f"no checkpoint in {directory} within {timeout} s"
        time.sleep(0.2)


def _finish(proc: subprocess.Popen, since: float, timeout: float) -> tuple[str, str, float]:
    """The job's output and its time since ``since``; a job still running after ``timeout`` is a
    failure, and is killed with all its processes."""
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        for p in [*psutil.Process(proc.pid).children(recursive=True), proc]:
            p.kill()
        out, err = proc.communicate()
        raise AssertionError(f"the job still ran {timeout} s later:\n{err[-3000:]}") from None
    return out, err, time.monotonic() - since


def _messages(err: str) -> list[str]:
    """stderr without progress bars, blank lines and library start-up chatter."""
    noise = ("it/s]", "s/it]", "%|", "absl::InitializeLog", "oneDNN", "mlflow.store.db.utils")
    return [
        line
        for line in err.splitlines()
        if line.split(">:", 1)[-1].strip() and not any(n in line for n in noise)
    ]


FRAMEWORKS = {
    # Keras saves at each epoch's end only (no --checkpoint-every yet): tiny epochs instead.
    "torch": (
        "torch_examples/digits.py",
        ["--checkpoint-every", "5"],
        "import torch, sys; print(sorted(torch.load(sys.argv[1], weights_only=True)))",
    ),
    "keras": (
        "tf_examples/digits.py",
        [],
        "import keras, sys; print(keras.saving.load_model(sys.argv[1]).count_params())",
    ),
}


@pytest.mark.timing
@pytest.mark.slow
@pytest.mark.parametrize("framework", sorted(FRAMEWORKS))
def test_sigkill_of_one_worker_stops_the_job_with_one_line(tmp_path, framework):
    example, extra, load = FRAMEWORKS[framework]
    proc = _start(
        str(REPO / example),
        "--epochs",
        "200",
        "--batch-size",
        "8",
        "--train-samples",
        "400",
        "--checkpoint-dir",
        "ckpt",
        "--log-every",
        "1",
        *extra,
        cwd=tmp_path,
    )
    _wait_for_checkpoint(proc, tmp_path / "ckpt")
    time.sleep(1)  # mid-epoch, past the checkpoint
    worker_process(proc, 1).send_signal(signal.SIGKILL)
    killed = time.monotonic()
    out, err, took = _finish(proc, killed, timeout=60)
    print(f"\n{framework}: SIGKILL of worker 1 -> launcher exit in {took:.1f} s")
    assert took < 10, (took, err[-3000:])
    last = docs_table.row("a worker is killed").check(err, proc.returncode)
    assert last == err.strip().splitlines()[-1]
    match = re.fullmatch(r".*; last checkpoint: (ckpt/step-\d+\.\w+)", last)
    assert "Traceback" not in err + out  # rank 0 reports its peer's failure in one line, if at all
    # The named checkpoint is the newest, and it loads.
    payload = tmp_path / match.group(1)
    assert (
        read_meta(payload)[1].step
        == CheckpointDir(tmp_path / "ckpt", payload.suffix).checkpoints()[-1][0]
    )
    loaded = subprocess.run(
        [sys.executable, "-c", load, str(payload)],
        capture_output=True,
        text=True,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
    )
    assert loaded.returncode == 0 and loaded.stdout.strip(), loaded.stderr[-2000:]
    # The run is FAILED with the reason, and what rank 0 logged before the kill is there.
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    [run] = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert run.info.status == "FAILED"
    assert run.data.tags["hvdtrain.failure"] == last[len("hvdtrain: ") :]
    losses = client.get_metric_history(run.info.run_id, "loss")
    checkpointed = read_meta(payload)[1].step  # logged (every step) at least 1 s before the kill
    assert set(range(1, checkpointed + 1)) <= {m.step for m in losses}, sorted(
        m.step for m in losses
    )
    assert all(m.value > 0 for m in losses)


@pytest.mark.slow
def test_ctrl_c_on_the_launcher_ends_the_job_like_sigterm(tmp_path):
    """Issue 25: Ctrl-C in the terminal (SIGINT to the launcher and horovodrun, one process group)
    exited 130 with no line and left the run FAILED without a reason."""
    script = tmp_path / "train.py"
    script.write_text(
        "import time\n"
        "import hvdtrain.torch as ht\n"
        "from hvdtrain import tracking\n"
        "ht.init()\n"
        "with tracking.tracked(experiment='interrupted'):\n"
        "    print('training', flush=True)\n"
        "    time.sleep(120)\n"
    )
    # Its own process group, as a terminal's foreground job: the launcher and horovodrun.
    proc = _start(str(script), cwd=tmp_path, process_group=0)
    while "training" not in proc.stdout.readline():
        assert proc.poll() is None, proc.communicate()
    time.sleep(1)  # both ranks in the block
    os.killpg(proc.pid, signal.SIGINT)
    out, err, took = _finish(proc, time.monotonic(), timeout=30)
    last = docs_table.row("Ctrl-C on hvdtrain run").check(err, proc.returncode)
    assert last == err.strip().splitlines()[-1]
    assert "Traceback" not in err + out
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    [run] = client.search_runs([client.get_experiment_by_name("interrupted").experiment_id])
    assert run.info.status == "FAILED"
    assert run.data.tags["hvdtrain.failure"] == last[len("hvdtrain: ") :]


@pytest.mark.timing
@pytest.mark.slow
def test_a_frozen_worker_ends_the_job_within_the_hang_timeout(tmp_path):
    proc = _start(
        "--hang-timeout",
        str(HANG_TIMEOUT),
        str(REPO / "torch_examples/digits.py"),
        "--epochs",
        "500",
        "--batch-size",
        "8",
        "--train-samples",
        "400",
        "--checkpoint-dir",
        "ckpt",
        "--checkpoint-every",
        "5",
        "--no-tracking",
        cwd=tmp_path,
    )
    _wait_for_checkpoint(proc, tmp_path / "ckpt")
    frozen = worker_process(proc, 1)
    frozen.send_signal(signal.SIGSTOP)
    stopped = time.monotonic()
    try:
        out, err, took = _finish(proc, stopped, timeout=HANG_TIMEOUT + 60)
    finally:
        if frozen.is_running():
            frozen.kill()
    print(f"\nSIGSTOP of worker 1 (hang timeout {HANG_TIMEOUT} s) -> launcher exit in {took:.1f} s")
    assert took < HANG_TIMEOUT + 12, (took, err[-3000:])
    # the table's row is this test's HANG_TIMEOUT
    row = docs_table.row("a worker freezes (--hang-timeout 12)")
    assert row.check(err, proc.returncode) == err.strip().splitlines()[-1]
    messages = _messages(err)
    assert "Traceback" not in err and len(messages) <= 2, messages  # rank 0's line and the summary
    assert not (tmp_path / "mlflow.db").exists()  # --no-tracking: no local store was prepared


@pytest.mark.timing
@pytest.mark.slow
def test_diverged_ranks_end_the_job_with_a_stall_diagnosis(tmp_path):
    proc = _start(
        "--hang-timeout",
        str(HANG_TIMEOUT),
        str(WORKERS / "failure_diverge.py"),
        "--steps-on-rank1",
        "5",
        cwd=tmp_path,
    )
    worker_process(proc, 1)
    started = time.monotonic()
    out, err, took = _finish(proc, started, timeout=HANG_TIMEOUT + 120)
    print(
        f"\ndiverged ranks (hang timeout {HANG_TIMEOUT} s) -> launcher exit {took:.1f} s after the "
        "workers started"
    )
    assert proc.returncode != 0, err[-3000:]
    assert re.fullmatch(
        r"hvdtrain: ranks \[1\] did not join collective 'allreduce\.fc1\.weight' for 6 s "
        r"\(ranks diverged: different step counts, or a collective only some ranks call\?\); "
        r"job stopped after [\d.]+ s",
        err.strip().splitlines()[-1],
    ), err[-3000:]
    # Bounded: start-up (imports, rendezvous) plus the hang timeout, with room for a loaded machine.
    assert took < HANG_TIMEOUT + 45, took
    messages = _messages(err)
    assert "Traceback" not in err and len(messages) <= 4, messages


@pytest.mark.parametrize("leaves", ["raise", "exit"])
def test_the_last_line_names_the_rank_that_left_not_the_one_it_stopped(tmp_path, leaves):
    """Issue 25's twenty tries #16 and #17: rank 0's exit ("another worker failed") can reach
    the launcher before rank 1's; the line names rank 1 all the same, and a clean early exit."""
    row = docs_table.row(
        "rank 1 raises while rank 0 is in a collective"
        if leaves == "raise"
        else "rank 1 leaves with sys.exit(0) while rank 0 still trains"
    )
    proc = _start(str(WORKERS / "failure_rank1.py"), leaves, cwd=tmp_path)
    out, err, _ = _finish(proc, time.monotonic(), timeout=120)
    last = row.check(err, proc.returncode)
    assert last == err.strip().splitlines()[-1]
    if leaves == "raise":
        assert re.fullmatch(
            r"hvdtrain: worker 1 on localhost (exited with status 1|failed with the error above"
            r"( \(then stopped by SIG(TERM|KILL) while it exited\))?); job stopped after [\d.]+ s",
            last,
        )
    assert ("ValueError: a bug on rank 1" in err) == (leaves == "raise")


@pytest.fixture
def discovery(tmp_path):
    """A discovery script printing ``text``, with the given file mode."""

    def make(text: str = "localhost:2", mode: int = 0o755, body: str | None = None) -> Path:
        script = tmp_path / "discover.sh"
        script.write_text(body or f"#!/bin/sh\necho '{text}'\n")
        script.chmod(mode)
        return script

    return make


DISCOVERY_SCRIPTS = {  # the table row's bad input -> discover.sh as that row has it
    "discovery script not executable": {"mode": 0o644},
    "discovery script prints localhost:two": {"text": "localhost:two"},
    "discovery script prints nothing": {"text": ""},
    "discovery script fails": {"body": "#!/bin/sh\necho 'no hosts file' >&2\nexit 3\n"},
    "discovery script hangs": {"body": "#!/bin/sh\nsleep 30\n"},
}


@pytest.mark.parametrize("key", sorted(DISCOVERY_SCRIPTS))
def test_bad_discovery_script_is_one_line_and_exit_2(tmp_path, discovery, key):
    row = docs_table.row(key)
    assert "test_failures.py::test_bad_discovery_script_is_one_line_and_exit_2" in row.tests
    (tmp_path / "train.py").write_text(f"open({str(tmp_path / 'started')!r}, 'w')\n")
    discovery(**DISCOVERY_SCRIPTS[key])
    started = time.monotonic()
    proc = subprocess.run(
        [
            HVDTRAIN,
            "run",
            "--elastic",
            "--min-np",
            "1",
            "--host-discovery-script",
            "discover.sh",
            "train.py",
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=60,
    )
    assert row.check(proc.stderr, proc.returncode) == proc.stderr.strip()
    assert not (tmp_path / "started").exists() and time.monotonic() - started < 20


def test_bad_hang_timeout_in_a_worker_is_one_line(tmp_path):
    row = docs_table.row("HVDTRAIN_HANG_TIMEOUT=x in a worker started without hvdtrain run")
    proc = subprocess.run(
        [sys.executable, "-c", "import hvdtrain.torch as ht\nht.init()"],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, tuning.HANG_TIMEOUT_ENV: "x"},
    )
    assert row.check(proc.stderr, proc.returncode) == proc.stderr.strip()


def test_elastic_command_line(tmp_path, discovery):
    from hvdtrain.cli import build_parser, run
    from hvdtrain.launch.job import build_command
    from hvdtrain.launch.request import check

    script = discovery("localhost:2")
    worker = tmp_path / "w.py"
    worker.write_text("")
    args = build_parser().parse_args(
        [
            "run",
            "--elastic",
            "--min-np",
            "1",
            "--max-np",
            "2",
            "--host-discovery-script",
            str(script),
            "--blacklist-cooldown-range",
            "2",
            "10",
            str(worker),
            "--x",
        ]
    )
    command = build_command(check(run.request(args)))
    assert command[3:] == [
        "-np",
        "2",
        "--min-np",
        "1",
        "--host-discovery-script",
        str(script),
        "--max-np",
        "2",
        "--blacklist-cooldown-range",
        "2",
        "10",
        "--network-interface",
        "lo",
        "--gloo",
        "-p",
        "22",
        sys.executable,
        str(worker),
        "--x",
    ]


# Horovod's own texts, as relayed by horovodrun (copied from real runs, trailing space included),
# read without a job.
STALL_WARNING = """\
[2026-11-22 14:20:06.629552: E /tmp/horovod-0.28.1/horovod/common/stall_inspector.cc:107] One or \
more tensors were submitted to be reduced, gathered or broadcasted by subset of ranks and are \
waiting for remainder of ranks for more than 3 seconds. This may indicate that different ranks are \
trying to submit different tensors or that only subset of ranks is submitting tensors, which will \
cause deadlock. 
Missing ranks:
1!: [allreduce.fc1.weight, allreduce.fc1.bias]
One or more rank (marked by "!") is stalled for longer than 3 seconds. \
Will shutdown."""  # noqa: W291


def test_stall_report_is_parsed_from_horovods_warning():
    parser = parsers.StallParser()
    hidden = [parser.feed(line) for line in STALL_WARNING.splitlines()]
    assert all(hidden) and not parser.feed("an ordinary line")
    [report] = parser.take_finished(idle_s=0)
    assert report.shutdown and report.missing == {1: ["allreduce.fc1.weight", "allreduce.fc1.bias"]}
    assert (
        report.summary()
        == "ranks [1] did not join collective 'allreduce.fc1.bias' and 1 more for 3 s"
    )


def test_exit_statuses_and_hang_settings():
    assert parsers.describe_status(137) == "was killed by SIGKILL"
    assert parsers.describe_status(3) == "exited with status 3"
    assert parsers.process_exits("Process 1 exit with status code 137.\n") == ([(1, 137)], "\n")
    # two failing at once, their notices on one line (one print per thread)
    assert parsers.process_exits(
        "Process 0 exit with status code 1.Process 1 exit with status code 1.\n"
    ) == ([(0, 1), (1, 1)], "\n")
    assert parsers.process_exits("epoch 1\n") == ([], "epoch 1\n")
    assert parsers.split_worker_line("[1]<stderr>:hello") == (1, "stderr", "hello")
    gloo = "[unbound_buffer.cc:81] Timed out waiting 12000ms for recv operation to complete"
    # the rank's own line
    assert (
        parsers.gloo_timeout_seconds(
            f"hvdtrain: rank 0 stopped: another worker failed (HorovodInternalError: {gloo})"
        )
        == 12.0
    )
    assert (
        parsers.gloo_timeout_seconds(f"Horovod background loop uncaught exception: {gloo}") == 12.0
    )
    assert parsers.gloo_timeout_seconds(f"my script's log: {gloo}") is None
    assert tuning.hang_settings(300) == {
        "HOROVOD_GLOO_TIMEOUT_SECONDS": "300",
        "HOROVOD_STALL_CHECK_TIME_SECONDS": "50",
        "HOROVOD_STALL_SHUTDOWN_TIME_SECONDS": "150",
    }
    # the user's own value wins
    environ = {tuning.HANG_TIMEOUT_ENV: "40", "HOROVOD_GLOO_TIMEOUT_SECONDS": "99"}
    tuning.apply_horovod_defaults(environ)
    assert (
        environ["HOROVOD_GLOO_TIMEOUT_SECONDS"] == "99"
        and environ["HOROVOD_STALL_CHECK_TIME_SECONDS"] == "6"
    )
    with pytest.raises(
        ValueError, match="HVDTRAIN_HANG_TIMEOUT must be a whole number of seconds >= 8, got 'x'"
    ):
        tuning.apply_horovod_defaults({tuning.HANG_TIMEOUT_ENV: "x"})


def test_peer_failures_are_told_apart_from_user_errors():
    from horovod.common.exceptions import HorovodInternalError

    try:
        try:
            raise RuntimeError(
                "Horovod has been shut down. This was caused by an exception on one of the ranks"
            )
        except RuntimeError as err:
            raise HorovodInternalError(err)  # noqa: B904 (as Horovod raises it: no ``from``)
    except HorovodInternalError as err:
        assert failures.is_peer_failure(err)
    assert not failures.is_peer_failure(ValueError("bad shape"))


def test_sigterm_during_interpreter_exit_prints_nothing():
    """horovodrun's SIGTERM can land in an exit handler (a weakref finalizer here): no traceback."""
    code = (
        "import os, signal, time, weakref\nfrom hvdtrain.core import failures\nfailures.install()\n"
        "class Held: pass\nheld = Held()\n"
        "weakref.finalize(held, lambda: (os.kill(os.getpid(), signal.SIGTERM), time.sleep(0.1)))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.stderr == ""


# An object freed while Python tears down modules at exit, after ``failures``' own globals are None.
LATE_FINALIZER = (
    "import os, signal\nfrom hvdtrain.core import failures\nfailures.install()\n"
    "class Late:\n    def __del__(self):\n        raise RuntimeError('late')\n"
    "failures._late = Late()\n"
)


@pytest.mark.parametrize(
    "stop,status,want",
    [
        (
            "",
            0,
            [
                r"Exception ignored in: <function Late.__del__ at 0x[0-9a-f]+>",
                r"Traceback \(most recent call last\):",
                r'  File "<string>", line 6, in __del__',
                r"RuntimeError: late",
            ],
        ),
        ("os.kill(os.getpid(), signal.SIGTERM)", 143, []),
        (
            "raise RuntimeError('Horovod has been shut down. A rank died')",
            1,
            [
                r"hvdtrain: rank \? stopped: another worker failed or the job was shut down "
                r"\(RuntimeError: Horovod has been shut down\)"
            ],
        ),
    ],
    ids=["finished", "sigterm", "peer-failed"],
)
def test_finalizer_errors_at_exit_are_dropped_only_once_the_worker_was_stopped(stop, status, want):
    """A finished script keeps Python's report of a finalizer's error (a bug of its own); a worker
    told to stop, or that said why it stopped, ends on its one line. Before, the hook itself failed
    at exit, once per finalizer, with pages of "Exception ignored in sys.unraisablehook"."""
    proc = subprocess.run(
        [sys.executable, "-c", LATE_FINALIZER + stop], capture_output=True, text=True, timeout=60
    )
    lines = own_lines(proc.stderr)
    assert proc.returncode == status and len(lines) == len(want), proc.stderr
    assert all(re.fullmatch(w, line) for w, line in zip(want, lines)), proc.stderr


def test_dead_tracking_server_when_a_job_fails_is_one_warning(tmp_path):
    """The launcher marks the failed job's run FAILED; a dead server costs one warning, bounded."""
    run_file = tmp_path / "run.json"
    run_file.write_text(
        json.dumps({"run_id": "0123abcd", "tracking_uri": f"http://127.0.0.1:{free_port()}"})
    )
    code = (
        "import sys, time\nfrom pathlib import Path\n"
        "from hvdtrain.tracking.legs import mark_failed\nsince = time.monotonic()\n"
        "mark_failed(Path(sys.argv[1]), 'worker 1 was killed by SIGKILL')\n"
        "print(time.monotonic() - since)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, str(run_file)], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    [line] = proc.stderr.strip().splitlines()
    assert line.startswith("hvdtrain: warning: MLflow run 0123abcd not marked FAILED (")
    assert float(proc.stdout) < legs.MLFLOW_BOUND_S + 5
