"""Issue 17: ``hvdtrain run``'s console as a user sees it.

Each example runs once in a terminal (tmux, 160 columns; the screen read back with
``capture-pane`` while the job runs and after it ended) and once with its output piped to a file:
rank 0's lines as the script wrote them (no ``[0]<stdout>:`` prefixes, no remains of an
overwritten progress bar, no TensorFlow start-up lines), its bar redrawn in place on the terminal
and one line per redraw in the file, then the summary block, whose values are read back from the
job's results file and from MLflow.
"""

from __future__ import annotations

import io
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hvdtrain.launch import summary
from hvdtrain.launch.console import Console
from hvdtrain.tracking import legs
from tests.conftest import require
from tests.mlflow_server import mlflow_server, mlflow_server_session  # noqa: F401 - fixtures

REPO = Path(__file__).resolve().parent.parent
HVDTRAIN = str(Path(sys.executable).parent / "hvdtrain")
COLUMNS, ROWS = 160, 50
EPOCHS, TRAIN_SAMPLES, BATCH = 2, 384, 16  # 12 steps an epoch on 2 workers
SCRIPTS = {"torch": "torch_examples/digits.py", "keras": "tf_examples/digits.py"}
JOB_TIMEOUT_S = 300

NUMBER = r"\d+\.\d{4}"
# tqdm's bar (torch; on stderr, erased at each epoch's end) and Keras's (stdout, kept, one per
# epoch).
TORCH_BAR = re.compile(rf"epoch [12]/{EPOCHS}: +\d+%\|.*\| \d+/12 \[[^\]]*\]")
KERAS_BAR = re.compile(r" ?\d+/12 ━+ \S+ \S+/step( - \w+: \d+\.\d{4})*")


def job_env(**extra: str) -> dict[str, str]:
    """The user's environment: TF_CPP_MIN_LOG_LEVEL unset
    (the launcher quiets TensorFlow itself)."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("MLFLOW_", "HVDTRAIN_", "HOROVOD_")) and k != "TF_CPP_MIN_LOG_LEVEL"
    }
    return {**env, "OMP_NUM_THREADS": "1", **extra}


def command(framework: str, results: Path, *extra: str) -> list[str]:
    return [
        HVDTRAIN,
        "run",
        "-np",
        "2",
        str(REPO / SCRIPTS[framework]),
        "--epochs",
        str(EPOCHS),
        "--train-samples",
        str(TRAIN_SAMPLES),
        "--batch-size",
        str(BATCH),
        "--results",
        str(results),
        *extra,
    ]


def in_tmux(argv: list[str], cwd: Path, env: dict[str, str]) -> tuple[int, list[list[str]]]:
    """Run ``argv`` in a fresh tmux server's 160-column terminal; its exit status and the screens
    read while it ran, the last one after it ended."""
    status = cwd / "status"
    shell = f"{shlex.join(argv)}; echo $? > {shlex.quote(str(status))}; sleep {JOB_TIMEOUT_S}"
    for attempt in range(2):
        server = ["tmux", "-L", f"hvdtrain-console-{os.getpid()}-{attempt}", "-f", "/dev/null"]
        started = subprocess.run(
            [*server, "new-session", "-d", "-x", str(COLUMNS), "-y", str(ROWS), "-c", str(cwd)]
            + [shell],
            env=env,
            capture_output=True,
            text=True,
        )
        # Seen once in a CI run's parallel phase: tmux's own server died while starting, before
        # the job ran; a second server, once. Any other failure stops the test.
        if started.returncode == 0 or "server exited unexpectedly" not in started.stderr:
            break
    assert started.returncode == 0, started.stderr
    screens, deadline = [], time.monotonic() + JOB_TIMEOUT_S
    try:
        while True:
            ended = status.exists()
            screen = subprocess.run(
                [*server, "capture-pane", "-p"], capture_output=True, text=True, check=True
            )
            screens.append([line.rstrip() for line in screen.stdout.splitlines() if line.strip()])
            if ended:
                return int(status.read_text()), screens
            assert time.monotonic() < deadline, "\n".join(screens[-1])
            time.sleep(0.2)
    finally:
        subprocess.run([*server, "kill-server"], capture_output=True)


@pytest.fixture(scope="module")
def tmux():
    require(
        None
        if shutil.which("tmux")
        else "tmux is not installed (scripts/system-packages.sh test installs it)"
    )


@pytest.fixture(scope="module", params=sorted(SCRIPTS))
def on_screen(request, tmux, tmp_path_factory):
    """A job in the terminal: (framework, exit status, screens, results)."""
    framework, tmp = request.param, tmp_path_factory.mktemp(f"screen-{request.param}")
    results = tmp / "results.json"
    status, screens = in_tmux(command(framework, results, "--no-tracking"), tmp, job_env())
    return framework, status, screens, json.loads(results.read_text()) if results.exists() else None


def final_lines(
    framework: str, results: dict, keras_bars: bool, tracking: tuple[str, str] | None = None
) -> list:
    """What a finished job leaves, a pattern a line:
    the epochs, the script's last line, the summary."""
    val = re.escape(f"{results['val_accuracy']:.4f}")
    if framework == "torch":
        epochs = [
            re.compile(
                rf"epoch {e}/{EPOCHS}: loss={NUMBER}, "
                rf"val_accuracy={val if e == EPOCHS else NUMBER}, val_loss={NUMBER}"
            )
            for e in range(1, EPOCHS + 1)
        ]
    else:
        epochs = []
        for e in range(1, EPOCHS + 1):
            epochs.append(re.compile(f"Epoch {e}/{EPOCHS}"))
            # rank 0's own validation metrics (the summary's are averaged over the ranks)
            if keras_bars:
                epochs.append(
                    re.compile(
                        rf"12/12 ━{{20}} \S+ \S+/step - accuracy: {NUMBER} - loss: {NUMBER} - "
                        rf"val_accuracy: {NUMBER} - val_loss: {NUMBER}"
                    )
                )
    exact = [
        f"test accuracy: {results['test_accuracy']:.4f} on 360 images (2 workers, "
        f"{results['wall_time_s']:.1f} s)"
    ]
    head = re.compile(
        r"hvdtrain: job finished: 2 workers on 1 host \(localhost\), wall time \d+\.\d s"
    )
    rows = [
        ("samples/s", f"{results['samples_per_sec']:.1f}"),
        ("test_accuracy", f"{results['test_accuracy']:.4f}"),
        ("val_accuracy", f"{results['val_accuracy']:.4f}"),
        *([tracking] if tracking else []),
    ]
    width = max(len(name) for name, _ in rows) + 1
    exact += [f"  {name + ':':<{width}} {value}" for name, value in rows]
    return [
        *epochs,
        re.compile(re.escape(exact[0])),
        head,
        *(re.compile(re.escape(line)) for line in exact[1:]),
    ]


