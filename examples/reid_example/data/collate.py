"""Batch assembly for mixed image/text batches.

:func:`collate_multimodal` keeps the sampler's order: row ``b`` of ``labels``/``modalities``/
``cameras``/``indices`` is the ``b``-th sample. Image samples are stacked into ``images`` and
their batch positions recorded in ``image_rows``; captions are right-padded with ``0`` into
``tokens`` with positions ``text_rows``. A model scatters its image and text embeddings back
into batch order with ``emb[image_rows] = ...; emb[text_rows] = ...``.

:func:`group_by_modality` puts a collated batch in the order a training step reads it: the images
grouped by modality, and every row's position by modality with the count of each, as host-side
numbers, so that a step slices one modality's rows without reading the device.
:func:`collate_grouped` is the two in one call (the training loader's ``collate_fn``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from sdmreid.modality import Modality

__all__ = ["collate_grouped", "collate_multimodal", "group_by_modality"]


def collate_multimodal(
    samples: Sequence[dict[str, Any]], image_size: tuple[int, int] | None = None
) -> dict[str, torch.Tensor]:
    """Collate sample dicts (see :class:`~reid_example.data.records.RecordDataset`).

    Args:
        samples: the batch, in sampler order.
        image_size: ``(H, W)`` used for the shape of an image-less batch's ``images``
            (``[0, 3, H, W]``); bind it with ``functools.partial`` when batches may hold only
            captions. Without it such a batch gets ``[0, 3, 0, 0]``.

    Returns:
        ``images`` float ``[Bi, 3, H, W]`` (``[0, 3, H, W]`` without images), ``image_rows``
        long ``[Bi]``, ``tokens`` long ``[Bt, L]`` (``0`` = pad, ``L`` =
        longest caption; ``[0, 0]`` without text), ``text_rows`` long ``[Bt]``, and ``labels``,
        ``modalities``, ``cameras``, ``indices`` long ``[B]``.

    Raises:
        ValueError: an empty batch, a sample with both or neither of image/tokens, or images
            of different shapes.

    Example:
        >>> a = {"image": torch.zeros(3, 4, 2), "tokens": None, "label": 0, "modality": 0,
        ...      "camera": 1, "index": 5}
        >>> b = {"image": None, "tokens": torch.tensor([2, 9]), "label": 1, "modality": 4,
        ...      "camera": 0, "index": 8}
        >>> out = collate_multimodal([b, a])
        >>> out["images"].shape, out["image_rows"].tolist(), out["text_rows"].tolist()
        (torch.Size([1, 3, 4, 2]), [1], [0])
        >>> out["tokens"].tolist(), out["labels"].tolist(), out["indices"].tolist()
        ([[2, 9]], [1, 0], [8, 5])
    """
    if len(samples) == 0:
        raise ValueError("samples must be a non-empty batch")
    images: list[torch.Tensor] = []
    image_rows: list[int] = []
    tokens: list[torch.Tensor] = []
    text_rows: list[int] = []
    for b, s in enumerate(samples):
        img, tok = s.get("image"), s.get("tokens")
        if (img is None) == (tok is None):
            raise ValueError(
                f"sample {b} (index {s.get('index')}) must have exactly one of 'image' and 'tokens'"
            )
        if img is not None:
            if images and img.shape != images[0].shape:
                raise ValueError(
                    f"images must share one shape for batching: sample {b} has "
                    f"{tuple(img.shape)}, the first image {tuple(images[0].shape)} "
                    "(add a Resize transform)"
                )
            images.append(img)
            image_rows.append(b)
        else:
            assert tok is not None
            if tok.ndim != 1:
                raise ValueError(f"tokens of sample {b} must be 1-D, got {tuple(tok.shape)}")
            tokens.append(tok)
            text_rows.append(b)
    if images:
        images_t = torch.stack(images).to(torch.float32)
    else:
        h, w = image_size if image_size is not None else (0, 0)
        images_t = torch.zeros((0, 3, h, w), dtype=torch.float32)
    if tokens:
        length = max(int(t.numel()) for t in tokens)
        tokens_t = torch.zeros((len(tokens), length), dtype=torch.int64)
        for row, t in enumerate(tokens):
            tokens_t[row, : t.numel()] = t
    else:
        tokens_t = torch.zeros((0, 0), dtype=torch.int64)

    def long(key: str) -> torch.Tensor:
        return torch.tensor([int(s[key]) for s in samples], dtype=torch.int64)

    return {
        "images": images_t,
        "image_rows": torch.tensor(image_rows, dtype=torch.int64),
        "tokens": tokens_t,
        "text_rows": torch.tensor(text_rows, dtype=torch.int64),
        "labels": long("label"),
        "modalities": long("modality"),
        "cameras": long("camera"),
        "indices": long("index"),
    }


def group_by_modality(
    batch: dict[str, torch.Tensor], text_length: int | None = None
) -> dict[str, Any]:
    """A collated batch in the order a training step reads it.

    The batch rows (``labels``, ``modalities``, ... in sampler order) do not move. The images
    are reordered by modality code (stably: sampler order within a modality), ``image_rows``
    with them, so each image modality's images form one contiguous slice. Two entries are
    added:

    * ``rows_by_modality``: long ``[B]``, every batch row ordered by modality code (stably);
    * ``modality_counts``: a tuple of Python ints, the number of rows of each
      :class:`~sdmreid.Modality` code ``0..4``.

    Rows of modality ``m`` are then ``rows_by_modality[o : o + modality_counts[m]]`` with
    ``o = sum(modality_counts[:m])``: offsets known on the host, so selecting them never waits
    for the device. With ``text_length`` the captions are padded with ``0`` to that many tokens
    (fixed shapes for a compiled model).

    Raises:
        ValueError: a modality code outside ``0..4``, a TEXT row with an image (or an image
            modality row with tokens), or captions longer than ``text_length``.

    Example:
        >>> a = {"image": torch.zeros(3, 4, 2), "tokens": None, "label": 0, "modality": 1,
        ...      "camera": 1, "index": 5}
        >>> b = {"image": torch.ones(3, 4, 2), "tokens": None, "label": 1, "modality": 0,
        ...      "camera": 0, "index": 8}
        >>> c = {"image": None, "tokens": torch.tensor([2, 9]), "label": 1, "modality": 4,
        ...      "camera": 0, "index": 3}
        >>> out = group_by_modality(collate_multimodal([a, c, b]), text_length=4)
        >>> out["image_rows"].tolist(), out["images"][:, 0, 0, 0].tolist()  # RGB first
        ([2, 0], [1.0, 0.0])
        >>> out["rows_by_modality"].tolist(), out["modality_counts"], out["tokens"].tolist()
        ([2, 0, 1], (1, 1, 0, 0, 1), [[2, 9, 0, 0]])
    """
    mods = batch["modalities"].numpy()
    if mods.size and (mods.min() < 0 or mods.max() >= len(Modality)):
        raise ValueError(
            f"modalities must be Modality codes 0..{len(Modality) - 1}, got {sorted(set(mods))}"
        )
    text = int(Modality.TEXT)
    image_rows, text_rows = batch["image_rows"].numpy(), batch["text_rows"].numpy()
    if (mods[image_rows] == text).any() or (mods[text_rows] != text).any():
        raise ValueError("image rows must have an image modality and text rows the TEXT modality")
    order = np.argsort(mods[image_rows], kind="stable")
    out: dict[str, Any] = dict(batch)
    out["images"] = batch["images"][torch.from_numpy(order)]
    out["image_rows"] = batch["image_rows"][torch.from_numpy(order)]
    out["rows_by_modality"] = torch.from_numpy(np.argsort(mods, kind="stable"))
    out["modality_counts"] = tuple(int(n) for n in np.bincount(mods, minlength=len(Modality)))
    tokens = batch["tokens"]
    if text_length is not None and tokens.shape[0] > 0:
        if tokens.shape[1] > text_length:
            raise ValueError(
                f"captions of {tokens.shape[1]} tokens exceed text_length={text_length}"
            )
        out["tokens"] = torch.nn.functional.pad(tokens, (0, text_length - tokens.shape[1]))
    elif text_length is not None:
        out["tokens"] = tokens.new_zeros((0, text_length))
    return out


def collate_grouped(
    samples: Sequence[dict[str, Any]],
    *,
    collate: Callable[[Sequence[dict[str, Any]]], dict[str, torch.Tensor]] = collate_multimodal,
    text_length: int | None = None,
) -> dict[str, Any]:
    """``group_by_modality(collate(samples), text_length)``: a training batch.

    Example:
        >>> s = {"image": torch.zeros(3, 4, 2), "tokens": None, "label": 0, "modality": 2,
        ...      "camera": 1, "index": 5}
        >>> collate_grouped([s, s])["modality_counts"]
        (0, 0, 2, 0, 0)
    """
    return group_by_modality(collate(samples), text_length=text_length)
