"""The modality vocabulary shared by every sdmreid component.

One enum, :class:`Modality`, names the five modalities; :func:`parse_modality` turns one value of
any accepted form into it, and :func:`as_modality_array` / :func:`as_modality_tensor` do the same
for whole sequences, arrays or tensors at once (vectorised: each *distinct* string is parsed once).

Accepted forms of one modality:

* a :class:`Modality` member;
* its integer value (``0``..``4``; Python ``int``, NumPy integer, or a 0-dim integer tensor);
* a case-insensitive ASCII alias:

  ======== =========================================
  member   aliases
  ======== =========================================
  RGB      ``rgb``, ``vis``, ``visible``
  NIR      ``nir``, ``ir``, ``infrared``, ``thermal``
  SKETCH   ``sk``, ``sketch``
  CPENCIL  ``cp``, ``cpencil``, ``colorpencil``
  TEXT     ``text``, ``txt``, ``caption``
  ======== =========================================

"Non-RGB" means any modality other than :attr:`Modality.RGB`.

An item may also carry *several* modalities (a training sample with an RGB image, its caption and
the identity's NIR view): :func:`as_modality_sets` reads one modality *set* per item into a
``[n, len(Modality)]`` bool array (column ``i`` is ``Modality(i)``), the form the samplers and
:func:`sdmreid.samplers.coverage_report` work with.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Union, overload

import numpy as np
import numpy.typing as npt
import torch

from sdmreid._validation import check_bool, check_has_data, int64_array

__all__ = [
    "MODALITY_ALIASES",
    "Modality",
    "ModalityLike",
    "as_modality_array",
    "as_modality_sets",
    "as_modality_tensor",
    "is_non_rgb",
    "is_rgb",
    "parse_modality",
]


class Modality(enum.IntEnum):
    """The five modalities of cross-modal person re-identification.

    Example:
        >>> from sdmreid import Modality
        >>> Modality.NIR, int(Modality.TEXT)
        (<Modality.NIR: 1>, 4)
        >>> Modality.RGB == 0
        True
    """

    RGB = 0
    NIR = 1
    SKETCH = 2
    CPENCIL = 3
    TEXT = 4


#: Every accepted alias (lower case) and the member it names.
MODALITY_ALIASES: Mapping[str, Modality] = {
    "rgb": Modality.RGB,
    "vis": Modality.RGB,
    "visible": Modality.RGB,
    "nir": Modality.NIR,
    "ir": Modality.NIR,
    "infrared": Modality.NIR,
    "thermal": Modality.NIR,
    "sk": Modality.SKETCH,
    "sketch": Modality.SKETCH,
    "cp": Modality.CPENCIL,
    "cpencil": Modality.CPENCIL,
    "colorpencil": Modality.CPENCIL,
    "text": Modality.TEXT,
    "txt": Modality.TEXT,
    "caption": Modality.TEXT,
}

#: One modality in any accepted form.
ModalityLike = Union[Modality, int, str, np.integer[Any], torch.Tensor]  # noqa: UP007

_NUM_MODALITIES = len(Modality)


def _accepted_names() -> str:
    return (
        ", ".join(f"{m.name}={int(m)}" for m in Modality)
        + "; aliases: "
        + ", ".join(sorted(MODALITY_ALIASES))
    )


def _parse_int(value: int, original: object) -> Modality:
    if 0 <= value < _NUM_MODALITIES:
        return Modality(value)
    raise ValueError(
        f"unknown modality {original!r}: integer codes must be in 0..{_NUM_MODALITIES - 1}; "
        f"accepted: {_accepted_names()}"
    )


def _parse_str(value: str) -> Modality:
    key = value.lower() if value.isascii() else None
    member = MODALITY_ALIASES.get(key) if key is not None else None
    if member is None:
        raise ValueError(
            f"unknown modality {value!r} (matched case-insensitively); "
            f"accepted: {_accepted_names()}"
        )
    return member


def parse_modality(value: object) -> Modality:
    """Return the :class:`Modality` named by ``value``.

    Args:
        value: a :class:`Modality`, its integer code (``int``, NumPy integer or 0-dim integer
            tensor), or a case-insensitive ASCII alias such as ``"IR"`` or ``"visible"``.

    Returns:
        The member.

    Raises:
        ValueError: ``value`` is an unknown name or an out-of-range code (the message lists the
            accepted names).
        TypeError: ``value`` is of a type that cannot name a modality (``bool``, ``float``, ...).

    Example:
        >>> from sdmreid import parse_modality
        >>> parse_modality("Thermal"), parse_modality(3), parse_modality("txt")
        (<Modality.NIR: 1>, <Modality.CPENCIL: 3>, <Modality.TEXT: 4>)
        >>> parse_modality("depth")
        Traceback (most recent call last):
        ...
        ValueError: unknown modality 'depth' (matched case-insensitively); accepted: ...
    """
    if isinstance(value, Modality):
        return value
    if isinstance(value, (bool, np.bool_)):
        raise TypeError(
            f"modality must be a Modality, int code or alias string, got bool {value!r}"
        )
    if isinstance(value, str):
        return _parse_str(value)
    if isinstance(value, (int, np.integer)):
        return _parse_int(int(value), value)
    if isinstance(value, torch.Tensor):
        check_has_data(value, "modality")
        if value.ndim != 0 or value.dtype.is_floating_point or value.dtype.is_complex:
            raise TypeError(
                "modality tensor must be a 0-dim integer tensor, got "
                f"shape {tuple(value.shape)} dtype {value.dtype}"
            )
        if value.dtype == torch.bool:
            raise TypeError(
                "modality must be a Modality, int code or alias string, got a bool tensor"
            )
        return _parse_int(int(value.item()), value)
    raise TypeError(
        f"modality must be a Modality, int code or alias string, got {type(value).__name__} "
        f"{value!r}"
    )


def _check_codes(codes: npt.NDArray[np.int64], name: str) -> npt.NDArray[np.int64]:
    if codes.size:
        bad = (codes < 0) | (codes >= _NUM_MODALITIES)
        if bad.any():
            first = int(codes[np.argmax(bad)])
            raise ValueError(
                f"{name} contains unknown modality code {first}: codes must be in "
                f"0..{_NUM_MODALITIES - 1}; accepted: {_accepted_names()}"
            )
    return codes


def as_modality_array(
    values: Iterable[object] | npt.ArrayLike | torch.Tensor, *, name: str = "modalities"
) -> npt.NDArray[np.int64]:
    """Convert a 1-D collection of modalities of mixed forms into an ``int64`` NumPy array.

    Integer arrays and tensors are validated without a Python loop; string/object collections
    parse each *distinct* value once.

    Args:
        values: a sequence, NumPy array or tensor of modalities (any form accepted by
            :func:`parse_modality`), or a single modality (treated as a length-1 sequence).
        name: the argument name used in error messages.

    Returns:
        A 1-D ``int64`` array of :class:`Modality` codes.

    Raises:
        ValueError: an unknown modality, or ``values`` is not 1-D.
        TypeError: an element of a type that cannot name a modality.

    Example:
        >>> from sdmreid.modality import as_modality_array
        >>> as_modality_array(["rgb", "IR", 2, "caption"])
        array([0, 1, 2, 4])
    """
    if isinstance(values, torch.Tensor):
        check_has_data(values, name)
        if values.dtype == torch.bool or values.dtype.is_floating_point or values.dtype.is_complex:
            raise TypeError(f"{name} tensor must have an integer dtype, got {values.dtype}")
        values_np: npt.NDArray[Any] = values.detach().to("cpu", torch.int64).reshape(-1).numpy()
        if values.ndim > 1:
            raise ValueError(f"{name} must be 1-D, got shape {tuple(values.shape)}")
        return _check_codes(values_np.astype(np.int64, copy=False), name)
    if isinstance(values, (str, Modality, int, np.integer)):
        return np.asarray([int(parse_modality(values))], dtype=np.int64)
    if not isinstance(values, np.ndarray):
        if not isinstance(values, (list, tuple)):
            values = list(values)  # type: ignore[arg-type]
        if all(
            isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_)) for v in values
        ):
            try:
                arr: npt.NDArray[Any] = np.asarray(values, dtype=np.int64).reshape(-1)
            except OverflowError:  # a code beyond int64 cannot name a modality either
                ints = [int(v) for v in values if isinstance(v, (int, np.integer))]
                first = next(v for v in ints if not -(2**63) <= v < 2**63)
                raise ValueError(
                    f"{name} contains unknown modality code {first}: codes must be in "
                    f"0..{_NUM_MODALITIES - 1}; accepted: {_accepted_names()}"
                ) from None
            return _check_codes(arr, name)
        arr = np.empty(len(values), dtype=object)
        arr[:] = list(values)
    else:
        arr = values
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {arr.shape}")
    if arr.dtype.kind in "iu":
        return _check_codes(arr.astype(np.int64, copy=False), name)
    if arr.dtype.kind == "b" or arr.dtype.kind in "fc":
        raise TypeError(f"{name} must hold modality codes or names, got dtype {arr.dtype}")
    if arr.size == 0:
        return np.zeros(0, dtype=np.int64)
    # Parse each distinct value once; key by (type, value) so that e.g. True and 1 stay apart.
    table: dict[tuple[type, object], int] = {}
    out = np.empty(arr.size, dtype=np.int64)
    for i, v in enumerate(arr.tolist()):
        try:
            key: tuple[type, object] | None = (type(v), v)
            code = table.get(key)  # type: ignore[arg-type]
        except TypeError:  # unhashable element: parse it (and fail) without caching
            key, code = None, None
        if code is None:
            code = int(parse_modality(v))
            if key is not None:
                table[key] = code
        out[i] = code
    return out


def as_modality_tensor(
    values: Iterable[object] | npt.ArrayLike | torch.Tensor,
    *,
    device: torch.device | str | None = None,
    name: str = "modalities",
) -> torch.Tensor:
    """Like :func:`as_modality_array` but returns an ``int64`` tensor.

    An integer tensor input keeps its device unless ``device`` is given.

    Example:
        >>> from sdmreid.modality import as_modality_tensor
        >>> as_modality_tensor(("vis", "nir"))
        tensor([0, 1])
    """
    if isinstance(values, torch.Tensor):
        check_has_data(values, name)
    if (
        isinstance(values, torch.Tensor)
        and not values.dtype.is_floating_point
        and values.dtype
        not in (
            torch.bool,
            torch.complex64,
            torch.complex128,
        )
    ):
        if values.ndim > 1:
            raise ValueError(f"{name} must be 1-D, got shape {tuple(values.shape)}")
        codes = values.reshape(-1).to(torch.int64)
        if codes.numel() and bool(((codes < 0) | (codes >= _NUM_MODALITIES)).any()):
            _check_codes(codes.cpu().numpy(), name)
        return codes.to(device) if device is not None else codes
    return torch.from_numpy(as_modality_array(values, name=name)).to(device)


@overload
def is_rgb(values: torch.Tensor) -> torch.Tensor: ...
@overload
def is_rgb(values: Iterable[object] | npt.ArrayLike) -> npt.NDArray[np.bool_]: ...
def is_rgb(values: Iterable[object] | npt.ArrayLike | torch.Tensor) -> Any:
    """Boolean mask of the RGB entries.

    Returns a ``torch.bool`` tensor on the input's device for tensor input, otherwise a NumPy
    boolean array.

    Example:
        >>> from sdmreid.modality import is_rgb
        >>> is_rgb(["rgb", "ir", "visible"])
        array([ True, False,  True])
    """
    if isinstance(values, torch.Tensor):
        return as_modality_tensor(values) == int(Modality.RGB)
    return as_modality_array(values) == int(Modality.RGB)


@overload
def is_non_rgb(values: torch.Tensor) -> torch.Tensor: ...
@overload
def is_non_rgb(values: Iterable[object] | npt.ArrayLike) -> npt.NDArray[np.bool_]: ...
def is_non_rgb(values: Iterable[object] | npt.ArrayLike | torch.Tensor) -> Any:
    """Boolean mask of the non-RGB entries (the complement of :func:`is_rgb`).

    Example:
        >>> from sdmreid.modality import is_non_rgb
        >>> is_non_rgb([0, 1, 4])
        array([False,  True,  True])
    """
    if isinstance(values, torch.Tensor):
        return as_modality_tensor(values) != int(Modality.RGB)
    return as_modality_array(values) != int(Modality.RGB)


# ----------------------------------------------------------------------------------------------
# modality sets: several modalities per item
# ----------------------------------------------------------------------------------------------

_COLUMNS = ", ".join(f"{i}={m.name}" for i, m in enumerate(Modality))
_FORMS = (
    "one modality per item (a 1-D sequence, array or tensor), per-item collections such as "
    "[('rgb', 'text'), {'nir'}], a [n, 5] bool array or tensor, or bitmasks with bitmask=True"
)


def _bits_to_sets(bits: npt.NDArray[np.int64]) -> npt.NDArray[np.bool_]:
    """``[n]`` bitmasks (bit ``i`` = ``Modality(i)``) → ``[n, 5]`` bool array."""
    columns = np.arange(_NUM_MODALITIES, dtype=np.int64)
    out: npt.NDArray[np.bool_] = ((bits[:, None] >> columns) & 1).astype(np.bool_)
    return out


def _check_sets(sets: npt.NDArray[Any], name: str) -> npt.NDArray[np.bool_]:
    """Validate a 2-D mask: bool dtype, one column per modality, no empty row."""
    if sets.dtype != np.bool_:
        raise ValueError(
            f"{name}: a 2-D array must be a [n, {_NUM_MODALITIES}] bool mask (column i is "
            f"Modality(i): {_COLUMNS}), got dtype {sets.dtype} (0/1 integers could be flags or "
            f"codes); pass {_FORMS}"
        )
    if sets.shape[1] != _NUM_MODALITIES:
        raise ValueError(
            f"{name} must have {_NUM_MODALITIES} columns, one per modality ({_COLUMNS}), "
            f"got shape {tuple(sets.shape)}"
        )
    empty = ~sets.any(axis=1)
    if empty.any():
        raise ValueError(
            f"{name}[{int(np.argmax(empty))}] has no modality (an all-False row): every item "
            "needs at least one"
        )
    return np.array(sets, dtype=np.bool_, copy=True)


def _check_bitmasks(values: object, name: str) -> npt.NDArray[np.bool_]:
    if isinstance(values, torch.Tensor):
        check_has_data(values, name)
        if values.dtype == torch.bool or values.dtype.is_floating_point or values.dtype.is_complex:
            raise TypeError(f"{name} bitmasks must be integers, got dtype {values.dtype}")
        arr: npt.NDArray[Any] = values.detach().to("cpu", torch.int64).numpy()
    else:
        if isinstance(values, (list, tuple)) and any(
            isinstance(v, (bool, np.bool_)) for v in values
        ):
            raise TypeError(f"{name} bitmasks must be integers, got a bool")
        arr = int64_array(values, name)
        if arr.size == 0 and arr.ndim == 1:
            arr = arr.astype(np.int64)
        if arr.dtype.kind not in "iu":
            raise TypeError(f"{name} bitmasks must be integers, got dtype {arr.dtype}")
    if arr.ndim != 1:
        raise ValueError(f"{name} bitmasks must be 1-D (one per item), got shape {arr.shape}")
    bits = arr.astype(np.int64, copy=False)
    if bits.size:
        top = 2**_NUM_MODALITIES - 1
        bad = (bits < 1) | (bits > top)
        if bad.any():
            i = int(np.argmax(bad))
            what = "an empty modality set (bitmask 0)" if bits[i] == 0 else f"bitmask {bits[i]}"
            raise ValueError(
                f"{name}[{i}] is {what}: bitmasks must be in 1..{top} (bit i is Modality(i): "
                f"{_COLUMNS})"
            )
    return _bits_to_sets(bits)


def _is_single(value: object) -> bool:
    """Whether ``value`` names one modality (rather than holding a collection of them)."""
    if isinstance(value, torch.Tensor):
        return value.ndim == 0
    return isinstance(value, (str, int, np.integer))


def _named(error: ValueError | TypeError, name: str) -> ValueError | TypeError:
    """``error`` with ``name`` in front of its message, unless the message starts with it."""
    message = str(error)
    if message.startswith(name):
        return error
    return type(error)(f"{name}: {message}")


def _item_bits(item: object, name: str) -> int:
    """Bitmask of one item's modalities (a single modality or a collection of them)."""
    try:
        return _parse_item_bits(item, name)
    except (ValueError, TypeError) as error:
        raise _named(error, name) from None


