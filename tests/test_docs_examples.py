"""Every ```python block in docs/ runs, so the docs cannot rot.

Blocks of one page run in order in one namespace. Blocks fenced as ```py are shown but
not run (for snippets that need a server or are deliberately partial).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

DOCS = Path(__file__).resolve().parent.parent / "docs"
FENCE = re.compile(r"^```python[ \t]*\n(.*?)^```[ \t]*$", re.S | re.M)
PAGES = sorted(p for p in DOCS.rglob("*.md") if FENCE.search(p.read_text()))


def test_docs_have_examples() -> None:
    assert PAGES, "docs/ should contain executable ```python examples"


@pytest.mark.parametrize("page", PAGES, ids=[str(p.relative_to(DOCS)) for p in PAGES])
def test_page_examples_run(page: Path) -> None:
    namespace: dict[str, object] = {"__name__": f"docs_{page.stem}"}
    for i, match in enumerate(FENCE.finditer(page.read_text())):
        code = compile(match.group(1), f"{page.name}[block {i + 1}]", "exec", dont_inherit=True)
        exec(code, namespace)
