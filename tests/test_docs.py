"""Execute the Python snippets of README.md and docs/ so the documentation cannot rot.

A fenced ``python`` block runs unless the line just before the fence is ``<!-- skip-test -->``.
Blocks of one page run in order in one namespace (later blocks may use earlier names).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
FENCE = re.compile(r"(?P<before>[^\n]*)\n```python\n(?P<code>.*?)\n```", re.DOTALL)


def snippets(page: Path) -> list[str]:
    text = "\n" + page.read_text(encoding="utf-8")
    return [
        m.group("code")
        for m in FENCE.finditer(text)
        if m.group("before").strip() != "<!-- skip-test -->"
    ]


PAGES_WITH_CODE = [p for p in PAGES if snippets(p)]


@pytest.mark.parametrize("page", PAGES_WITH_CODE, ids=lambda p: str(p.relative_to(ROOT)))
def test_snippets_run(page: Path, capsys: pytest.CaptureFixture[str]) -> None:
    namespace: dict[str, object] = {"__name__": "__docs__"}
    for i, code in enumerate(snippets(page)):
        try:
            exec(compile(code, f"{page.name}[{i}]", "exec"), namespace)
        except Exception as exc:  # pragma: no cover - reported with the snippet
            raise AssertionError(f"snippet {i} of {page} failed: {exc!r}\n{code}") from exc


def test_some_pages_have_code() -> None:
    assert any(p.name == "README.md" for p in PAGES_WITH_CODE)
    assert len(PAGES_WITH_CODE) >= 2


GUARANTEE_TEST = re.compile(r"`(?P<file>[\w/]+\.py)::(?P<name>\w+)")


def test_every_guarantee_names_a_test_that_exists() -> None:
    """Each line of the guarantees page names test functions; they must exist under tests/."""
    page = (ROOT / "docs" / "guarantees.md").read_text(encoding="utf-8")
    named = [(m.group("file"), m.group("name")) for m in GUARANTEE_TEST.finditer(page)]
    assert len(named) >= 20
    missing = [
        f"{file}::{name}"
        for file, name in named
        if not (ROOT / "tests" / file).is_file()
        or not re.search(rf"^(async )?def {name}\(", (ROOT / "tests" / file).read_text(), re.M)
    ]
    assert not missing, f"docs/guarantees.md names tests that do not exist: {missing}"
