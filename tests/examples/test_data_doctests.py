"""Run the ``>>>`` examples of the data layer (examples/ is outside pytest's doctest paths)."""

from __future__ import annotations

import doctest
import importlib

import pytest

MODULES = [
    "reid_example.data.attributes",
    "reid_example.data.captions",
    "reid_example.data.collate",
    "reid_example.data.layouts",
    "reid_example.data.records",
    "reid_example.data.render",
    "reid_example.data.splits",
    "reid_example.data.synthetic",
    "reid_example.data.synthetic_spec",
    "reid_example.data.text",
    "reid_example.data.transforms",
]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    module = importlib.import_module(name)
    flags = doctest.NORMALIZE_WHITESPACE | doctest.ELLIPSIS
    result = doctest.testmod(module, optionflags=flags, verbose=False)
    assert result.attempted > 0
    assert result.failed == 0, f"{result.failed} doctest(s) failed in {name}"
