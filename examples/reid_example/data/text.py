"""A tiny deterministic word tokenizer for the TEXT modality.

The vocabulary is fixed and built in (no download, no training): special tokens first, then the
words the synthetic captions use, then a small set of common English words seen in person
descriptions (CUHK-PEDES style). Ids therefore never change between runs or machines.

Tokenisation lower-cases the text, splits it into runs of ASCII letters (``t-shirt`` becomes
``t``, ``shirt``; digits and punctuation are dropped) and maps each word to its id, unknown words
to :attr:`WordTokenizer.unk_id`. :meth:`WordTokenizer.encode` prepends a ``<bos>`` token by
default, so every encoded caption has at least one token and position 0 can serve as a
class-token slot.

Any tokenizer with the :class:`CaptionTokenizer` shape can take its place (the datasets and the
collate function read only ``encode`` and ``vocab_size``): a backbone's own tokenizer, e.g. CLIP's
for an ``hf:`` backbone, enters the data pipeline that way.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Protocol

import torch

__all__ = ["BUILTIN_VOCABULARY", "CaptionTokenizer", "WordTokenizer"]

_SPECIALS = ("<pad>", "<unk>", "<bos>", "<eos>")

_WORD_TEXT = """
a an the this that these those is are was were be being been has have had with without and or
but of in on at to from by for over under near while who which its his her their he she they it
one two three person pedestrian man woman boy girl lady guy someone individual people somebody
figure adult child kid young old elderly tall short slim thin slender broad wide stocky heavy
medium average build height long legs legged body shoulders shoulder head face hair wearing
wears wore dressed dress has on in carrying carries holding holds walking walks standing stands
going goes looking seen visible appears seems shirt tshirt t jacket coat sweater hoodie top
blouse vest upper garment clothes clothing outfit trousers pants jeans shorts skirt lower
bottom leggings shoes boots sneakers socks hat cap beanie helmet bag backpack handbag purse
satchel shoulderbag strap umbrella phone plain solid striped stripes stripe stripy horizontal
horizontally vertical vertically diagonal diagonally checked checkered plaid pattern patterned
pinstriped dotted dots spotted thick fine narrow bold faint left right side front back hand arm
arms black white grey gray silver dark light pale bright deep red maroon crimson pink rose
orange brown yellow gold beige khaki olive green lime teal cyan turquoise blue navy sky purple
violet magenta lavender colored coloured color colour also too very quite rather slightly
fairly across down up along
"""
_WORDS = _WORD_TEXT.split()


def _dedupe(words: Iterable[str]) -> tuple[str, ...]:
    seen: dict[str, None] = {}
    for w in words:
        seen.setdefault(w, None)
    return tuple(seen)


#: The built-in vocabulary in id order (``<pad>`` = 0, ``<unk>`` = 1, ``<bos>`` = 2, ``<eos>`` = 3).
BUILTIN_VOCABULARY: tuple[str, ...] = _dedupe((*_SPECIALS, *_WORDS))

_WORD_RE = re.compile(r"[a-z]+")


class CaptionTokenizer(Protocol):
    """What the data pipeline reads from a caption tokenizer.

    ``encode(text, max_len)`` returns a 1-D ``int64`` tensor of at most ``max_len`` ids, none of
    them ``0``: the collate function pads with ``0`` and models read ``0`` as padding.
    ``vocab_size`` is one more than the largest id ``encode`` can return (the size of an
    embedding table indexed by the ids).

    Example:
        >>> tok: CaptionTokenizer = WordTokenizer()
        >>> tok.encode("a red coat", 8).tolist(), tok.vocab_size > 3
        ([2, 4, 196, 116], True)
    """

    @property
    def vocab_size(self) -> int: ...

    def encode(self, text: str, max_len: int = 64) -> torch.Tensor: ...


class WordTokenizer:
    """Whitespace/punctuation word tokenizer over a fixed vocabulary.

    Args:
        vocabulary: the words in id order; the first four must be the special tokens
            ``<pad>``, ``<unk>``, ``<bos>``, ``<eos>``. Defaults to :data:`BUILTIN_VOCABULARY`.

    Example:
        >>> tok = WordTokenizer()
        >>> tok.pad_id, tok.unk_id, tok.bos_id
        (0, 1, 2)
        >>> ids = tok.encode("A tall person in a RED striped shirt, zorblax!", max_len=16)
        >>> ids.dtype, int(ids[0]) == tok.bos_id, tok.unk_id in ids.tolist()
        (torch.int64, True, True)
        >>> tok.decode(ids)
        '<bos> a tall person in a red striped shirt <unk>'
        >>> tok.encode("one two three four", max_len=3).tolist() == tok.encode("one two").tolist()
        True
    """

    pad_id: int = 0
    unk_id: int = 1
    bos_id: int = 2
    eos_id: int = 3

    def __init__(self, vocabulary: Iterable[str] | None = None) -> None:
        vocab = BUILTIN_VOCABULARY if vocabulary is None else tuple(vocabulary)
        if vocab[: len(_SPECIALS)] != _SPECIALS:
            raise ValueError(
                f"vocabulary must start with the special tokens {list(_SPECIALS)}, "
                f"got {list(vocab[: len(_SPECIALS)])}"
            )
        if len(set(vocab)) != len(vocab):
            raise ValueError("vocabulary must not contain duplicate words")
        self._vocab = vocab
        self._ids = {w: i for i, w in enumerate(vocab)}

    @property
    def vocab_size(self) -> int:
        """Number of ids (the embedding table size)."""
        return len(self._vocab)

    def tokenize(self, text: str) -> list[str]:
        """Split ``text`` into lower-case words (runs of ASCII letters)."""
        if not isinstance(text, str):
            raise TypeError(f"text must be a str, got {type(text).__name__}")
        return _WORD_RE.findall(text.lower())

    def encode(self, text: str, max_len: int = 64, *, add_bos: bool = True) -> torch.Tensor:
        """Encode ``text`` into a 1-D ``int64`` tensor of at most ``max_len`` ids (no padding).

        Args:
            text: the caption.
            max_len: maximum number of ids returned, ``<bos>`` included; longer captions are
                truncated at the end.
            add_bos: prepend ``<bos>`` (guarantees a non-empty result).

        Raises:
            ValueError: ``max_len < 1``.
        """
        if isinstance(max_len, bool) or not isinstance(max_len, int) or max_len < 1:
            raise ValueError(f"max_len must be an int >= 1, got {max_len!r}")
        ids = [self._ids.get(w, self.unk_id) for w in self.tokenize(text)]
        if add_bos:
            ids.insert(0, self.bos_id)
        if not ids:
            ids = [self.unk_id]
        return torch.tensor(ids[:max_len], dtype=torch.int64)

    def decode(self, ids: torch.Tensor | Iterable[int]) -> str:
        """Map ids back to words (padding dropped), joined by spaces."""
        values = ids.tolist() if isinstance(ids, torch.Tensor) else list(ids)
        return " ".join(self._vocab[i] for i in values if i != self.pad_id)

    def __len__(self) -> int:
        return self.vocab_size
