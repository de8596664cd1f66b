"""What ``hvdtrain run`` shows of its workers' output: rank 0's as the script wrote it.

horovodrun relays every worker's output with a prefix (``[1]<stdout>:``, under MPI
``[1,1]<stdout>:``) and cuts it at each carriage return as well as each newline, so a progress
bar's every redraw arrives as a piece of its own. ``JobMonitor`` parses the prefixed pieces
first (failures, stalls, guard notices); ``Console`` then shows them as torchrun does: rank 0's
without the prefix, its bar redrawing in place on a terminal (each piece erases what is left of
the longer one it overwrites) and, when the output is a file or a pipe, one line per redraw
without terminal codes; the other ranks only on stderr or with ``--all-ranks``, prefixed
``[rank@host]``, a traceback another rank already showed as one line (``tracebacks``);
TensorFlow's start-up lines dropped unless the user set ``TF_CPP_MIN_LOG_LEVEL``.
Lines of the launcher's own (``hvdtrain: ...``) are written with ``say``, which puts a bar on
screen back under them.
"""

from __future__ import annotations

import re
import sys
from typing import TextIO

from . import parsers
from .tracebacks import TracebackFolder

ERASE_TO_END = "\x1b[K"  # ANSI: clear from the cursor to the end of the line
# colours and cursor moves (Keras's bar has them, even in a pipe)
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
# TensorFlow's start-up lines that TF_CPP_MIN_LOG_LEVEL does not silence: logged through absl before
# TensorFlow reads it (oneDNN's notice, at every import; the full `tensorflow` wheel's "Could not
# find cuda drivers"), info and warnings only; and that wheel's one error on a host with no CUDA
# driver at all (libcuda missing: 303), logged where Keras first lists the GPUs, after which it runs
# on the CPU. A driver that is there and fails (any other code) is still shown.
_STARTUP_NOISE = re.compile(
    r"^(WARNING: All log messages before absl::InitializeLog\(\) is called are written to "
    r"STDERR|[IW]\d{4} [\d:.]+ +\d+ [\w.]+:\d+\] .*|E\d{4} [\d:.]+ +\d+ cuda_platform\.cc:\d+\] "
    r"failed call to cuInit: INTERNAL: CUDA error: Failed call to cuInit: UNKNOWN ERROR \(303\))"
    r"\s*$",
    re.S,
)


def is_tensorflow_startup_noise(line: str) -> bool:
    """One of TensorFlow's start-up lines that ``TF_CPP_MIN_LOG_LEVEL`` cannot silence (printed on
    CPUs where oneDNN's custom operations are on, e.g. with AVX512-VNNI: tensorflow#100442)."""
    return _STARTUP_NOISE.match(line) is not None


class Console:
    """Writes the pieces ``JobMonitor`` keeps. Not thread-safe: the monitor holds its lock."""

    def __init__(
        self,
        rank_hosts: dict[int, str],
        all_ranks: bool = False,
        quiet_startup: bool = False,
        continued_pieces: bool = False,
        out: TextIO | None = None,
        err: TextIO | None = None,
    ):
        """``quiet_startup``: drop TensorFlow's absl start-up lines (when the user left
        ``TF_CPP_MIN_LOG_LEVEL`` unset)."""
        self.rank_hosts, self.all_ranks, self.quiet_startup = rank_hosts, all_ranks, quiet_startup
        self.out, self.err = out or sys.stdout, err or sys.stderr
        self.tty = self.out.isatty()
        # mpirun prefixes only what follows a newline: a piece after a carriage return is the same
        # worker's.
        self.continued_pieces = continued_pieces
        self._open: dict[
            str, tuple[int, str]
        ] = {}  # launcher stream -> worker whose line is unfinished there
        self._bar: tuple[TextIO, str] | None = (
            None  # rank 0's redrawn line now on screen (a terminal's)
        )
        self._tracebacks = None if all_ranks else TracebackFolder()

    def show(self, piece: str, launcher_stream: str) -> None:
        """One piece horovodrun relayed on its ``launcher_stream`` ("stdout"/"stderr")."""
        worker = parsers.split_worker_line(piece)
        if worker is None and self.continued_pieces and launcher_stream in self._open:
            worker = (*self._open[launcher_stream], piece)
        if worker is None:
            self._write(self._stream(launcher_stream), piece)
            return
        rank, stream, text = worker
        if stream == "stderr" and self.quiet_startup and is_tensorflow_startup_noise(text):
            return
        if text.endswith("\r"):
            self._open[launcher_stream] = (rank, stream)
        else:
            self._open.pop(launcher_stream, None)
        if stream == "stderr" and self._tracebacks is not None:
            for line in self._tracebacks.feed(rank, text):
                self._show(rank, stream, line)
        else:
            self._show(rank, stream, text)

    def say(self, line: str) -> None:
        """A line of the launcher's own, on stderr."""
        self._write(self.err, line + "\n")

    def finish(self, rank: int | None = None) -> None:
        """Show what is still held back of ``rank`` (it exited; None: every rank, the workers'
        output has ended)."""
        if self._tracebacks is None:
            return
        ranks = sorted(self._tracebacks.traces) if rank is None else [rank]
        for each in ranks:
            for line in self._tracebacks.finish(each):
                self._show(each, "stderr", line)

    def _show(self, rank: int, stream: str, text: str) -> None:
        if rank == 0:
            self._as_written(self._stream(stream), text)
        elif self.all_ranks or stream == "stderr" or text.startswith("hvdtrain"):
            text = text.replace("\b", "").rstrip("\r\n")
            if text.strip():
                self._write(self._stream(stream), f"[{self._worker(rank)}] {text}\n")

    def _as_written(self, stream: TextIO, text: str) -> None:
        text = text.replace("\b", "")  # Keras's bar backs over itself before its carriage return
        body = text.rstrip("\r\n")
        end = text[len(body) :]
        # a file: each redraw a line of its own, the blank ones that erase a bar dropped
        if not self.tty:
            body = _ANSI.sub("", body)
            if end == "\r":
                body, end = body.rstrip(), ("\n" if body.strip() else "")
            self._write(stream, body + end, redraw=False)
            return
        if end == "\r":
            self._write(stream, body + ERASE_TO_END + "\r", redraw=False)
            self._bar = (stream, body) if body.strip() else None
        else:
            self._write(stream, body + (ERASE_TO_END if end else "") + end, redraw=False)
            self._bar = None

    def _write(self, stream: TextIO, text: str, redraw: bool = True) -> None:
        """Write ``text``; on a terminal with a bar on screen, over the bar and then the bar again
        below it (the cursor stands at the bar's start)."""
        bar = self._bar if self.tty and redraw else None
        if bar is not None:
            bar[0].flush()
            text = ERASE_TO_END + text
        stream.write(text)
        stream.flush()
        if bar is not None and text.endswith("\n"):
            bar[0].write(bar[1] + ERASE_TO_END + "\r")
            bar[0].flush()

    def _stream(self, name: str) -> TextIO:
        return self.err if name == "stderr" else self.out

    def _worker(self, rank: int) -> str:
        return f"{rank}@{self.rank_hosts[rank]}" if rank in self.rank_hosts else str(rank)
