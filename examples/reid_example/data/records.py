"""The record type shared by every data source, label remapping, image decoding and the
dataset that turns records into training samples.

A :class:`ReIDRecord` names one sample: an image ``path`` (image modalities) or a caption
``text`` (TEXT), the ``identity`` as the data set numbers it, the contiguous class id ``label``
used by the classifier (``-1`` until :func:`remap_labels` assigns one), its
:class:`sdmreid.Modality` code, a ``camera`` id (``0`` = none/unknown) and the ``split`` name.

:class:`RecordDataset` exposes ``labels``, ``identities``, ``modalities`` and ``cameras`` as
``int64`` NumPy arrays so samplers and evaluators are built without touching a single item.
``labels`` are always ``label_map[identity]``: each dataset numbers its own identities
``0..num_classes-1`` (sorted by original id) unless a ``label_map`` is passed.

Every ``__getitem__`` returns the sample dict the collate function expects::

    {"image": FloatTensor[3, H, W] | None, "tokens": LongTensor[L] | None,
     "label": int, "modality": int, "camera": int, "index": int}

Single-channel images (NIR, thermal, sketches) are replicated to three channels on decoding.

The layout loaders decode every listed image up front, so a dataset normally never meets a file
it cannot decode. When it does (a loader run with ``verify=False``, or a file damaged after
loading), ``on_error`` decides: ``"raise"`` stops with :class:`ImageDecodeError` naming the file;
``"skip"`` decodes another image of the same identity and modality in its place (the next one in
record order that decodes, so the choice does not depend on DataLoader workers) and counts the
file in ``decode_failures``, which the main process reads across worker processes.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
import torch
from torch.utils.data import Dataset

from reid_example.data.decoded_cache import DecodedImageCache
from reid_example.data.text import CaptionTokenizer, WordTokenizer
from reid_example.data.transforms import Transform, eval_transform, sample_generator
from sdmreid.modality import Modality

__all__ = [
    "EpochMixin",
    "ImageDecodeError",
    "OnError",
    "ReIDRecord",
    "RecordDataset",
    "Sample",
    "build_label_map",
    "check_on_error",
    "load_image",
    "remap_labels",
]

#: One item as returned by the datasets' ``__getitem__``.
Sample = dict[str, Any]

#: What to do with a file that cannot be read: stop with an error naming it, or skip it and
#: count it.
OnError = Literal["raise", "skip"]

_INT64_MAX = 2**63 - 1


def check_on_error(on_error: object) -> None:
    """Refuse an ``on_error`` other than ``"raise"`` or ``"skip"``."""
    if not isinstance(on_error, str) or on_error not in ("raise", "skip"):
        raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")


def _int_field(name: str, value: object, minimum: int) -> int:
    """``value`` as a plain ``int`` in ``[minimum, 2**63 - 1]``: every id ends up in an int64
    array, so a larger one is refused here, with its name, rather than deep in NumPy."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an int, got {type(value).__name__} {value!r}")
    v = int(value)
    if v < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {v}")
    if v > _INT64_MAX:
        raise ValueError(f"{name} must fit in int64 (at most 2**63 - 1), got {v}")
    return v


