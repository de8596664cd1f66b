"""One traceback, not one per rank: an error every rank raises alike (a bad shape in the model, a
missing file, a typo past the first line) printed the same pages once per worker, the cause lost
in the repeats. ``TracebackFolder`` holds back the traceback of a rank other than 0 until it ends;
one the console already showed, word for word, becomes one line naming the rank that showed it.
A traceback of its own (another error, another line) is shown whole. ``Console`` feeds it the
workers' stderr lines; ``--all-ranks`` shows every traceback as it came.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .parsers import TRACEBACK_START as _START

# Python's lines between the tracebacks of chained exceptions
_CHAINED = ("During handling of the above exception", "The above exception was the direct cause")


@dataclass
class _Trace:
    lines: list[str] = field(default_factory=list)
    ended: bool = False  # its exception line came: what follows may still chain another


class TracebackFolder:
    def __init__(self) -> None:
        self.shown: dict[tuple[str, ...], int] = {}  # a traceback's lines -> the rank showing it
        self.traces: dict[int, _Trace] = {}  # rank -> its traceback still coming

    def feed(self, rank: int, text: str) -> list[str]:
        """What to show now of ``rank``'s stderr, ``text`` being its next line (rank 0's always
        at once: it is the script's own output, and what the other ranks are compared with)."""
        trace = self.traces.get(rank)
        if trace is not None and not _continues(trace, text):
            return [*self.finish(rank), *self.feed(rank, text)]
        if trace is None:
            if not text.startswith(_START):
                return [text]
            trace = self.traces[rank] = _Trace()
        trace.lines.append(text)
        if text.startswith((_START, *_CHAINED)):
            trace.ended = False
        elif text.strip() and not text[0].isspace():
            trace.ended = True
        return [text] if rank == 0 else []

    def finish(self, rank: int) -> list[str]:
        """The end of ``rank``'s traceback (the next line is not part of it, or the job ended):
        what to show of what was held back."""
        trace = self.traces.pop(rank, None)
        if trace is None:
            return []
        key = _key(trace.lines)
        if rank != 0 and 0 in self.traces and _key(self.traces[0].lines)[: len(key)] == key:
            first = 0  # rank 0's, still being printed
        else:
            first = self.shown.setdefault(key, rank)
        if rank == 0 or first == rank:
            return [] if rank == 0 else trace.lines
        last = next((line for line in reversed(key) if line.strip()), "")
        return [f"the same traceback as rank {first} ({last.strip()})\n"]


def _key(lines: list[str]) -> tuple[str, ...]:
    return tuple(line.rstrip("\r\n") for line in lines)


def _continues(trace: _Trace, text: str) -> bool:
    """True while ``text`` is part of the traceback: any line before its exception line, and
    after it blank lines and chained exceptions' lines."""
    return not trace.ended or not text.strip() or text.startswith((_START, *_CHAINED))
