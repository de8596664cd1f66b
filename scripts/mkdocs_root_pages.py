"""MkDocs hook: README.md is the site's home page and BENCHMARKS.md its full benchmark results.

Both stay at the repository root, where GitHub shows the README first and code and tests name
BENCHMARKS.md, so each text lives in one file that reads right on GitHub and on the site. They
enter the site as generated pages, and their links are rewritten between the two layouts: in a
root file ``docs/adapters.md`` becomes ``adapters.md``; in a page of docs/ ``../README.md``
becomes ``index.md``. A link that fits neither layout is left alone, so ``mkdocs build --strict``
reports it.
"""

from __future__ import annotations

import re
from pathlib import Path

from mkdocs.structure.files import File

ROOT_PAGES = {"README.md": "index.md", "BENCHMARKS.md": "benchmark-results.md"}
_LINK_TARGET = re.compile(r"\]\(([^)\s]+)\)")


def _site_target(target: str, from_root: bool) -> str:
    """Where ``target``, a link in a root file (``from_root``) or in docs/, points on the site."""
    path, hash_sign, anchor = target.partition("#")
    if from_root and path.startswith("docs/"):
        path = path.removeprefix("docs/")
    elif from_root and path in ROOT_PAGES:
        path = ROOT_PAGES[path]
    elif not from_root and path.startswith("../") and path[len("../") :] in ROOT_PAGES:
        path = ROOT_PAGES[path[len("../") :]]
    return path + hash_sign + anchor


def _rewrite_links(markdown: str, from_root: bool) -> str:
    return _LINK_TARGET.sub(lambda link: f"]({_site_target(link.group(1), from_root)})", markdown)


def on_files(files, config):
    root = Path(config.config_file_path).parent
    for source, page in ROOT_PAGES.items():
        text = (root / source).read_text(encoding="utf-8")
        files.append(File.generated(config, page, content=_rewrite_links(text, from_root=True)))
    return files


def on_page_markdown(markdown, page, config, files):
    if page.file.src_uri in ROOT_PAGES.values():
        return markdown
    return _rewrite_links(markdown, from_root=False)
