"""The README's bad-input table: at least 20 rows, and every row names tests that exist."""
import re
from pathlib import Path

REPO = Path(__file__).parent.parent


def table_rows() -> list[list[str]]:
    text = (REPO / "README.md").read_text()
    start = text.index("| bad input |", text.index("### Bad input\n"))
    table = text[start:text.index("\n\n", start)]
    return [[cell.strip() for cell in line.strip("|").split("|")] for line in table.splitlines()[2:]]


def test_every_bad_input_row_names_existing_tests():
    rows = table_rows()
    assert len(rows) >= 20
    previous: list[str] = []
    for bad_input, answer, exit_code, tests in rows:
        named = re.findall(r"`([\w.]*)::(\w+)", tests)
        if tests.startswith("same"):
            named = previous
        assert named, f"row {bad_input!r} names no test"
        for file_name, test_name in named:
            file_name = file_name or next(f for f, _ in named if f)
            source = (REPO / "tests" / file_name).read_text()
            assert re.search(rf"^def {test_name}\(", source, re.M), f"row {bad_input!r}: no {file_name}::{test_name}"
        previous = [(f or next(g for g, _ in named if g), t) for f, t in named]
        assert answer and exit_code, bad_input
