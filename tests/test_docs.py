"""Every ```python block in docs/**/*.md runs, each in a fresh namespace (one test per block)."""

import pathlib
import re

import pytest


DOCS = pathlib.Path(__file__).resolve().parents[1] / "docs"
_BLOCK = re.compile(r"^```python[^\n]*\n(.*?)^```", re.DOTALL | re.MULTILINE)


def _blocks():
    out = []
    for md in sorted(DOCS.rglob("*.md")):
        text = md.read_text(encoding="utf-8")
        for m in _BLOCK.finditer(text):
            line = text.count("\n", 0, m.start()) + 1
            out.append(pytest.param(m.group(1), id=f"{md.relative_to(DOCS)}:{line}"))
    return out


BLOCKS = _blocks()


def test_docs_have_snippets():
    assert len(BLOCKS) >= 5


@pytest.mark.parametrize("code", BLOCKS)
def test_docs_snippet_runs(code):
    namespace: dict = {"__name__": "__docs__"}
    exec(compile(code, "<docs snippet>", "exec"), namespace)