def _parse_item_bits(item: object, name: str) -> int:
    if _is_single(item):
        return 1 << int(parse_modality(item))
    if not isinstance(item, (list, tuple, set, frozenset, np.ndarray, torch.Tensor)):
        raise TypeError(
            f"{name} must be a modality or a collection of modalities (list, tuple, set, "
            f"array), got {type(item).__name__} {item!r}"
        )
    codes = as_modality_array(item, name=name)
    if codes.size == 0:
        raise ValueError(f"{name} is an empty modality set: every item needs at least one")
    if np.unique(codes).size != codes.size:
        raise ValueError(
            f"{name} names a modality more than once ({codes.tolist()} as codes); a 0/1 row "
            f"would read as the codes 0 and 1, so pass 0/1 flags as a [n, {_NUM_MODALITIES}] "
            "bool array"
        )
    return int(np.bitwise_or.reduce(np.left_shift(1, codes)))


def _names_one_way(kind: type, known: dict[type, bool] = {}) -> bool:  # noqa: B006
    """Whether equal values of ``kind`` name one modality: strings and integers, not bools.

    ``True == 1`` and ``1.0 == 1``, so a cache keyed by such values would let a refused value
    hit the entry of an accepted one. ``known`` remembers the answer per type.
    """
    answer = known.get(kind)
    if answer is None:
        answer = issubclass(kind, (str, int, np.integer)) and not issubclass(kind, (bool, np.bool_))
        known[kind] = answer
    return answer