@dataclasses.dataclass(frozen=True)
class ReIDRecord:
    """One sample of a ReID data set.

    Integer fields accept Python and NumPy integers (stored as ``int``) and must fit in int64.

    Attributes:
        path: image file, a non-empty string (``None`` for TEXT records).
        text: caption, a non-empty string (``None`` for image records).
        identity: person id as numbered by the data set, ``>= 0``.
        label: contiguous class id, ``>= 0`` (``-1`` when not assigned, e.g. test identities).
        modality: :class:`sdmreid.Modality` code.
        camera: camera id, ``>= 0``; ``0`` when the modality has none (text, sketches).
        split: ``"train"``, ``"val"`` or ``"test"`` (any non-empty name for records built in
            code; the layout loaders and :func:`~reid_example.data.splits.make_splits` accept
            only those three).

    Raises:
        TypeError: an integer field is not an integer (``bool`` included), or ``path``,
            ``text`` or ``split`` is not a string.
        ValueError: a field is out of range, or the record has no image path (image
            modalities) or no caption (TEXT).

    Example:
        >>> r = ReIDRecord(path="cam3/0001/0001.jpg", text=None, identity=1, label=-1,
        ...                modality=1, camera=3, split="test")
        >>> r.modality == Modality.NIR
        True
    """

    path: str | None
    text: str | None
    identity: int
    label: int
    modality: int
    camera: int
    split: str

    def __post_init__(self) -> None:
        # validate every field before normalising any of them
        ints = {
            "identity": _int_field("identity", self.identity, 0),
            "label": _int_field("label", self.label, -1),
            "modality": _int_field("modality", self.modality, 0),
            "camera": _int_field("camera", self.camera, 0),
        }
        if ints["modality"] >= len(Modality):
            raise ValueError(f"modality must be a Modality code 0..4, got {self.modality!r}")
        for name in ("path", "text", "split"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, str):
                raise TypeError(f"{name} must be a str, got {type(value).__name__} {value!r}")
        if not self.split:
            raise ValueError(f"split must be a non-empty str, got {self.split!r}")
        if ints["modality"] == int(Modality.TEXT):
            if not self.text or not self.text.strip():
                raise ValueError(
                    f"a TEXT record needs a non-empty caption (identity {ints['identity']}), "
                    f"got text={self.text!r}"
                )
        elif not self.path:
            raise ValueError(
                f"an image record needs a non-empty path (identity {ints['identity']}), "
                f"got path={self.path!r}"
            )
        for name, value in ints.items():
            object.__setattr__(self, name, value)


class ImageDecodeError(OSError):
    """An image file is missing or cannot be decoded; the message names the file.

    Example:
        >>> try:
        ...     load_image("/nonexistent/x.png")
        ... except ImageDecodeError as err:
        ...     print(err)
        image file not found: /nonexistent/x.png
    """


def load_image(path: str | Path) -> torch.Tensor:
    """Decode an image file with Pillow into a ``uint8`` ``[3, H, W]`` tensor.

    Grey-scale, palette and RGBA images are converted to RGB (grey replicated to 3 channels).

    Raises:
        ImageDecodeError: the file is missing, unreadable or not a decodable image (the
            message names the file).

    Example:
        >>> import tempfile, os
        >>> from PIL import Image
        >>> d = tempfile.mkdtemp(); p = os.path.join(d, "x.png")
        >>> Image.new("L", (4, 6), 200).save(p)
        >>> img = load_image(p); img.shape, img.dtype, int(img[2, 0, 0])
        (torch.Size([3, 6, 4]), torch.uint8, 200)
    """
    from PIL import Image

    try:
        with Image.open(path) as im:
            rgb = im.convert("RGB")
            arr = np.asarray(rgb, dtype=np.uint8)
    except FileNotFoundError as exc:
        raise ImageDecodeError(f"image file not found: {path}") from exc
    except MemoryError:
        raise
    except Exception as exc:
        # Pillow's format plugins fail on damaged files with many exception types (OSError,
        # SyntaxError, struct.error, IndexError, DecompressionBombError, ...): any of them
        # means "this file does not decode", which is what callers handle
        raise ImageDecodeError(
            f"cannot decode image file {path}: {type(exc).__name__}: {exc}"
        ) from exc
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).contiguous()


def build_label_map(identities: Iterable[int]) -> dict[int, int]:
    """Map the distinct identities, sorted, to ``0..n-1``.

    Example:
        >>> build_label_map([17, 3, 17, 250])
        {3: 0, 17: 1, 250: 2}
    """
    return {int(pid): i for i, pid in enumerate(sorted({int(p) for p in identities}))}


def remap_labels(
    records: Sequence[ReIDRecord], label_map: Mapping[int, int] | None = None
) -> tuple[list[ReIDRecord], dict[int, int]]:
    """Return copies of ``records`` with ``label = label_map[identity]``, and the map used.

    Args:
        records: the records.
        label_map: original identity → class id; built with :func:`build_label_map` when
            ``None``.

    Raises:
        ValueError: an identity is missing from ``label_map``.

    Example:
        >>> recs = [ReIDRecord("a.png", None, 9, -1, 0, 1, "train"),
        ...         ReIDRecord("b.png", None, 4, -1, 1, 3, "train")]
        >>> new, m = remap_labels(recs)
        >>> [r.label for r in new], m
        ([1, 0], {4: 0, 9: 1})
    """
    lm = build_label_map(r.identity for r in records) if label_map is None else dict(label_map)
    missing = sorted({r.identity for r in records if r.identity not in lm})
    if missing:
        raise ValueError(f"label_map has no entry for identities {missing[:10]}")
    return [dataclasses.replace(r, label=lm[r.identity]) for r in records], lm


