"""The README's bad-input table enforces itself: every row names tests that exist, and those tests
take the row's answer and exit status from the table (``tests/readme_table.py``) rather than
their own copy, so the table cannot say what hvdtrain does not do."""

import ast
from pathlib import Path

from tests.readme_table import rows

TESTS = Path(__file__).parent


def strings_in(path: Path) -> set[str]:
    """Every string constant of a test module (adjacent literals are one constant)."""
    tree = ast.parse(path.read_text())
    return {
        node.value
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant) and isinstance(node.value, str)
    }


def test_every_bad_input_row_is_asserted_by_the_tests_it_names():
    found = rows()
    assert len(found) >= 40
    for row in found:
        assert row.tests, f"row {row.key!r} names no test"
        for named in row.tests:
            file_name, test_name = named.split("::")
            module = TESTS / file_name
            functions = {
                node.name
                for node in ast.walk(ast.parse(module.read_text()))
                if isinstance(node, ast.FunctionDef)
            }
            assert test_name in functions, f"row {row.key!r}: no {named}"
            # The test reads the row: by its bad input (row(...)) or as one of the rows naming it
            # (rows_for(...)).
            assert row.key in strings_in(module) or named in strings_in(module), (
                f"row {row.key!r}: {named} does not take its answer from the table"
            )
