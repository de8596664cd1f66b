"""What horovodrun, mpirun, Horovod and ``worker_guard`` print about a failure, parsed into what the
launcher tells the user: a worker's exit, the stall inspector's report, a Gloo timeout, a frozen
or killed remote worker, mpirun's framed notices. ``JobMonitor`` reads a job's output with these;
``hvdtrain.spark.run`` reads Horovod's exception with ``first_exit``.
"""

from __future__ import annotations

import re
import signal
import time
from dataclasses import dataclass, field

from ..core.failures import PEER_FAILURE_MARKERS, STOPPED_BY_PEER
from . import worker_guard

# horovodrun's, mpirun's
_WORKER_LINE = re.compile(r"^\[(?:\d+,)?(\d+)\]<(stdout|stderr)>:(.*)$", re.S)
_PROCESS_EXIT = re.compile(r"Process (\d+) exit with status code (-?\d+)\.")
_TERMINATING = re.compile(r"^Terminating remaining workers after failure of Process \d+\.\s*$")
_STALL_START = re.compile(r"waiting for remainder of ranks for more than (\d+) seconds")
_STALL_RANK = re.compile(r"^(\d+)(!?): \[(.*)\]\s*$")
_STALL_SHUTDOWN = re.compile(r"is stalled for longer than (\d+) seconds\. Will shutdown")
_GLOO_TIMEOUT = re.compile(r"Timed out waiting (\d+)ms")
_FIRST_EXIT = re.compile(r"Process name: (\S+)\s+Exit code: (-?\d+)")
# How Python starts printing an uncaught exception (a worker's, or horovodrun's own)
TRACEBACK_START = "Traceback (most recent call last):"
_OWN_ERROR = re.compile(rf"^({re.escape(TRACEBACK_START)}|hvdtrain: (error|rank \d+): )")
_STOPPED_BY_PEER = re.compile(rf"^hvdtrain: rank \d+ {re.escape(STOPPED_BY_PEER)}")


def split_worker_line(line: str) -> tuple[int, str, str] | None:
    """(rank, stream, text) of a line horovodrun (``[1]<stderr>:``) or mpirun (``[1,1]<stderr>:``)
    relays from a worker, else None."""
    match = _WORKER_LINE.match(line)
    return (int(match.group(1)), match.group(2), match.group(3)) if match else None


def process_exits(line: str) -> tuple[list[tuple[int, int]], str]:
    """(rank, exit status) of each of horovodrun's "Process N exit with status code S." notices
    in ``line``, and what else the line holds. Two workers failing at once can share a line:
    horovodrun prints them from one thread each, and ``print`` writes its newline separately."""
    exits = [(int(rank), int(status)) for rank, status in _PROCESS_EXIT.findall(line)]
    return exits, _PROCESS_EXIT.sub("", line) if exits else line


def reports_own_error(text: str) -> bool:
    """True for a worker's line that starts the report of its own error: a traceback,
    a ``guards.UserError``'s line or a Keras 2 usage refused (``failures``)."""
    return bool(_OWN_ERROR.match(text))


def stopped_by_peer(text: str) -> bool:
    """True for a worker's line saying it stopped because another worker failed
    (``failures.STOPPED_BY_PEER``)."""
    return bool(_STOPPED_BY_PEER.match(text))


def is_termination_notice(line: str) -> bool:
    return bool(_TERMINATING.match(line))


def first_exit(text: str) -> str | None:
    """'worker 1 exited with status 3' from the error Horovod's launchers raise when a worker
    failed (horovodrun's last lines, ``horovod.spark.run``'s RuntimeError), else None."""
    named = _FIRST_EXIT.search(text)
    return f"worker {named.group(1)} {describe_status(int(named.group(2)))}" if named else None


# worker_guard's lines as relayed, anywhere in a line: mpirun relays output in chunks, so a
# guard's line may follow another rank's unfinished one (a progress bar).
_GUARD_NOTICE = re.compile(
    r"\[(?:\d+,)?(\d+)\]<stderr>:"
    + re.escape(worker_guard.NOTICE)
    + r"(frozen by|killed by|continued)(?: (SIG[A-Z0-9]+))?"
)
_GUARD_KINDS = {"frozen by": "frozen", "killed by": "killed", "continued": "continued"}


def guard_notices(line: str) -> list[tuple[int, str, int | None]]:
    """What ``worker_guard`` said in ``line`` about its worker: (rank, "frozen", signal),
    (rank, "continued", None) or (rank, "killed", signal) each."""
    return [
        (int(rank), _GUARD_KINDS[kind], signal.Signals[name].value if name else None)
        for rank, kind, name in _GUARD_NOTICE.findall(line)
    ]


def without_guard_notices(line: str) -> str:
    """``line`` with the guard's notices taken out (the launcher's summary says what they said)."""
    return _GUARD_NOTICE.sub("", line)