def assert_lines(lines: list[str], patterns: list) -> None:
    assert len(lines) == len(patterns) and all(
        p.fullmatch(line) for p, line in zip(patterns, lines)
    ), "\n".join(lines) + "\n--- expected ---\n" + "\n".join(p.pattern for p in patterns)


@pytest.mark.slow
def test_the_terminal_shows_rank_0_as_written_and_the_summary(on_screen):
    framework, status, screens, results = on_screen
    assert status == 0 and results is not None, "\n".join(screens[-1])
    patterns = final_lines(framework, results, keras_bars=True)
    assert_lines(screens[-1], patterns)
    # While it ran: never a prefix or the remains of a bar, only lines it ends with or a bar being
    # redrawn.
    bar = TORCH_BAR if framework == "torch" else KERAS_BAR
    for screen in screens:
        for line in screen:
            assert bar.fullmatch(line) or any(p.fullmatch(line) for p in patterns), "\n".join(
                screen
            )


@pytest.mark.slow
@pytest.mark.parametrize("framework", sorted(SCRIPTS))
def test_a_file_gets_one_line_per_redraw_and_the_summary_with_the_mlflow_run(
    framework, mlflow_server, tmp_path
):
    results, log = tmp_path / "results.json", tmp_path / "job.log"
    experiment = f"console-{framework}"
    with open(log, "wb") as out:
        proc = subprocess.run(
            command(framework, results, "--experiment", experiment),
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=tmp_path,
            timeout=JOB_TIMEOUT_S,
            env=job_env(MLFLOW_TRACKING_URI=mlflow_server.uri),
        )
    text = log.read_text(encoding="utf-8")
    assert proc.returncode == 0, text[-3000:]
    assert not re.search(r"[\r\b\x1b]|<std(out|err)>", text), repr(text[-3000:])
    found = json.loads(results.read_text())
    client = mlflow_server.client()
    experiment_id = client.get_experiment_by_name(experiment).experiment_id
    [run] = client.search_runs([experiment_id])
    assert (found["run_id"], run.data.metrics["test_accuracy"]) == (
        run.info.run_id,
        found["test_accuracy"],
    )
    page = f"{mlflow_server.uri}/#/experiments/{experiment_id}/runs/{run.info.run_id}"
    bar = TORCH_BAR if framework == "torch" else KERAS_BAR
    lines = text.splitlines()
    bars = [line for line in lines if bar.fullmatch(line)]
    assert len(bars) >= EPOCHS, text  # at least each epoch's first (tqdm) or last (Keras) redraw
    assert_lines(
        [line for line in lines if line not in bars],
        final_lines(framework, found, keras_bars=False, tracking=("MLflow run", page)),
    )


