"""MkDocs hook: generate reference sections from code so they cannot drift.

* ``<!-- config-reference -->`` in a page is replaced by a table of every option of the reference
  trainer, generated from the configuration dataclasses in ``examples/reid_example/config.py``
  (dotted key, type, default, description from ``field(metadata={"help": ...})``, plus the
  allowed values from ``metadata["choices"]`` when a field has them).

The documentation is built strictly: if a page asks for the reference and the configuration module
cannot be imported (or defines no configuration dataclass), the build fails with an error that
says so, instead of publishing a page without the table.
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
CONFIG_MODULE = "reid_example.config"
CONFIG_FILE = ROOT / "examples" / "reid_example" / "config.py"


class ConfigReferenceError(RuntimeError):
    """The page needs the generated config reference, but it cannot be generated."""


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


def _toml(value: Any) -> str:
    """A default as it is written in a TOML config file (and on the ``--set`` command line)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    return repr(value)


def _rows_of_field(f: dataclasses.Field[Any], tp: Any, prefix: str = "") -> list[str]:
    key = f"{prefix}{f.name}"
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        return _rows(tp, key + ".")
    help_text = str(f.metadata.get("help", "")).replace("|", "\\|").replace("\n", " ")
    choices = f.metadata.get("choices")
    if choices:
        allowed = ", ".join(f"`{c}`" for c in choices).replace("|", "\\|")
        help_text = f"{help_text} (one of {allowed})" if help_text else f"one of {allowed}"
    default = _default(f)
    default_text = (
        default
        if isinstance(default, str)
        and f.default is dataclasses.MISSING
        and f.default_factory is dataclasses.MISSING
        else _toml(default)
    )
    default_text = default_text.replace("|", "\\|")
    return [f"| `{key}` | `{_type_name(tp)}` | `{default_text}` | {help_text} |"]


def _rows(cls: type, prefix: str) -> list[str]:
    rows: list[str] = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        rows.extend(_rows_of_field(f, hints.get(f.name, f.type), prefix))
    return rows


def _shown(path: Path) -> str:
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def _load_config_module() -> Any:
    if not CONFIG_FILE.is_file():
        raise ConfigReferenceError(
            f"{MARKER} needs the reference trainer's configuration module {CONFIG_MODULE} "
            f"({_shown(CONFIG_FILE)}), which does not exist"
        )
    sys.path.insert(0, str(ROOT / "examples"))
    try:
        stale = [m for m in sys.modules if m.split(".", 1)[0] == "reid_example"]
        for name in stale:  # always document the file as it is now (mkdocs serve)
            del sys.modules[name]
        return importlib.import_module(CONFIG_MODULE)
    except Exception as exc:
        raise ConfigReferenceError(
            f"{MARKER}: importing {CONFIG_MODULE} from {_shown(CONFIG_FILE)} failed: {exc!r}"
        ) from exc
    finally:
        sys.path.pop(0)


def config_reference() -> str:
    module = _load_config_module()
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
    if not roots:
        raise ConfigReferenceError(
            f"{MARKER}: {CONFIG_MODULE} defines no configuration dataclass to document"
        )
    header = ["| key | type | default | description |", "|---|---|---|---|"]
    blocks: list[str] = []
    for root in roots:
        hints = typing.get_type_hints(root)
        plain: list[str] = []
        for f in dataclasses.fields(root):
            tp = hints.get(f.name, f.type)
            if isinstance(tp, type) and dataclasses.is_dataclass(tp):
                doc = " ".join((tp.__doc__ or "").split())
                title = f"#### `[{f.name}]`" + (f" — {doc}" if doc else "")
                blocks.append("\n".join([title, "", *header, *_rows(tp, f.name + ".")]))
            else:
                plain.extend(_rows_of_field(f, tp))
        if plain:
            blocks.insert(0, "\n".join([*header, *plain]))
    return "\n\n".join(blocks)


def on_page_markdown(markdown: str, **_: Any) -> str:
    if MARKER in markdown:
        markdown = markdown.replace(MARKER, config_reference())
    return markdown
