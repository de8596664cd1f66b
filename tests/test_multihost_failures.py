"""Issue 12: failures across hosts end the job in bounded time with one line naming host and rank,
and leave no process of the job on any host.

Real jobs on test hosts: ``hvdtrain run`` started on the first host (rank 0 there, rank 1 on the
second), torch digits training with tiny epochs. Each test prints the measured time from the
fault to the launcher's exit (``pytest -s`` shows them).
"""

import re
import time

import pytest

from tests.launch import REPO
from tests.multihost import finish, launch, wait_clean, worker

pytestmark = [pytest.mark.multihost, pytest.mark.slow, pytest.mark.timing]

HANG_TIMEOUT = 12  # small, so the hang tests stay short (a rank may lag the others by half of it)
TRAINING = [
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
]


def start(hosts, tmp_path, *launcher_args):
    h1, h2 = hosts.names
    proc = launch(
        hosts, h1, "-np", "2", "-H", f"{h1}:1,{h2}:1", *launcher_args, *TRAINING, cwd=tmp_path
    )
    pid = worker(hosts, h2, 1, proc)
    deadline = time.monotonic() + 180
    while not list((tmp_path / "ckpt").glob("step-*.pt")):  # training is under way
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.2)
    return proc, pid


def stopped(proc, since: float, timeout: float, fault: str) -> tuple[str, float]:
    """The job's stderr and its time from the fault to its exit (printed with its last line)."""
    out, err, took = finish(proc, since, timeout)
    print(f"\n{fault} -> launcher exit in {took:.1f} s; {last_line(err)}")
    assert "Traceback" not in err + out
    return err, took


def last_line(err: str) -> str:
    return err.strip().splitlines()[-1]


@pytest.mark.parametrize("mpi", [False, True], ids=["gloo", "mpi"])
def test_remote_sigkill_names_the_signal_host_and_rank(test_hosts, tmp_path, mpi):
    hosts = test_hosts(2)
    h1, h2 = hosts.names
    proc, pid = start(hosts, tmp_path, *(["--mpi"] if mpi else []))
    hosts.run(h2, ["kill", "-KILL", str(pid)])
    err, took = stopped(
        proc, time.monotonic(), 60, f"{'mpi' if mpi else 'gloo'}: SIGKILL of worker 1 on {h2}"
    )
    print(f"hosts clean {wait_clean(hosts, hosts.names, timeout=15):.1f} s after")
    assert proc.returncode == 137 and took < 10, (took, err[-3000:])
    assert re.fullmatch(
        rf"hvdtrain: worker 1 on {h2} was killed by SIGKILL; job stopped after [\d.]+ s; "
        rf"last checkpoint: ckpt/step-\d+\.pt",
        last_line(err),
    ), err[-3000:]


@pytest.mark.parametrize("mpi", [False, True], ids=["gloo", "mpi"])
def test_remote_sigstop_ends_the_job_within_the_hang_timeout(test_hosts, tmp_path, mpi):
    """Gloo: the peer's Gloo timeout ends it. MPI has no timeout (the peers would wait for ever in
    MPI): the launcher ends a job whose worker stayed frozen for the hang timeout."""
    hosts = test_hosts(2)
    h1, h2 = hosts.names
    proc, pid = start(
        hosts, tmp_path, "--hang-timeout", str(HANG_TIMEOUT), *(["--mpi"] if mpi else [])
    )
    hosts.run(h2, ["kill", "-STOP", str(pid)])
    err, took = stopped(
        proc,
        time.monotonic(),
        HANG_TIMEOUT + 60,
        f"{'mpi' if mpi else 'gloo'}: SIGSTOP of worker 1 on {h2} (hang timeout {HANG_TIMEOUT} s)",
    )
    # the frozen worker too
    print(f"hosts clean {wait_clean(hosts, hosts.names, timeout=15):.1f} s after")
    assert proc.returncode != 0 and took < HANG_TIMEOUT + 12, (took, err[-3000:])
    gave_up = "" if mpi else f"; worker 0 gave up after {HANG_TIMEOUT} s"
    assert re.fullmatch(
        rf"hvdtrain: worker 1 on {h2} stopped responding \(process frozen, e\.g\. SIGSTOP\)"
        rf"{gave_up}; job stopped after [\d.]+ s; last checkpoint: ckpt/step-\d+\.pt",
        last_line(err),
    ), err[-3000:]


@pytest.mark.parametrize("mpi", [False, True], ids=["gloo", "mpi"])
def test_a_host_whose_link_goes_down_is_named_unreachable(test_hosts, tmp_path, mpi):
    """Gloo: the peer's Gloo timeout ends it; MPI: mpirun's ssh keepalives to the host's daemon."""
    hosts = test_hosts(2)
    h1, h2 = hosts.names
    proc, _ = start(
        hosts, tmp_path, "--hang-timeout", str(HANG_TIMEOUT), *(["--mpi"] if mpi else [])
    )
    hosts.cut(h2)
    err, took = stopped(
        proc,
        time.monotonic(),
        HANG_TIMEOUT + 60,
        f"{'mpi' if mpi else 'gloo'}: link of {h2} cut (hang timeout {HANG_TIMEOUT} s)",
    )
    assert proc.returncode != 0 and took < HANG_TIMEOUT + 15, (took, err[-3000:])
    gave_up = "" if mpi else f"; worker 0 gave up after {HANG_TIMEOUT} s"
    assert re.fullmatch(
        rf"hvdtrain: host {h2} \(worker 1\) is unreachable \(no answer on SSH port 22 within 3 s: "
        rf"its link or the host went down\){gave_up}; job stopped after [\d.]+ s; "
        rf"last checkpoint: ckpt/step-\d+\.pt",
        last_line(err),
    ), err[-3000:]
    wait_clean(hosts, [h1], timeout=5)
    # The cut-off worker gives up by itself (Gloo: its own timeout; MPI: its daemon lost mpirun)
    # and once the link is back its ssh session learns the launcher is gone and ends too.
    hosts.restore(h2)
    print(
        f"{h2} clean {wait_clean(hosts, [h2], timeout=HANG_TIMEOUT + 15):.1f} s after its link "
        "came back"
    )
