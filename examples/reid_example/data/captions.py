"""Captions of the synthetic data set's TEXT modality.

A caption is a templated description of an identity's attributes: build, upper garment (colour,
texture, sleeve length), lower garment, bag and hat. Several templates, synonyms and randomly
omitted attributes make the captions of one identity differ, as real descriptions do; every
word is in :data:`~reid_example.data.text.BUILTIN_VOCABULARY`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from reid_example.data.attributes import PALETTE_NAMES

__all__ = ["caption"]

_BAG_SIDES = ("none", "left", "right")
_UPPER_NOUNS = (("shirt", "top", "jacket", "sweater"), ("t-shirt", "shirt", "top", "blouse"))
_LOWER_NOUNS = (("trousers", "pants", "jeans"), ("shorts",), ("skirt",))
_PERSON = ("person", "pedestrian", "man", "woman", "individual", "someone")
_PATTERN_PHRASES = {
    1: ("with horizontal stripes", "horizontally striped", "with stripes across it"),
    2: ("with vertical stripes", "vertically striped", "with stripes going down"),
    3: ("with diagonal stripes", "diagonally striped"),
    4: ("checked", "plaid", "with a checkered pattern"),
}
_FREQ_WORDS = ("wide", "medium", "thin")


def caption(ida: Mapping[str, npt.NDArray[Any]], i: int, r: np.random.Generator, p: float) -> str:
    """A caption of identity ``i`` of the attribute table ``ida``, drawn from ``r``.

    Args:
        ida: identity attributes (see :func:`~reid_example.data.attributes.identity_attributes`).
        i: the identity's row in ``ida``.
        r: the generator of the paraphrase, synonyms and omissions.
        p: probability of omitting each optional attribute (build, colours, texture, bag, hat).

    Example:
        >>> from reid_example.data.attributes import identity_attributes
        >>> ida = identity_attributes(0, 3)
        >>> text = caption(ida, 1, np.random.default_rng(0), p=0.0)
        >>> PALETTE_NAMES[int(ida["upper"][1])] in text, text.endswith(".")
        (True, True)
    """

    def pick(options: Sequence[str]) -> str:
        return options[int(r.integers(len(options)))]

    def keep() -> bool:
        return bool(r.random() >= p)

    build: list[str] = []
    if keep():
        h = float(ida["height"][i])
        build.append("tall" if h > 0.89 else "short" if h < 0.83 else "")
    if keep():
        s = float(ida["shoulder"][i])
        build.append("broad" if s > 0.122 else "slim" if s < 0.1 else "")
    build_s = " ".join(x for x in build if x)
    person = pick(_PERSON)
    subject = f"a {build_s} {person}" if build_s else f"a {person}"

    sleeve = int(ida["sleeve"][i])
    up = pick(_UPPER_NOUNS[sleeve])
    up_col = PALETTE_NAMES[int(ida["upper"][i])] + " " if keep() else ""
    pattern = int(ida["pattern"][i])
    if pattern and keep():
        phrase = pick(_PATTERN_PHRASES[pattern])
        if pattern in (1, 2, 3) and r.random() < 0.6:
            phrase = phrase.replace("stripes", f"{_FREQ_WORDS[int(ida['freq'][i])]} stripes")
        upper = (
            f"{up_col}{phrase} {up}"
            if "striped" in phrase or (pattern == 4 and " " not in phrase)
            else f"{up_col}{up} {phrase}"
        )
    else:
        upper = f"{up_col}{'plain ' if pattern == 0 and r.random() < 0.3 else ''}{up}"
    lt = int(ida["lower_type"][i])
    lower = f"{PALETTE_NAMES[int(ida['lower'][i])] + ' ' if keep() else ''}{pick(_LOWER_NOUNS[lt])}"
    extras: list[str] = []
    bag = int(ida["bag"][i])
    if bag and keep():
        side = f" on the {_BAG_SIDES[bag]} side" if r.random() < 0.5 else ""
        extras.append(f"carrying a {pick(('bag', 'handbag', 'shoulder bag'))}{side}")
    if bool(ida["hat"][i]) and keep():
        hat_col = PALETTE_NAMES[int(ida["hat_colour"][i])] + " " if r.random() < 0.5 else ""
        extras.append(f"wearing a {hat_col}{pick(('hat', 'cap'))}")
    templates = (
        "{s} wearing a {u} and {l}{x}.",
        "{s} in a {u} with {l}{x}.",
        "the {p} wears a {u} and {l}{x}.",
        "{s} dressed in {l} and a {u}{x}.",
    )
    t = pick(templates)
    x = "".join(f", {e}" for e in extras)
    text = t.format(s=subject, u=upper, l=lower, x=x, p=(build_s + " " + person).strip())
    return " ".join(text.split())
