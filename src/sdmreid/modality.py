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
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping
from typing import Any, Union, overload

import numpy as np
import numpy.typing as npt
import torch

from sdmreid._validation import check_has_data

__all__ = [
    "MODALITY_ALIASES",
    "Modality",
    "ModalityLike",
    "as_modality_array",
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
