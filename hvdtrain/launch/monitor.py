"""Watching a launched job: relay horovodrun's output and turn a failure into one line.

Used by ``launch.job``; the texts it reads are parsed in ``parsers``. Workers on other hosts
run under ``worker_guard``, which reports their signals and frozen states in the output, and
stops them when their ssh session ends; ``stopping`` ends a job.
"""

from __future__ import annotations

import contextlib
import io
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

from ..core.failures import PEER_FAILURE_MARKERS
from . import parsers, stopping
from .console import Console

REACH_TIMEOUT_S = 3.0  # a host that does not answer on its SSH port within this is unreachable
CAUSE_WAIT_S = 1.0  # how long the exit of a rank stopped by a peer waits for the peer's own


class JobMonitor:
    """Runs horovodrun, relays its output and turns a failure into one line.

    Workers' lines pass through, except Horovod's multi-line stall report (summarised). horovodrun's
    and mpirun's own failure notices and final traceback are replaced by the summary. When a
    worker fails (not in elastic mode), local workers get SIGTERM at once and SIGKILL after
    ``stopping.GRACE_S``, the ssh sessions of remote ones are closed (their guards stop them), and
    horovodrun is not waited on after that: left alone it often adds 5-10 s stopping its own
    shells. Under MPI, where a frozen worker blocks its peers for ever, one frozen for the hang
    timeout ends the job. SIGTERM to the launcher (a scheduler ending the job: scancel, a time
    limit, preemption) stops the job the same way, reported as cancelled; Ctrl-C (SIGINT) too,
    reported as interrupted.
    """

    def __init__(
        self,
        rank_hosts: dict[int, str],
        elastic: bool,
        checkpoint_dir: str | None,
        run_file: Path,
        hang_timeout: int,
        mpi: bool = False,
        remote_hosts: list[str] = (),
        ssh_port: int = 22,
        all_ranks: bool = False,
        quiet_startup: bool = False,
    ):
        self.rank_hosts = rank_hosts
        self.console = Console(rank_hosts, all_ranks, quiet_startup, continued_pieces=mpi)
        self.elastic = elastic
        self.checkpoint_dir = checkpoint_dir
        self.run_file = run_file
        self.mpi, self.hang_timeout = mpi, hang_timeout
        self.remote_hosts, self.ssh_port = list(remote_hosts), ssh_port
        self.failed = threading.Event()
        self.failures: list[tuple[int, int, float]] = []  # rank, status, when seen
        # Ranks that reported an error of their own (a traceback, a one-line error), ranks that
        # said they stopped because a peer failed (not the cause), and this host's ranks already
        # gone when the job began to stop or ended (those without a failure left with status 0).
        self.raised: set[int] = set()
        self.stopped_by_peer: set[int] = set()
        self.gone: set[int] | None = None
        self.stop_began: float | None = None  # failures after it are the stop's doing
        # horovodrun said it terminates the other workers; ranks it ended so (status 143)
        self.terminating = False
        self.terminated: set[int] = set()
        self.cancelled: float | None = None  # when SIGTERM (or SIGINT) came
        self.cancel_signal = signal.SIGTERM
        self.frozen: dict[int, float] = {}  # rank -> since when
        self.stalls: dict[int, parsers.StallParser] = {}
        self.gloo_timeouts: dict[int, float] = {}
        self.launcher_error: list[str] = []
        self.mpi_notices: dict[int, parsers.MpiNotices] = {}  # one per relayed stream
        self._frozen_checked = 0.0
        self._lost: Future | None = (
            None  # the remote hosts that did not answer once a worker failed
        )
        self._lock = threading.Lock()

    def run(self, command: list[str], env: dict[str, str]) -> int:
        proc = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        relays = [
            threading.Thread(target=self._relay, args=(stream, out), daemon=True)
            for stream, out in ((proc.stdout, "stdout"), (proc.stderr, "stderr"))
        ]
        for relay in relays:
            relay.start()
        # Ctrl-C (SIGINT, which the terminal sends horovodrun too) ends the job as SIGTERM does:
        # left to KeyboardInterrupt it exited 130 without a word, the run FAILED with no reason.
        previous = {
            signum: stopping.on_signal(signum, self._cancel)
            for signum in (signal.SIGTERM, signal.SIGINT)
        }
        try:
            while proc.poll() is None:
                self._warn_stalls()
                if self.cancelled is not None:
                    stopping.stop_job(proc, self.frozen)
                    break
                if self.elastic:  # a worker's death is Horovod's to handle: the job goes on
                    time.sleep(0.2)
                elif self.failed.wait(0.2) or self._cause_overdue():
                    self.gone, self.stop_began = self._local_ranks_gone(proc), time.monotonic()
                    with ThreadPoolExecutor(
                        1
                    ) as pool:  # which hosts answer, asked while the job stops
                        self._lost = pool.submit(self._unreachable)
                        stopping.stop_job(proc, self.frozen)
                    break
                elif self.mpi:
                    self._check_frozen(proc)
            returncode = proc.wait()
            if self.gone is None:  # the job ended by itself: every worker is gone
                self.gone = self._local_ranks_gone(proc)
        finally:
            for signum, handler in previous.items():
                stopping.on_signal(signum, handler)
        stopped = time.monotonic()
        for relay in relays:
            relay.join(timeout=2)
        with self._lock:
            self.console.finish()  # tracebacks held back to be compared: shown before the summary
        if self.cancelled is not None:
            return self._report_cancelled(stopped)
        if returncode == 0 and (not self.failures or self.elastic):
            return 0  # elastic: workers that died on the way were replaced
        return self._report(returncode, stopped)

    def _cancel(self, signum, frame) -> None:
        """SIGTERM: the scheduler ends the job (Slurm's scancel, time limit, preemption); SIGINT:
        the user pressed Ctrl-C."""
        if self.cancelled is None:
            self.cancelled, self.cancel_signal = time.monotonic(), signum
            self.failed.set()

    def _report_cancelled(self, stopped: float) -> int:
        what = (
            "job interrupted: SIGINT (Ctrl-C)"
            if self.cancel_signal == signal.SIGINT
            else "job cancelled: SIGTERM (scancel, time limit or preemption)"
        )
        self._announce(what, self.cancelled, stopped)
        return 128 + self.cancel_signal

    def _relay(self, stream, name: str) -> None:
        # newline="": a piece ends at each carriage return too (a progress bar's redraw).
        for line in io.TextIOWrapper(stream, encoding="utf-8", errors="replace", newline=""):
            with self._lock:
                line = self._take_guard_notices(line)
                if line is not None and self._inspect(line):
                    self.console.show(line, name)
        if notices := self.mpi_notices.get(threading.get_ident()):
            with self._lock:
                for line in notices.flush():  # a notice cut short by mpirun's exit
                    self.console.show(line, "stderr")

    def _take_guard_notices(self, line: str) -> str | None:
        """Note what remote workers' guards said in ``line``; the line without it (None if
        nothing else was in it)."""
        notices = parsers.guard_notices(line)
        for rank, kind, signum in notices:
            if kind == "frozen":
                self.frozen.setdefault(rank, time.monotonic())
            elif kind == "continued":
                self.frozen.pop(rank, None)
            else:
                self._record_failure(rank, 128 + signum)
        if not notices:
            return line
        rest = parsers.without_guard_notices(line)
        return rest if rest.strip() else None

    def _inspect(self, line: str) -> bool:
        """Note what ``line`` says about a failure; False for lines the summary replaces."""
        if worker := parsers.split_worker_line(line):
            rank, stream, text = worker
            if text.strip() in ("Terminated", "Killed") or (
                self.mpi and parsers.is_mpi_frame(text)
            ):
                # the worker's shell reporting its death (the summary says it), or mpirun's frame
                return False
            if stream == "stderr":
                return self._inspect_worker_stderr(rank, text)
            return True
        if self.mpi:
            notices = self.mpi_notices.setdefault(threading.get_ident(), parsers.MpiNotices())
            shown = notices.feed(line)
            for rank, status in notices.failures:
                self._record_failure(rank, status)
            # mpirun's framed notice: held back until it ends, dropped if about a failure
            if shown != [line]:
                for held in shown:
                    self.console.show(held, "stderr")
                return False
        exits, rest = parsers.process_exits(line)  # horovodrun prints none for status 0
        for rank, status in exits:
            self.console.finish(rank)  # its traceback, if one was held back, is complete
            if status != 0:
                self._record_failure(rank, status)
                if self.elastic:
                    self.console.say(
                        f"hvdtrain: worker {rank} {parsers.describe_status(status)}; "
                        f"elastic mode: training goes on with the others"
                    )
        if exits:
            return self._inspect(rest) if rest.strip() else False
        if parsers.is_termination_notice(line):
            self.terminating = True  # the SIGTERM exits that follow are horovodrun's doing
            return False
        if self.launcher_error or line.startswith(parsers.TRACEBACK_START):
            # horovodrun's own traceback: summarised or printed at the end
            self.launcher_error.append(line)
            return False
        return True

    def _inspect_worker_stderr(self, rank: int, text: str) -> bool:
        if self.stalls.setdefault(rank, parsers.StallParser()).feed(text):
            return False
        if (seconds := parsers.gloo_timeout_seconds(text)) is not None:
            self.gloo_timeouts.setdefault(rank, seconds)
            self._record_failure(rank, 1)  # the rank is about to exit: no need to wait for it
            return False
        if parsers.stopped_by_peer(text):
            self.stopped_by_peer.add(rank)
        elif parsers.reports_own_error(text):
            self.raised.add(rank)
        # Horovod's C++ line; the rank's own line follows
        return PEER_FAILURE_MARKERS[1] not in text

    def _warn_stalls(self) -> None:
        """One line per stall warning Horovod printed
        (the report is complete once its lines stop)."""
        with self._lock:
            reports = [r for p in self.stalls.values() for r in p.take_finished(idle_s=0.3)]
        for report in reports:
            if not report.shutdown:
                with self._lock:
                    self.console.say(
                        f"hvdtrain: warning: {report.summary()} (ranks diverged?); the job is "
                        "stopped if this lasts past the hang timeout"
                    )

    def _record_failure(self, rank: int, status: int) -> None:
        if self.terminating and status == 128 + signal.SIGTERM:
            self.terminated.add(rank)
        self.failures.append((rank, status, time.monotonic()))
        if rank not in self.stopped_by_peer:
            self.failed.set()
        # else not the cause: the failed peer's own exit may still be on its way (another pipe,
        # a slower exit); ``_cause_overdue`` stops the job if it does not come

    def _cause_overdue(self) -> bool:
        """True (and the job is stopped) once a rank stopped by a peer's failure exited and no
        other failure came within ``CAUSE_WAIT_S``."""
        with self._lock:
            if not self.failures or time.monotonic() - self.failures[0][2] < CAUSE_WAIT_S:
                return False
            self.failed.set()
            return True

    def _failure(self) -> tuple[int, int | None, float]:
        """The failure to report, with when the first was seen. Which exit horovodrun prints
        first is a race, not the order of causes: the first failure of a rank that reported its
        own error, else a rank gone after reporting one (its exit not seen: status None), else
        the first failure seen before the job began to stop of a rank that did not stop because
        of a peer (said so, gave up waiting for one, or horovodrun ended it for another's
        failure), else a rank that left without a word while the others still trained (gone
        without a failure, or ended by horovodrun while it exited: status 0, it skipped
        collectives they waited in), else the first."""
        first = self.failures[0]
        followers = self.stopped_by_peer | set(self.gloo_timeouts)
        failed = {rank for rank, _, _ in self.failures}
        quiet = sorted(((self.gone - failed) | self.terminated) - followers - self.raised)
        candidates = (
            *(f for f in self.failures if f[0] in self.raised),
            *((rank, None, 0.0) for rank in sorted(self.gone - failed) if rank in self.raised),
            *(
                f
                for f in self.failures
                if f[0] not in followers | self.terminated
                and (self.stop_began is None or f[2] <= self.stop_began)
            ),
            *((rank, 0, 0.0) for rank in quiet),
            first,
        )
        return candidates[0][0], candidates[0][1], first[2]

    def _local_ranks_gone(self, proc: subprocess.Popen) -> set[int]:
        """This host's ranks whose process has exited."""
        local = {r for r, host in self.rank_hosts.items() if host not in self.remote_hosts}
        return local - {rank for rank, _ in stopping.local_workers(proc)}

    def _check_frozen(self, proc: subprocess.Popen) -> None:
        """MPI: a worker frozen for the hang timeout ends the job (its peers would wait for ever).
        Remote workers' guards report theirs; local ones are looked at here, once a second."""
        import psutil

        now = time.monotonic()
        if now - self._frozen_checked < 1:
            return
        self._frozen_checked = now
        for rank, process in stopping.local_workers(proc):
            with contextlib.suppress(psutil.Error), self._lock:
                if process.status() == psutil.STATUS_STOPPED:
                    self.frozen.setdefault(rank, now)
                else:
                    self.frozen.pop(rank, None)
        with self._lock:
            for rank, since in sorted(self.frozen.items()):
                if now - since >= self.hang_timeout:
                    self._record_failure(rank, 128 + signal.SIGSTOP)

    def _report(self, returncode: int, stopped: float) -> int:
        if self.elastic and self.failures:
            line = f"hvdtrain: elastic job failed: {_launcher_reason(self.launcher_error)}"
            self.console.say(line)
            _mark_run_failed(self.run_file, line[len("hvdtrain: ") :])
            return returncode if 0 < returncode < 256 else 1
        if not self.failures:
            # horovodrun failed by itself: its last line (its traceback with HVDTRAIN_TRACEBACK=1).
            if os.environ.get("HVDTRAIN_TRACEBACK"):
                sys.stderr.writelines(self.launcher_error)
            self.console.say(
                f"hvdtrain: horovodrun failed: {_launcher_reason(self.launcher_error)}"
            )
            return returncode
        rank, status, seen = self._failure()
        self._announce(self._reason(rank, status), seen, stopped)
        return 1 if self._failed_by_error(rank, status) or not 0 < status < 256 else status

    def _failed_by_error(self, rank: int, status: int | None) -> bool:
        """The rank reported its error, and its exit was not seen or SIGTERM or SIGKILL
        (horovodrun's, or the launcher's as it stopped the job) ended it during its exit:
        the error is the cause, not the signal."""
        return rank in self.raised and status in (None, 128 + signal.SIGTERM, 128 + signal.SIGKILL)

    def _announce(self, what: str, since: float, stopped: float) -> None:
        """The job's one failure line, also set on its MLflow run, which is marked FAILED."""
        line = f"hvdtrain: {what}; job stopped after {max(0.0, stopped - since):.1f} s"
        if self.checkpoint_dir:
            line += f"; last checkpoint: {_last_checkpoint(self.checkpoint_dir)}"
        self.console.say(line)
        _mark_run_failed(self.run_file, line[len("hvdtrain: ") :])

    def _reason(self, rank: int, status: int | None) -> str:
        stall = next((r for p in self.stalls.values() for r in p.reports if r.shutdown), None)
        if stall is not None:
            return (
                f"{stall.summary()} (ranks diverged: different step counts, or a collective "
                "only some ranks call?)"
            )
        waited = (
            f"; worker {rank} gave up after {self.gloo_timeouts[rank]:.0f} s"
            if rank in self.gloo_timeouts
            else ""
        )
        if self.frozen:
            return (
                f"{self._workers(list(self.frozen))} stopped responding (process frozen, e.g. "
                f"SIGSTOP){waited}"
            )
        lost = (
            self._lost.result()
            if self._lost and (rank in self.gloo_timeouts or status == 255)
            else {}
        )
        if lost:
            host, why = next(iter(lost.items()))
            on_it = sorted(r for r, h in self.rank_hosts.items() if h == host)
            workers = f" ({self._workers(on_it).replace(f' on {host}', '')})" if on_it else ""
            return (
                f"host {host}{workers} is unreachable ({why}: its link or the host went "
                f"down){waited}"
            )
        if rank == parsers.DAEMON_LOST:
            return "mpirun lost its connection to a host's daemon (a host or its link went down?)"
        if rank in self.gloo_timeouts:
            return (
                f"{self._workers([rank])} waited {self.gloo_timeouts[rank]:.0f} s for a peer that "
                "did not answer (Gloo timeout: a frozen or unreachable worker?)"
            )
        if self._failed_by_error(rank, status):
            return f"{self._workers([rank])} failed with the error above" + (
                f" (then stopped by {signal.Signals(status - 128).name} while it exited)"
                if status
                else ""
            )
        if status == 0:
            return (
                f"{self._workers([rank])} left without an error while the others still trained "
                "(it skipped collectives they waited in: every rank must run the same steps)"
            )
        return f"{self._workers([rank])} {parsers.describe_status(status)}"

    def _workers(self, ranks: list[int]) -> str:
        names = [
            f"{r} on {self.rank_hosts[r]}" if r in self.rank_hosts else str(r)
            for r in sorted(ranks)
        ]
        return ("worker " if len(names) == 1 else "workers ") + ", ".join(names)

    def _unreachable(self) -> dict[str, str]:
        """The job's remote hosts that do not answer on their SSH port now: host -> why."""

        def answer(host: str) -> str | None:
            try:
                with socket.create_connection((host, self.ssh_port), timeout=REACH_TIMEOUT_S):
                    return None
            except TimeoutError:
                return f"no answer on SSH port {self.ssh_port} within {REACH_TIMEOUT_S:.0f} s"
            except OSError as err:
                return f"{(err.strerror or str(err)).lower()} on SSH port {self.ssh_port}"

        if not self.remote_hosts:
            return {}
        with ThreadPoolExecutor(len(self.remote_hosts)) as pool:
            found = dict(zip(self.remote_hosts, pool.map(answer, self.remote_hosts)))
        return {host: why for host, why in found.items() if why}


def _last_checkpoint(directory: str) -> str:
    """The newest committed checkpoint's payload (either framework's), quietly: the resume itself
    warns about the broken ones it skips."""
    from ..core.checkpoint import CheckpointDir, CheckpointError, read_meta

    for _, sidecar in reversed(CheckpointDir(directory, "").checkpoints()):
        try:
            return str(Path(directory) / read_meta(sidecar)[0].name)
        except CheckpointError:
            continue
    return f"none in {directory}"


def _launcher_reason(lines: list[str]) -> str:
    named = parsers.first_exit("".join(lines))
    if named:
        return named
    last = [line.strip() for line in lines if line.strip()]
    return last[-1] if last else "horovodrun failed without a message"


def _mark_run_failed(run_file: Path, reason: str) -> None:
    from ..tracking.legs import mark_failed  # imports MLflow: only when a job failed

    mark_failed(run_file, reason)
