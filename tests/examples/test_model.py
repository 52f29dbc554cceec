"""The example model's mixed-precision path, without a GPU.

Under CUDA autocast the per-modality stems (conv + batch norm) return bf16/fp16 while the input
images stay float32, and ``index_copy`` (how the stems' outputs are assembled into one block)
is not an op CUDA autocast converts. CPU autocast keeps batch norm in float32 and promotes
``index_copy``'s inputs, so a CPU autocast run hides the mismatch; here the stems are wrapped to
return the dtype CUDA gives them, and the shared tokenizer to accept it, with no autocast.
"""

from __future__ import annotations

import pytest
import torch
from reid_example.model import ReIDModel
from torch import nn

from sdmreid import Modality


class _Cast(nn.Module):
    """``inner`` with its input or its output converted to ``dtype``."""

    def __init__(self, inner: nn.Module, dtype: torch.dtype, where: str) -> None:
        super().__init__()
        self.inner, self.dtype, self.where = inner, dtype, where

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.where == "input":
            return self.inner(x.to(self.dtype))  # type: ignore[no-any-return]
        return self.inner(x).to(self.dtype)  # type: ignore[no-any-return]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("channels_last", [False, True])
def test_low_precision_stems_feed_the_shared_trunk(dtype: torch.dtype, channels_last: bool) -> None:
    torch.manual_seed(0)
    model = ReIDModel(
        num_classes=5,
        vocab_size=20,
        image_size=(16, 8),
        text_length=6,
        embed_dim=16,
        depth=1,
        num_heads=2,
        patch_size=4,
        stem_channels=4,
    ).eval()
    gen = torch.Generator().manual_seed(1)
    images = torch.randn(6, 3, 16, 8, generator=gen)
    if channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    order = ("RGB", "NIR", "RGB", "SKETCH", "NIR", "RGB")
    mods = torch.tensor([int(Modality[m]) for m in order])
    with torch.no_grad():
        ref, _ = model.encode(images, mods, None)
        for name in list(model.image_stems):
            model.image_stems[name] = _Cast(model.image_stems[name], dtype, "output")
        model.image_tokenizer = _Cast(model.image_tokenizer, torch.float32, "input")
        got, _ = model.encode(images, mods, None)
    assert ref is not None and got is not None
    assert got.dtype == torch.float32 and got.shape == ref.shape
    # each row went through its own modality's stem: the same features up to the stems'
    # low-precision rounding (relative error of the whole block)
    assert float((got - ref).norm() / ref.norm()) < 0.02
