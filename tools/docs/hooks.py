"""mkdocs hooks for the documentation site (``mkdocs.yml`` names this file).

``docs/benchmarks.md`` shows ``bench/README.md`` as it is in the repository: the hook puts the
file in place of the ``{{ bench/README.md }}`` line and turns its links into ``docs/`` pages
(``../docs/pool.md``, written for reading on the repository) into links between site pages.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
_INCLUDE = re.compile(r"^\{\{ ([\w./-]+) \}\}$", re.MULTILINE)


def _include(match: re.Match[str]) -> str:
    text = (ROOT / match[1]).read_text(encoding="utf-8")
    # A link from bench/ or fuzz/ to ../docs/X.md is a link to the site's page X.md.
    return text.replace("](../docs/", "](")


def on_page_markdown(markdown: str, page: Any, **kwargs: Any) -> str:
    """Replace each ``{{ path }}`` line with that file of the repository."""
    return _INCLUDE.sub(_include, markdown)