def _cache_key(item: object) -> object | None:
    """A key under which ``item``'s bitmask may be cached, or ``None`` (parse it every time)."""
    if isinstance(item, (tuple, list, set, frozenset)):
        if not all(map(_names_one_way, set(map(type, item)))):
            return None
        if isinstance(item, list):
            return tuple(item)
        return frozenset(item) if isinstance(item, set) else item
    return item if _names_one_way(type(item)) else None


def _per_item_sets(items: Sequence[object], name: str) -> npt.NDArray[np.bool_]:
    """Per-item modalities (single ones or collections), each distinct item parsed once."""
    bits = np.empty(len(items), dtype=np.int64)
    table: dict[object, int] = {}
    for i, item in enumerate(items):
        key = _cache_key(item)
        code = table.get(key) if key is not None else None
        if code is None:
            code = _item_bits(item, f"{name}[{i}]")
            if key is not None:
                table[key] = code
        bits[i] = code
    return _bits_to_sets(bits)


def as_modality_sets(
    values: Iterable[object] | npt.ArrayLike | torch.Tensor,
    *,
    bitmask: bool = False,
    name: str = "modalities",
) -> npt.NDArray[np.bool_]:
    """Read the modality *set* of every item into an ``[n, len(Modality)]`` bool array.

    Column ``i`` of the result is :class:`Modality` ``i``: ``out[j, Modality.TEXT]`` says whether
    item ``j`` carries a caption. Accepted forms of ``values``:

    * a ``[n, 5]`` **bool** array or tensor (the primary form, returned as a copy);
    * **one modality per item**, any form :func:`as_modality_array` accepts (a 1-D integer
      array or tensor keeps meaning one code per item);
    * a sequence of **per-item collections** (list, tuple, set, array) of modalities in any form
      :func:`parse_modality` accepts, e.g. ``[("rgb", "text"), {"nir"}, Modality.SKETCH]``;
      single modalities and collections may be mixed;
    * ``bitmask=True``: one integer per item, bit ``i`` set when the item carries
      ``Modality(i)`` (``1..31``).

    Arrays, tensors and bitmasks are converted without a Python loop; per-item collections are
    read one item at a time (each distinct item parsed once; about a second per million items).

    Args:
        values: the items' modalities, in one of the forms above.
        bitmask: read a 1-D integer ``values`` as bitmasks instead of modality codes.
        name: the argument name used in error messages.

    Returns:
        A new ``[n, 5]`` bool array; every row has at least one ``True``.

    Raises:
        ValueError: an unknown modality, an item with no modality (empty collection, all-False
            row, bitmask 0), a collection naming a modality twice, a 2-D array that is not
            bool or does not have 5 columns, a bitmask outside ``1..31``, or more than 2
            dimensions.
        TypeError: an element of a type that cannot name a modality (``bool``, ``float``, ...),
            or ``bitmask`` is not a bool.

    Example:
        >>> from sdmreid.modality import as_modality_sets
        >>> as_modality_sets([("rgb", "caption"), "ir", {0, 2}]).astype(int)
        array([[1, 0, 0, 0, 1],
               [0, 1, 0, 0, 0],
               [1, 0, 1, 0, 0]])
        >>> as_modality_sets([0, 4]).astype(int)  # one code per item
        array([[1, 0, 0, 0, 0],
               [0, 0, 0, 0, 1]])
        >>> as_modality_sets([17, 2], bitmask=True).astype(int)  # 17 = RGB | TEXT
        array([[1, 0, 0, 0, 1],
               [0, 1, 0, 0, 0]])
        >>> as_modality_sets([("rgb", "text"), ()])
        Traceback (most recent call last):
        ...
        ValueError: modalities[1] is an empty modality set: every item needs at least one
    """
    check_bool("bitmask", bitmask)
    if bitmask:
        if (isinstance(values, (np.ndarray, torch.Tensor)) and values.ndim == 2) or isinstance(
            values, (str, Modality)
        ):
            raise ValueError(f"{name}: bitmask=True expects one integer per item (1-D)")
        return _check_bitmasks(values, name)
    if isinstance(values, torch.Tensor):
        check_has_data(values, name)
        if values.ndim == 2:
            return _check_sets(values.detach().cpu().numpy(), name)
    elif isinstance(values, np.ndarray):
        if values.ndim == 2:
            return _check_sets(values, name)
        if values.ndim == 1 and values.dtype == object:
            return _per_item_sets(values.tolist(), name)
    elif not isinstance(values, (str, int, np.integer)):
        items = values if isinstance(values, (list, tuple)) else list(values)  # type: ignore[arg-type]
        if not all(map(_is_single, items)):
            return _per_item_sets(items, name)
        values = items
    if isinstance(values, (np.ndarray, torch.Tensor)) and values.ndim > 2:
        raise ValueError(
            f"{name} must be 1-D (one entry per item) or a [n, {_NUM_MODALITIES}] bool array, "
            f"got shape {tuple(values.shape)}"
        )
    try:
        codes = as_modality_array(values, name=name)
    except (ValueError, TypeError) as error:
        raise _named(error, name) from None
    # row `code` of the identity matrix is the one-hot set of that code
    out: npt.NDArray[np.bool_] = np.take(np.eye(_NUM_MODALITIES, dtype=np.bool_), codes, axis=0)
    return out
