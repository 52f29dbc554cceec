"""Griffe extension: render the project's reStructuredText-flavoured docstrings as Markdown.

The docstrings follow Google style but use a few reStructuredText constructs (they are also read
by ``help()`` and IDEs). Before griffe parses a docstring, this extension rewrites them for the
Markdown pipeline of the documentation site:

* ``Example:`` section headers become ``Examples:`` (griffe's Google parser only knows the plural;
  the singular would be an admonition whose ``>>>`` lines render as block quotes);
* roles such as ``:class:`~sdmreid.memory.CrossBatchMemory``` become inline code
  (``CrossBatchMemory``; a leading ``~`` keeps the last dotted component, as in Sphinx);
* ``:math:`x``` becomes ``\\(x\\)`` and a ``.. math::`` block a ``\\[ ... \\]`` block (typeset by
  MathJax through ``pymdownx.arithmatex``);
* simple tables (``=====  =====`` borders) become Markdown tables; a row whose first cell is empty
  continues the row above.

Only the copy of the docstring that the documentation renders is changed; the source is not.
"""

from __future__ import annotations

import re
from typing import Any

import griffe

_SINGULAR = re.compile(r"^(?P<indent>[ \t]*)Example:[ \t]*$", re.MULTILINE)
_ROLE = re.compile(r":(?:class|func|meth|attr|mod|data|obj|exc|const|py:\w+):`(?P<target>[^`]+)`")
_MATH_ROLE = re.compile(r":math:`(?P<tex>[^`]+)`")
_BORDER = re.compile(r"^(?P<indent>[ \t]*)=+(?: +=+)+[ \t]*$")


def _role(match: re.Match[str]) -> str:
    target = match.group("target").strip()
    if target.startswith("~"):
        target = target[1:].rsplit(".", 1)[-1]
    return f"`{target}`"


def _math_blocks(lines: list[str]) -> list[str]:
    out: list[str] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.strip() != ".. math::":
            out.append(line)
            i += 1
            continue
        indent = line[: len(line) - len(line.lstrip())]
        i += 1
        body: list[str] = []
        while i < len(lines) and (not lines[i].strip() or lines[i].startswith(indent + " ")):
            body.append(lines[i].strip())
            i += 1
        while body and not body[-1]:
            body.pop()
        tex = [b for b in body if b]
        if any("&" in b for b in tex):  # alignment points need an aligned environment
            tex = ["\\begin{aligned}", *tex, "\\end{aligned}"]
        out.extend([f"{indent}\\[", *(f"{indent}{t}" for t in tex), f"{indent}\\]", ""])
    return out


def _cells(line: str, spans: list[tuple[int, int]]) -> list[str]:
    cells = []
    for k, (start, end) in enumerate(spans):
        stop = None if k == len(spans) - 1 else spans[k + 1][0]
        cells.append(line[start:stop].strip() if len(line) > start else "")
        del end
    return cells


def _simple_tables(lines: list[str]) -> list[str]:
    out: list[str] = []
    i = 0
    while i < len(lines):
        m = _BORDER.match(lines[i])
        # header, border, rows, closing border
        if not m or i + 2 >= len(lines) or not _BORDER.match(lines[i + 2]):
            out.append(lines[i])
            i += 1
            continue
        indent = m.group("indent")
        spans = [(s.start(), s.end()) for s in re.finditer(r"=+", lines[i])]
        header = _cells(lines[i + 1], spans)
        rows: list[list[str]] = []
        j = i + 3
        while j < len(lines) and not _BORDER.match(lines[j]):
            if lines[j].strip():
                cells = _cells(lines[j], spans)
                if rows and not cells[0]:
                    rows[-1] = [f"{a} {b}".strip() for a, b in zip(rows[-1], cells, strict=True)]
                else:
                    rows.append(cells)
            j += 1
        if j >= len(lines):  # no closing border: not a table
            out.append(lines[i])
            i += 1
            continue

        def fmt(cells: list[str], indent: str = indent) -> str:
            return indent + "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"

        if out and out[-1].strip():
            out.append("")
        out.extend([fmt(header), indent + "|" + "---|" * len(spans), *map(fmt, rows), ""])
        i = j + 1
    return out


def to_markdown(text: str) -> str:
    """Rewrite the reStructuredText constructs of one docstring (see the module docstring)."""
    text = _SINGULAR.sub(r"\g<indent>Examples:", text)
    text = _MATH_ROLE.sub(lambda m: f"\\({m.group('tex')}\\)", text)
    text = _ROLE.sub(_role, text)
    lines = _simple_tables(_math_blocks(text.split("\n")))
    return "\n".join(lines)


class SingularExamples(griffe.Extension):
    """Apply :func:`to_markdown` to every loaded docstring."""

    def on_instance(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        docstring = obj.docstring
        if docstring is not None:
            docstring.value = to_markdown(docstring.value)