_MPI_FRAME = re.compile(r"^-{40,}\s*$")
_MPI_SIGNALED = re.compile(r"process rank (\d+) with PID \d+ on node \S+ exited on signal (\d+)")
_MPI_PROCESS = re.compile(r"Process name: \[\[\d+,\d+\],(\d+)\]")
_MPI_EXIT_CODE = re.compile(r"Exit code:\s+(-?\d+)")
# mpirun lost a host's daemon (its ssh session gave up: the host or its link is down).
_MPI_DAEMON_LOST = (
    "ORTE has lost communication with a remote daemon",
    "ORTE was unable to reliably start",
)
DAEMON_LOST = -1  # the "rank" of such a failure: no worker is named
# mpirun's notices that come with a failed rank: from the first one on, mpirun only reports the
# job's end (the one-line summary replaces all of it).
_MPI_FAILURE_TEXTS = (
    "unexpectedly disconnected",
    "Primary job",
    "mpirun noticed",
    "mpirun detected",
    "failed to TCP connect",
    "lost communication",
    "MPI_ABORT",
    *_MPI_DAEMON_LOST,
)


def is_mpi_frame(text: str) -> bool:
    """A dashed line of mpirun's, the top or bottom of one of its notices."""
    return bool(_MPI_FRAME.match(text))


class MpiNotices:
    """Reads mpirun's own lines on one stream. ``feed`` returns the lines to show now. Its notices
    come framed by dashed lines: one is held until it closes, then shown; once one is about a
    failed rank, nothing more is shown, and the rank and its status (a signal as 128+N) are added
    to ``failures`` as soon as they are read."""

    def __init__(self):
        self.failures: list[tuple[int, int]] = []
        self.failing = False
        self._notice: list[str] | None = None
        self._process: int | None = None

    def feed(self, line: str) -> list[str]:
        if signaled := _MPI_SIGNALED.search(line):
            self.failures.append((int(signaled.group(1)), 128 + int(signaled.group(2))))
        elif process := _MPI_PROCESS.search(line):
            self._process = int(process.group(1))
        elif (code := _MPI_EXIT_CODE.search(line)) and self._process is not None:
            self.failures.append((self._process, int(code.group(1))))
            self._process = None
        elif any(text in line for text in _MPI_DAEMON_LOST):
            self.failures.append((DAEMON_LOST, 255))
        self.failing = self.failing or any(t in line for t in _MPI_FAILURE_TEXTS)
        if self.failing:
            self._notice = None
            return []
        if self._notice is None:
            if not is_mpi_frame(line):
                return [line]
            self._notice = []
        self._notice.append(line)
        return self.flush() if len(self._notice) > 1 and is_mpi_frame(line) else []

    def flush(self) -> list[str]:
        """The open notice's lines (shown when mpirun ends in the middle of one)."""
        notice, self._notice = self._notice or [], None
        return notice


def describe_status(status: int) -> str:
    """'was killed by SIGKILL' / 'exited with status 3' (horovodrun reports a signal as 128+N)."""
    if 128 < status < 128 + signal.NSIG:
        try:
            return f"was killed by {signal.Signals(status - 128).name}"
        except ValueError:
            pass
    return f"exited with status {status}"


@dataclass
class StallReport:
    """Horovod's stall inspector warning: which ranks have not submitted which collectives."""

    seconds: int
    missing: dict[int, list[str]] = field(default_factory=dict)
    shutdown: bool = False

    def summary(self) -> str:
        tensors = sorted({t for names in self.missing.values() for t in names})
        more = f" and {len(tensors) - 1} more" if len(tensors) > 1 else ""
        return (
            f"ranks {sorted(self.missing)} did not join collective "
            f"'{tensors[0] if tensors else '?'}'{more} for {self.seconds} s"
        )


class StallParser:
    """Reads one rank's stderr lines and collects Horovod's multi-line stall warning.

    ``feed`` returns True for lines that belong to a warning (the caller hides them). A warning
    ends with its shutdown line, or when its lines stop coming (``take_finished``).
    """

    def __init__(self):
        self.reports: list[StallReport] = []  # every warning seen, the newest last
        self._open = False
        self._last_fed = 0.0
        self._taken = 0

    def feed(self, text: str) -> bool:
        current = self.reports[-1] if self._open else None
        if match := _STALL_START.search(text):
            self.reports.append(StallReport(int(match.group(1))))
        elif current is None:
            return False
        elif match := _STALL_RANK.match(text.strip()):
            names = [n.strip() for n in match.group(3).replace(" ...", "").split(",") if n.strip()]
            current.missing[int(match.group(1))] = names
            current.shutdown |= bool(match.group(2))
        elif match := _STALL_SHUTDOWN.search(text):
            current.shutdown = True
            current.seconds = int(match.group(1))
            self._open = False
            return True
        elif text.strip() != "Missing ranks:":
            self._open = False
            return False
        self._open = True
        self._last_fed = time.monotonic()
        return True

    def take_finished(self, idle_s: float) -> list[StallReport]:
        """Complete warnings not taken before; the open one counts once idle for ``idle_s``."""
        if self._open and time.monotonic() - self._last_fed > idle_s:
            self._open = False
        end = len(self.reports) - (1 if self._open else 0)
        taken, self._taken = self.reports[self._taken : end], max(self._taken, end)
        return taken


def gloo_timeout_seconds(text: str) -> float | None:
    """Seconds of the Gloo timeout a rank reports hitting (a peer did not answer), else None: from
    Horovod's C++ log line or the rank's own one-line report (either may be the only one seen)."""
    match = _GLOO_TIMEOUT.search(text)
    reported = PEER_FAILURE_MARKERS[1] in text or text.startswith("hvdtrain: rank ")
    return int(match.group(1)) / 1000 if match and reported else None