def test_summary_names_the_journal_when_the_server_was_down(tmp_path, monkeypatch):
    """The run file rank 0 leaves when MLflow was unreachable at the end, and the block's line."""
    run_file = tmp_path / "run.json"
    run_file.write_text(
        json.dumps(
            {"run_id": "abc123", "tracking_uri": "http://10.0.0.9:5000", "experiment_id": "4"}
        )
    )
    monkeypatch.setenv(legs.RUN_FILE_ENV, str(run_file))
    legs.record_journal(tmp_path / "mlflow-spill" / "run-1.jsonl")
    journal = str(tmp_path / "mlflow-spill" / "run-1.jsonl")
    assert summary.block(
        workers=4, hosts=["h1", "h2"], wall_s=61.04, results={}, run=summary.read(run_file)
    ) == [
        "hvdtrain: job finished: 4 workers on 2 hosts (h1, h2), wall time 61.0 s",
        f"  MLflow: server unreachable, data kept in {journal} (send it: hvdtrain mlflow-sync "
        f"{journal})",
    ]


def test_tensorflows_no_cuda_driver_error_is_start_up_noise_and_a_failing_driver_is_not():
    """The full ``tensorflow`` wheel (both flavours since issue 24) logs one error where Keras first
    lists the GPUs: on a host with no CUDA driver (303, libcuda missing) it is dropped like the
    other start-up lines; any other code (a driver there that fails) still reaches the user."""
    out, err = io.StringIO(), io.StringIO()
    console = Console({0: "localhost", 1: "localhost"}, quiet_startup=True, out=out, err=err)
    line = (
        "E0000 00:00:1796631898.174193   32126 cuda_platform.cc:52] failed call to cuInit: "
        "INTERNAL: CUDA error: Failed call to cuInit: UNKNOWN ERROR ({})\n"
    )
    for rank in (0, 1):
        for code in (303, 999):
            console.show(f"[{rank}]<stderr>:{line.format(code)}", "stderr")
    shown = err.getvalue()
    assert "(303)" not in shown and shown.count("UNKNOWN ERROR (999)") == 2, shown
    assert out.getvalue() == ""


def _traceback(error: str, line: int = 6, chained: bool = False) -> list[str]:
    """A worker's traceback as Python prints it (``chained``: raised while handling another)."""
    inner = [
        "Traceback (most recent call last):\n",
        '  File "/job/train.py", line 3, in <module>\n',
        "    open(path)\n",
        "FileNotFoundError: [Errno 2] No such file or directory: 'x.npy'\n",
        "\n",
        "During handling of the above exception, another exception occurred:\n",
        "\n",
    ]
    return [
        *(inner if chained else []),
        "Traceback (most recent call last):\n",
        f'  File "/job/train.py", line {line}, in <module>\n',
        "    model(batch)\n",
        "    ^^^^^^^^^^^^\n",
        f"{error}\n",
    ]


@pytest.mark.parametrize("all_ranks", [False, True], ids=["default", "all-ranks"])
def test_a_traceback_every_rank_prints_alike_is_shown_once(all_ranks):
    """Issue 25 item 5: an error all ranks raise alike (here chained, and ended by the job's end
    on rank 2) is rank 0's traceback, then one line per other rank; a rank's own traceback (another
    line) is shown whole, and so is everything with ``--all-ranks``."""
    out, err = io.StringIO(), io.StringIO()
    hosts = {0: "localhost", 1: "localhost", 2: "node2", 3: "node2"}
    console = Console(hosts, all_ranks=all_ranks, out=out, err=err)
    error = "ValueError: shapes (8, 3) and (4,) differ"
    same, own = _traceback(error, chained=True), _traceback(error, line=7)
    for rank, lines in ((1, same), (0, same), (3, own), (2, same)):
        for line in lines:
            console.show(f"[{rank}]<stderr>:{line}", "stderr")
    console.show("[1]<stderr>:hvdtrain: rank 1 goes on\n", "stderr")  # ends rank 1's traceback
    console.finish()
    lines = err.getvalue().splitlines()
    prefixed = {  # a rank other than 0's lines as shown (blank ones are not)
        rank: [
            f"[{rank}@{host}] {line}".rstrip() for line in (same, own)[rank == 3] if line.strip()
        ]
        for rank, host in hosts.items()
    }
    rank_0 = [line.rstrip("\n") for line in same]  # as written, at once
    goes_on = "[1@localhost] hvdtrain: rank 1 goes on"
    if all_ranks:
        assert lines == [*prefixed[1], *rank_0, *prefixed[3], *prefixed[2], goes_on]
    else:
        assert lines == [
            *rank_0,
            f"[1@localhost] the same traceback as rank 0 ({error})",
            goes_on,
            f"[2@node2] the same traceback as rank 0 ({error})",
            *prefixed[3],
        ]
    assert out.getvalue() == ""
