"""How a job's failures look on the workers.

When one worker dies, every other rank's next collective fails with Horovod's "Horovod has been
shut down" error, and horovodrun then sends them SIGTERM. Left alone, each prints pages of
tracebacks and dies without finishing its MLflow run. Here a peer's failure prints one line,
and SIGTERM raises ``SystemExit`` so ``tracking.tracked`` ends the run FAILED and flushes
within horovodrun's 5 s grace period. A user's own exception keeps its traceback: it is the
user's bug. ``install`` is called by each adapter's ``init``; the launcher reads what the
workers print in ``hvdtrain.launch.parsers``.
"""

from __future__ import annotations

import os
import signal
import sys

from . import guards, keras3
from .checkpoint import first_line

# Texts Horovod raises or logs on every surviving rank after a peer died or the job was shut down.
PEER_FAILURE_MARKERS = ("Horovod has been shut down", "Horovod background loop uncaught exception")
# What a rank says of itself then, after "hvdtrain: rank N "; the launcher reads it to tell the
# worker that failed first from those that stopped because of it.
STOPPED_BY_PEER = "stopped: another worker failed or the job was shut down"


class _Stop:
    """Why this process is stopping, as far as it has said: ``sigterm`` once SIGTERM arrived,
    ``said`` once a one-line report of the stop was printed."""

    sigterm = False
    said = False


_stop = _Stop()


def install() -> None:
    """Install the SIGTERM handler and the one-line reports of a peer's failure, of a
    ``guards.UserError`` and of Keras 2 usage Keras 3 removed (``keras3``; ``HVDTRAIN_TRACEBACK=1``:
    full tracebacks); idempotent."""
    if sys.excepthook is not _excepthook:
        _excepthook.previous = sys.excepthook
        sys.excepthook = _excepthook
    if not isinstance(sys.unraisablehook, _QuietWhenStopping):
        sys.unraisablehook = _QuietWhenStopping(sys.unraisablehook, _stop)
    if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:  # never replace the user's own handler
        try:
            signal.signal(signal.SIGTERM, _exit_on_sigterm)
        except ValueError:  # not the main thread: Python's default stays
            pass


def is_peer_failure(err: BaseException) -> bool:
    """True for the error a rank sees because another rank failed or Horovod shut down (any
    framework: HorovodInternalError, or TensorFlow's error type with Horovod's text)."""
    seen = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if type(err).__name__ == "HorovodInternalError" or any(
            m in str(err) for m in PEER_FAILURE_MARKERS
        ):
            return True
        err = err.__cause__ or err.__context__
    return False


def _excepthook(kind, err, tb) -> None:
    if os.environ.get("HVDTRAIN_TRACEBACK"):
        return _excepthook.previous(kind, err, tb)
    if isinstance(err, guards.UserError):
        _stop.said = True
        return guards.report(err)
    rank = os.environ.get("HOROVOD_RANK", "?")
    removed = keras3.explain(err)
    _stop.said = bool(removed) or is_peer_failure(err) or _stop.sigterm
    if removed:
        print(
            f"hvdtrain: rank {rank}: {removed}" if rank != "?" else f"hvdtrain: {removed}",
            file=sys.stderr,
            flush=True,
        )
        return None
    if not is_peer_failure(err):
        if _stop.sigterm:
            # The launcher is stopping the job: SIGTERM's SystemExit surfaced wrapped in another
            # error (raised inside a framework's op or callback); the launcher's line says why.
            print(
                f"hvdtrain: rank {rank} stopped: the job was shut down (SIGTERM)",
                file=sys.stderr,
                flush=True,
            )
            return None
        return _excepthook.previous(kind, err, tb)
    print(
        f"hvdtrain: rank {rank} {STOPPED_BY_PEER} ({kind.__name__}: {_first_sentence(err)})",
        file=sys.stderr,
        flush=True,
    )


_excepthook.previous = sys.__excepthook__


class _QuietWhenStopping:
    """``sys.unraisablehook`` that drops what would only bury a stopping worker's one line: the
    SystemExit of SIGTERM landing in an exit handler (say, a weakref finalizer at interpreter
    exit), and, once the process was told to stop or said why it stopped, the errors of finalizers
    run while the interpreter tears down its modules. Anything else goes to the hook it replaced.

    It holds what it uses as attributes, never as this module's globals: finalizers run while
    Python sets modules' globals to None, and a hook that looked one up then failed for each of
    them ("Exception ignored in sys.unraisablehook", a CI run's pages of it)."""

    def __init__(self, previous, stop: _Stop) -> None:
        self.previous = previous
        self.stop = stop
        self.is_finalizing = sys.is_finalizing

    def __call__(self, unraisable) -> None:
        if isinstance(unraisable.exc_value, SystemExit):
            return
        if (self.stop.sigterm or self.stop.said) and self.is_finalizing():
            return
        self.previous(unraisable)


def _exit_on_sigterm(signum, frame) -> None:
    # Once only: a second SIGTERM must not interrupt the run being finished by the first.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    _stop.sigterm = True
    raise SystemExit(128 + signum)


def _first_sentence(err: BaseException) -> str:
    return first_line(err).split(". ")[0].rstrip(".")
