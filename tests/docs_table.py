"""The bad-input table of ``docs/reliability.md``, read by the tests that enforce it: each row's
answer and exit status are what its tests assert, so the table cannot drift from what hvdtrain
does.

A row is ``| bad input | what hvdtrain answers | exit | test |``. The first code span of the
answer is the exact line hvdtrain prints, in which ``...`` stands for any text (a time, a
library's wording) and names the test fills in (``train.py``, ``ckpt``, ``HOST``) for the files
and values of its run. Rows whose bad input starts with a ``hvdtrain run`` command are run as
they read, with ``train.py``, ``hosts.txt``, ``empty.txt``, ``colon.txt``, ``somedir``,
``notes.txt``, ``broken.py``, ``torchy.py`` and ``discover.sh`` made by the test.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).parent.parent
PAGE = REPO / "docs" / "reliability.md"
_CODE = re.compile(r"`([^`]+)`")
_RANK_PREFIX = re.compile(r"^\[\d+\]<std(?:out|err)>:")


@dataclass(frozen=True)
class Row:
    bad_input: str
    answer: str  # the answer cell's first code span
    exit: int
    tests: tuple[str, ...]  # "test_file.py::test_name" ("same": the row above's)

    @property
    def command(self) -> str:
        """The bad input's first code span (a command line, for rows that have one)."""
        return _CODE.search(self.bad_input).group(1)

    @property
    def key(self) -> str:
        """The bad input cell without markdown: how tests name the row."""
        return self.bad_input.replace("`", "")

    def pattern(self, **fill: str) -> re.Pattern:
        pieces = []
        for piece in self.answer.split("..."):
            text = re.escape(piece)
            for name, value in fill.items():
                text = re.sub(
                    rf"(?<![\w]){re.escape(re.escape(name))}(?![\w])",
                    lambda _, value=value: re.escape(str(value)),
                    text,
                )
            pieces.append(text)
        return re.compile(".*?".join(pieces))

    def check(self, output: str, returncode: int, **fill: str) -> str:
        """Assert ``returncode`` is the row's exit and exactly one line of ``output``
        (a worker's line with horovodrun's ``[rank]<stderr>:`` prefix taken off) is
        the row's answer; returns it."""
        pattern = self.pattern(**fill)
        lines = [_RANK_PREFIX.sub("", line) for line in output.splitlines()]
        matching = [line for line in lines if pattern.fullmatch(line.strip())]
        assert returncode == self.exit, (
            f"{self.key}: exit {returncode}, the table says {self.exit}\n{output[-3000:]}"
        )
        assert len(matching) == 1, (
            f"{self.key}: {len(matching)} lines match the table's answer "
            f"{self.answer!r} ({pattern.pattern})\n{output[-3000:]}"
        )
        return matching[0].strip()


def rows() -> list[Row]:
    text = PAGE.read_text()
    start = text.index("| bad input |", text.index("## Bad input\n"))
    table = text[start : text.index("\n\n", start)]
    found = []
    for line in table.splitlines()[2:]:
        bad_input, answer, exit_code, tests = (
            cell.strip() for cell in line.strip().strip("|").split("|")
        )
        named = _CODE.findall(tests)
        first = next((n.split("::")[0] for n in named if "::" in n and not n.startswith("::")), "")
        named = tuple(n if not n.startswith("::") else first + n for n in named)
        if tests.startswith("same"):
            named = found[-1].tests
        found.append(Row(bad_input, _CODE.search(answer).group(1), int(exit_code), named))
    return found


def row(key: str) -> Row:
    """The row whose bad input reads ``key`` (markdown left out)."""
    found = [r for r in rows() if r.key == key]
    assert len(found) == 1, f"the bad-input table has {len(found)} rows reading {key!r}"
    return found[0]


def rows_for(test: str) -> list[Row]:
    """The rows naming ``test`` ("test_file.py::test_name")."""
    return [r for r in rows() if test in r.tests]
