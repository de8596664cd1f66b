"""The documentation: the README stays an entry page, and the site builds without a warning.

The README holds what hvdtrain is, the install, the two commands, both quick starts and a map of
the docs; the reference is the site (``mkdocs.yml``: ``docs/``, with README.md as its home page and
BENCHMARKS.md as a page, added by ``scripts/mkdocs_root_pages.py``). ``mkdocs build --strict``
fails on a broken link or anchor, a page left out of the nav, or an API reference entry that no
longer resolves, so building it here is how CI keeps the site whole.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).parent.parent
README_MAX_LINES = 400
_LINK_TARGET = re.compile(r"\]\(([^)\s]+)\)")


def nav_pages(nav: list) -> list[str]:
    """Every page of mkdocs.yml's nav (``{title: page}`` or ``{title: [subsections]}``)."""
    pages = []
    for entry in nav:
        for value in entry.values():
            pages += nav_pages(value) if isinstance(value, list) else [value]
    return pages


def built_file(site: Path, page: str) -> Path:
    """Where MkDocs writes ``page`` with its default directory URLs: ``cli.md`` ->
    ``cli/index.html``."""
    stem = page.removesuffix(".md")
    return site / "index.html" if stem == "index" else site / stem / "index.html"


def test_the_site_builds_strict_with_every_page_of_the_nav(tmp_path):
    site = tmp_path / "site"
    # NO_MKDOCS_2_WARNING: Material's banner about MkDocs 2 is not about this site.
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    command = [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)]
    built = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    output = built.stdout + built.stderr
    assert built.returncode == 0, output[-5000:]
    assert "WARNING" not in output, output[-5000:]
    nav = yaml.safe_load((REPO / "mkdocs.yml").read_text())["nav"]
    pages = nav_pages(nav)
    assert {"index.md", "reliability.md", "api.md", "benchmark-results.md"} <= set(pages)
    for page in pages:
        assert built_file(site, page).is_file(), f"{page} of the nav was not built"
    api = built_file(site, "api.md").read_text()
    for name in (
        "hvdtrain.torch.wrap_optimizer",
        "hvdtrain.keras.wrap_optimizer",
        "hvdtrain.spark.run",
    ):
        assert f'id="{name}"' in api, f"the API reference has no entry for {name}"


def test_the_readme_is_an_entry_page_of_at_most_400_lines():
    lines = (REPO / "README.md").read_text().splitlines()
    assert len(lines) <= README_MAX_LINES, (
        f"README.md has {len(lines)} lines; the reference belongs in docs/"
    )


def test_every_link_of_the_readme_resolves_to_a_file_of_the_checkout():
    targets = _LINK_TARGET.findall((REPO / "README.md").read_text())
    local = [
        target.partition("#")[0]
        for target in targets
        if not re.match(r"[a-z]+:", target) and not target.startswith("#")
    ]
    assert any(t.startswith("docs/") for t in local), "the README links to no page of docs/"
    for target in local:
        assert (REPO / target).is_file(), f"README.md links to {target}, which does not exist"
