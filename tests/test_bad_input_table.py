"""The bad-input table (``docs/reliability.md``) enforces itself: every row names tests that exist,
and those tests take the row's answer and exit status from the table (``tests/docs_table.py``)
rather than their own copy, so the table cannot say what hvdtrain does not do."""

import ast
from pathlib import Path

from tests.docs_table import rows

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


def test_the_readme_gives_the_number_of_rows_the_table_has():
    """The README's overview counts the table's rows; a row added or removed must update it."""
    readme = (TESTS.parent / "README.md").read_text()
    assert f"a tested table of {len(rows())} cases" in readme, (
        "README.md miscounts the bad-input table"
    )