class EpochMixin:
    """Epoch bookkeeping visible to DataLoader worker processes.

    The epoch lives in a one-element shared-memory tensor, so ``set_epoch`` in the main process
    reaches persistent workers too (call it *before* creating the epoch's iterator). Each sample's
    random augmentation uses ``sample_generator(seed, epoch, index)``.

    Example:
        >>> ds = RecordDataset([ReIDRecord(None, "a caption", 7, -1, 4, 0, "train")], seed=3)
        >>> ds.set_epoch(2)
        >>> a, b = ds.generator(0), sample_generator(3, 2, 0)
        >>> ds.epoch, torch.equal(torch.rand(2, generator=a), torch.rand(2, generator=b))
        (2, True)
    """

    seed: int
    _epoch: torch.Tensor

    def _init_epoch(self, seed: int) -> None:
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
            raise ValueError(f"seed must be a non-negative int, got {seed!r}")
        self.seed = int(seed)
        self._epoch = torch.zeros(1, dtype=torch.int64).share_memory_()  # type: ignore[no-untyped-call]

    def set_epoch(self, epoch: int) -> None:
        """Select the augmentation stream of ``epoch`` (a non-negative int)."""
        if isinstance(epoch, bool) or not isinstance(epoch, (int, np.integer)) or epoch < 0:
            raise ValueError(f"epoch must be a non-negative int, got {epoch!r}")
        self._epoch.fill_(int(epoch))

    @property
    def epoch(self) -> int:
        return int(self._epoch.item())

    def generator(self, index: int) -> torch.Generator:
        """The augmentation generator of sample ``index`` in the current epoch."""
        return sample_generator(self.seed, self.epoch, index)


def _int64(values: Iterable[int]) -> npt.NDArray[np.int64]:
    return np.fromiter((int(v) for v in values), dtype=np.int64)


