"""MkDocs hook: generate reference sections from code so they cannot drift.

* ``<!-- config-reference -->`` in a page is replaced by a table of every option of the reference
  trainer, generated from the configuration dataclasses in ``examples/reid_example/config.py``
  (dotted key, type, default, description from ``field(metadata={"help": ...})``).
"""

from __future__ import annotations

import dataclasses
import importlib
import sys
import typing
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
MARKER = "<!-- config-reference -->"


def _type_name(tp: Any) -> str:
    if isinstance(tp, type):
        return tp.__name__
    return str(tp).replace("typing.", "")


def _default(f: dataclasses.Field[Any]) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return "(required)"


def _rows(cls: type, prefix: str) -> list[str]:
    rows: list[str] = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp = hints.get(f.name, f.type)
        key = f"{prefix}{f.name}"
        if isinstance(tp, type) and dataclasses.is_dataclass(tp):
            rows.extend(_rows(tp, key + "."))
            continue
        default = _default(f)
        help_text = str(f.metadata.get("help", "")).replace("|", "\\|").replace("\n", " ")
        default_text = repr(default).replace("|", "\\|")
        rows.append(f"| `{key}` | `{_type_name(tp)}` | `{default_text}` | {help_text} |")
    return rows


def config_reference() -> str:
    sys.path.insert(0, str(ROOT / "examples"))
    try:
        module = importlib.import_module("reid_example.config")
    finally:
        sys.path.pop(0)
    classes = [
        obj
        for obj in vars(module).values()
        if isinstance(obj, type)
        and dataclasses.is_dataclass(obj)
        and obj.__module__ == module.__name__
    ]
    nested: set[type] = set()
    for cls in classes:
        for tp in typing.get_type_hints(cls).values():
            if isinstance(tp, type) and dataclasses.is_dataclass(tp):
                nested.add(tp)
    roots = [c for c in classes if c not in nested]
    lines = ["| key | type | default | description |", "|---|---|---|---|"]
    for root in roots:
        lines.extend(_rows(root, ""))
    return "\n".join(lines)


def on_page_markdown(markdown: str, **_: Any) -> str:
    if MARKER in markdown:
        markdown = markdown.replace(MARKER, config_reference())
    return markdown
