"""Batch assembly for mixed image/text batches.

:func:`collate_multimodal` keeps the sampler's order: row ``b`` of ``labels``/``modalities``/
``cameras``/``indices`` is the ``b``-th sample. Image samples are stacked into ``images`` and
their batch positions recorded in ``image_rows``; captions are right-padded with ``0`` into
``tokens`` with positions ``text_rows``. A model scatters its image and text embeddings back
into batch order with ``emb[image_rows] = ...; emb[text_rows] = ...``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

__all__ = ["collate_multimodal"]


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
