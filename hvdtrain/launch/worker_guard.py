"""The parent of a worker on a host other than the launcher's: what ssh cannot tell the launcher,
and what ends the worker when the job ends.

horovodrun starts a remote worker as ``ssh host 'cd DIR; VARS python script'``; the remote shell
execs the worker, so a worker killed by a signal reaches the launcher as ssh's status 255, and
when the launcher stops the job (its ssh client is killed) nothing stops the remote worker: one
that is frozen stays for ever. ``hvdtrain run`` therefore starts every worker as
``python -m hvdtrain.launch.worker_guard python script ...``. On the launcher's own host the guard
execs the worker at once (the launcher sees those processes itself). Elsewhere it forks it and:

- exits with 128+N when the worker is killed by signal N, as a shell reports it, and says so
  (``KILLED_LINE``: under MPI that is the launcher's first news of it), so the launcher can name
  the signal;
- prints ``STOPPED_LINE``/``CONTINUED_LINE`` when the worker is stopped (SIGSTOP) or continued, so
  the launcher can tell a frozen worker from one a peer waits for;
- passes SIGTERM, SIGINT and SIGHUP on to the worker, and when its ssh session ends (the launcher
  stopped the job) stops the worker: SIGTERM, so a rank 0 can finish its MLflow run, and
  SIGKILL after ``GRACE_S`` (at once for a frozen worker, which cannot act on SIGTERM);
- takes the worker with it if the guard itself is killed (the worker's parent-death signal).

Remote workers also get the job's secrets here, from a file rather than the command line
(``secret_files``). Standard library only, and nothing of hvdtrain is imported: it starts before
every worker.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import socket
import sys
import threading

LAUNCHER_HOST_ENV = "HVDTRAIN_LAUNCHER_HOST"
SECRETS_FILE_ENV = "HVDTRAIN_PRIVATE_ENV_FILE"  # the job's secrets here; no secret's name itself
NOTICE = "hvdtrain-guard: worker "  # what every line of the guard starts with
STOPPED_LINE = NOTICE + "frozen by {signal}"
CONTINUED_LINE = NOTICE + "continued"
KILLED_LINE = NOTICE + "killed by {signal}"
GRACE_S = 3.0
_PR_SET_PDEATHSIG = 1


def main(argv: list[str]) -> int:
    command = argv[1:]
    if not command:
        print("usage: python -m hvdtrain.launch.worker_guard COMMAND [ARGS...]", file=sys.stderr)
        return 2
    local = os.environ.get(LAUNCHER_HOST_ENV, socket.gethostname()) == socket.gethostname()
    if not _load_secrets(local):
        return 1
    if local:
        os.execvp(command[0], command)
    _die_with_parent(signal.SIGTERM)  # the ssh session (our parent) ended: stop the worker
    guard = os.getpid()
    pid = os.fork()
    if pid == 0:
        _die_with_parent(signal.SIGKILL)
        if os.getppid() != guard:  # the guard died before the line above took effect
            os._exit(128 + signal.SIGKILL)
        try:
            os.execvp(command[0], command)
        except OSError as err:
            print(f"hvdtrain-guard: cannot run {command[0]}: {err.strerror}", file=sys.stderr)
            os._exit(127)
    return _Guard(pid).wait()


class _Guard:
    def __init__(self, pid: int):
        self.pid = pid
        self.frozen = False
        self.stopping = False
        self._lock = threading.Lock()
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(signum, self._on_signal)
        threading.Thread(target=self._watch_session, daemon=True).start()

    def wait(self) -> int:
        while True:
            _, status = os.waitpid(self.pid, os.WUNTRACED | os.WCONTINUED)
            if os.WIFSTOPPED(status):
                self.frozen = True
                _say(STOPPED_LINE.format(signal=signal.Signals(os.WSTOPSIG(status)).name))
            elif os.WIFCONTINUED(status):
                self.frozen = False
                _say(CONTINUED_LINE)
            elif os.WIFSIGNALED(status):
                if not self.stopping:
                    _say(KILLED_LINE.format(signal=signal.Signals(os.WTERMSIG(status)).name))
                return 128 + os.WTERMSIG(status)
            else:
                return os.WEXITSTATUS(status)

    def _on_signal(self, signum, frame) -> None:
        if signum != signal.SIGTERM:
            self._send(signum)
        elif not self.stopping:
            self.stop()

    def stop(self) -> None:
        """SIGTERM now (SIGKILL for a frozen worker), SIGKILL after the grace period."""
        with self._lock:
            if self.stopping:
                return
            self.stopping = True
        self._send(signal.SIGKILL if self.frozen else signal.SIGTERM)
        timer = threading.Timer(GRACE_S, self._send, args=(signal.SIGKILL,))
        timer.daemon = True
        timer.start()

    def _send(self, signum: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signum)

    def _watch_session(self) -> None:
        """The launcher's end of stdout/stderr closes when its ssh client is gone (POLLERR/POLLHUP
        on our end), whether or not the remote shell still stands between us and sshd."""
        poller = select.poll()
        for fd in (1, 2):
            poller.register(fd, 0)  # no events asked for: only errors and hang-ups are reported
        while not poller.poll():
            pass
        self.stop()


def _load_secrets(local: bool) -> bool:
    """The job's secrets from the owner-only file the launcher wrote on this host, into the
    environment the worker starts with (they are on no command line). False, after one line, when
    a remote host has none; on the launcher's host the workers inherit them instead."""
    path = os.environ.get(SECRETS_FILE_ENV)
    if not path:
        return True
    try:
        with open(path) as f:
            os.environ.update(json.load(f))
    except FileNotFoundError:
        if local:
            return True
        _say(
            f"hvdtrain-guard: the job's secrets file {path} is missing on {socket.gethostname()} "
            "(a host that joined after launch gets none): worker not started"
        )
        return False
    return True


def _die_with_parent(signum: int) -> None:
    """Linux's parent-death signal: ``signum`` when the parent exits; elsewhere nothing."""
    with contextlib.suppress(Exception):
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, int(signum), 0, 0, 0)


def _say(line: str) -> None:
    with contextlib.suppress(OSError, ValueError):  # the launcher may be gone
        print(line, file=sys.stderr, flush=True)


if __name__ == "__main__":
    sys.exit(main(sys.argv))