class RecordDataset(EpochMixin, Dataset[Sample]):
    """A dataset over :class:`ReIDRecord` items (real image files and captions).

    Args:
        records: the samples (any order; the dataset keeps it).
        transform: image transform ``(uint8 [3,H,W], generator) -> float [3,H,W]``; defaults to
            :func:`~reid_example.data.transforms.eval_transform` at ``image_size``. It must
            produce a fixed size for batching.
        tokenizer: caption tokenizer (default :class:`WordTokenizer`; any
            :class:`~reid_example.data.text.CaptionTokenizer`).
        label_map: original identity → class id; built from ``records`` when ``None``.
        max_text_len: token budget per caption.
        seed: augmentation seed (see :class:`EpochMixin`).
        image_size: ``(height, width)`` of the default transform.
        on_error: an image that fails to decode raises :class:`ImageDecodeError` naming it
            (``"raise"``), or (``"skip"``) is replaced by the next image, in record order, of
            the same identity and modality that decodes, augmented with the requested
            sample's generator; the item keeps the requested record's label, modality, camera
            and index, so the dataset's arrays still describe it. Each failed file is counted
            once in :attr:`decode_failures` (shared with DataLoader workers) and warned about.
            With no such image left, ``"skip"`` raises too.

    Raises:
        TypeError: ``max_text_len`` is not an int.
        ValueError: ``on_error`` is not ``"raise"``/``"skip"``, ``max_text_len < 1``, a bad
            ``seed``, or an identity missing from ``label_map``.

    Example:
        >>> recs = [ReIDRecord(None, "a person in a red shirt", 7, -1, 4, 0, "test")]
        >>> ds = RecordDataset(recs, on_error="skip")
        >>> item = ds[0]
        >>> item["image"] is None, item["label"], item["modality"], ds.label_map
        (True, 0, 4, {7: 0})
        >>> ds.decode_failures, ds.failed_paths()
        (0, [])
    """

    def __init__(
        self,
        records: Sequence[ReIDRecord],
        transform: Transform | None = None,
        tokenizer: CaptionTokenizer | None = None,
        *,
        label_map: Mapping[int, int] | None = None,
        max_text_len: int = 64,
        seed: int = 0,
        image_size: tuple[int, int] = (256, 128),
        on_error: OnError = "raise",
    ) -> None:
        check_on_error(on_error)
        if isinstance(max_text_len, bool) or not isinstance(max_text_len, int):
            raise TypeError(f"max_text_len must be an int, got {max_text_len!r}")
        if max_text_len < 1:
            raise ValueError(f"max_text_len must be >= 1, got {max_text_len}")
        new_records, new_map = remap_labels(list(records), label_map)
        self._init_epoch(seed)
        self.records, self.label_map = new_records, new_map
        self.on_error: OnError = on_error
        self.transform = transform if transform is not None else eval_transform(image_size)
        self.tokenizer = tokenizer if tokenizer is not None else WordTokenizer()
        self.max_text_len = max_text_len
        self.labels = _int64(r.label for r in self.records)
        self.identities = _int64(r.identity for r in self.records)
        self.modalities = _int64(r.modality for r in self.records)
        self.cameras = _int64(r.camera for r in self.records)
        self.num_classes = len(self.label_map)
        # one flag per record in shared memory: a failure met in a worker process is visible
        # to the main process, like the epoch
        self._failed = torch.zeros(len(self.records), dtype=torch.bool).share_memory_()  # type: ignore[no-untyped-call]
        groups: dict[tuple[int, int], list[int]] = {}
        for i, r in enumerate(self.records):
            groups.setdefault((r.identity, r.modality), []).append(i)
        self._group = {key: np.asarray(idx, dtype=np.int64) for key, idx in groups.items()}
        #: decoded images kept across epochs (``data.decoded_cache``), slots by record index
        self.decoded_cache: DecodedImageCache | None = None

    @property
    def decode_failures(self) -> int:
        """How many distinct image files failed to decode so far (all worker processes)."""
        return int(self._failed.sum())

    def failed_paths(self) -> list[str]:
        """The image files that failed to decode so far, in record order."""
        return [str(self.records[int(i)].path) for i in torch.nonzero(self._failed).flatten()]

    def _substitutes(self, index: int) -> Iterator[int]:
        """The other records of ``index``'s identity and modality, in record order after it."""
        r = self.records[index]
        group = self._group[(r.identity, r.modality)]
        at = int(np.searchsorted(group, index))
        yield from (int(j) for j in np.concatenate([group[at + 1 :], group[:at]]))

    def _decode(self, index: int) -> torch.Tensor:
        cache = self.decoded_cache
        cached = cache.get(index) if cache is not None else None
        if cached is not None:
            return cached
        path = str(self.records[index].path)
        try:
            image = load_image(path)
            if cache is not None:
                cache.put(index, image)
            return image
        except ImageDecodeError as exc:
            if self.on_error == "raise":
                raise
            self._failed[index] = True
            first = exc
        # The substitute is the first one that decodes, tried in a fixed order, so every
        # worker (and a run without workers) makes the same choice.
        for j in self._substitutes(index):
            other = str(self.records[j].path)
            try:
                image = load_image(other)
            except ImageDecodeError:
                self._failed[j] = True
                continue
            warnings.warn(
                f"image file {path} cannot be decoded ({first}); using {other} (the same "
                "identity and modality) in its place",
                stacklevel=3,
            )
            return image
        r = self.records[index]
        raise ImageDecodeError(
            f"image file {path} cannot be decoded ({first}) and no other image of identity "
            f"{r.identity} in modality {Modality(r.modality).name} decodes"
        ) from first

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> Sample:
        index = int(index)
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} records")
        index %= len(self)
        r = self.records[index]
        image: torch.Tensor | None = None
        tokens: torch.Tensor | None = None
        if r.modality == int(Modality.TEXT):
            assert r.text is not None  # guaranteed by ReIDRecord
            tokens = self.tokenizer.encode(r.text, self.max_text_len)
        else:
            image = self.transform(self._decode(index), self.generator(index))
        return {
            "image": image,
            "tokens": tokens,
            "label": r.label,
            "modality": r.modality,
            "camera": r.camera,
            "index": index,
        }
