"""The embedding network of the reference trainer.

Per-modality stems map each input to a token sequence in one shared width:

* image modalities (RGB, NIR, SKETCH, CPENCIL) each own a small conv stem + a patchifying conv
  (their own learned position embeddings);
* TEXT owns a token embedding + learned positions (token id 0 is padding and is masked out of
  attention).

A shared small ViT trunk (pre-norm blocks whose attention calls
:func:`torch.nn.functional.scaled_dot_product_attention`) reads a CLS token; a BNNeck (BatchNorm
with a frozen bias) and a bias-free classifier form the ``head`` parameter group.

The SDPA backend is chosen with the :func:`torch.nn.attention.sdpa_kernel` context manager from a
configuration option (``auto`` / ``flash`` / ``efficient`` / ``math`` / ``cudnn``). The requested
backend is probed once per device/dtype and mask kind; when it cannot run there the model falls
back to the automatic choice and says so in one log line.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import ClassVar, cast

import torch
import torch.nn.functional as F
from torch import nn

from sdmreid import Modality

__all__ = [
    "IMAGE_MODALITIES",
    "EmbeddingNetwork",
    "EmbeddingOutput",
    "ReIDModel",
    "SDPAPolicy",
    "build_model",
    "param_groups",
]

log = logging.getLogger("reid_example")

IMAGE_MODALITIES: tuple[Modality, ...] = (
    Modality.RGB,
    Modality.NIR,
    Modality.SKETCH,
    Modality.CPENCIL,
)


class SDPAPolicy:
    """Which SDPA backend(s) the attention layers may use, with a probed fallback.

    ``name`` is one of ``auto | flash | efficient | math | cudnn``. ``context(q, masked)``
    returns the context manager to wrap one attention call in. The first call for a given
    (device type, dtype, masked) combination runs a tiny probe; if the requested backend has no
    kernel there, one ``WARNING`` line is logged and the automatic choice is used instead.
    """

    _BACKENDS: ClassVar[dict[str, str]] = {
        "flash": "FLASH_ATTENTION",
        "efficient": "EFFICIENT_ATTENTION",
        "math": "MATH",
        "cudnn": "CUDNN_ATTENTION",
    }

    def __init__(self, name: str = "auto") -> None:
        if name != "auto" and name not in self._BACKENDS:
            raise ValueError(
                f"sdpa_backend must be one of auto, {', '.join(self._BACKENDS)}; got {name!r}"
            )
        self.name = name
        self._ok: dict[tuple[str, torch.dtype, bool], bool] = {}
        self.fallbacks: list[str] = []

    def _backend(self) -> object | None:
        if self.name == "auto":
            return None
        try:
            from torch.nn.attention import SDPBackend
        except ImportError:  # pragma: no cover - torch < 2.3
            return None
        return getattr(SDPBackend, self._BACKENDS[self.name], None)

    def _probe(self, q: torch.Tensor, masked: bool) -> bool:
        backend = self._backend()
        if backend is None:
            return self.name == "auto"
        from torch.nn.attention import sdpa_kernel

        x = torch.zeros(1, 1, 4, q.shape[-1], device=q.device, dtype=q.dtype)
        mask = torch.ones(1, 1, 4, 4, device=q.device, dtype=torch.bool) if masked else None
        try:
            # PyTorch explains each kernel it cannot use in UserWarnings: the one line below is
            # what the run reports instead
            with warnings.catch_warnings(), torch.no_grad(), sdpa_kernel([backend]):  # type: ignore[list-item]
                warnings.simplefilter("ignore", UserWarning)
                F.scaled_dot_product_attention(x, x, x, attn_mask=mask)
        except RuntimeError:
            return False
        return True

    def context(self, q: torch.Tensor, masked: bool) -> contextlib.AbstractContextManager[None]:
        """Context manager selecting the backend for an attention call on ``q``'s device/dtype."""
        if self.name == "auto":
            return contextlib.nullcontext()
        key = (q.device.type, q.dtype, masked)
        ok = self._ok.get(key)
        if ok is None:
            ok = self._probe(q, masked)
            self._ok[key] = ok
            if not ok:
                what = "with a padding mask " if masked else ""
                msg = (
                    f"sdpa backend {self.name!r} is unavailable {what}on {q.device.type}/"
                    f"{str(q.dtype).replace('torch.', '')}; falling back to automatic selection"
                )
                # One clear line per run; further combinations go to the debug log.
                (log.debug if self.fallbacks else log.warning)(msg)
                self.fallbacks.append(msg)
        if not ok:
            return contextlib.nullcontext()
        from torch.nn.attention import sdpa_kernel

        return sdpa_kernel([self._backend()])  # type: ignore[list-item]


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int, dropout: float, policy: SDPAPolicy) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"embed_dim ({dim}) must be divisible by num_heads ({heads})")
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.dropout = dropout
        self.policy = policy

    def forward(self, x: torch.Tensor, key_mask: torch.Tensor | None) -> torch.Tensor:
        b, n, d = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        mask = None if key_mask is None else key_mask[:, None, None, :]
        with self.policy.context(q, masked=mask is not None):
            out = F.scaled_dot_product_attention(
                q, k, v, attn_mask=mask, dropout_p=self.dropout if self.training else 0.0
            )
        return cast(torch.Tensor, self.proj(out.transpose(1, 2).reshape(b, n, d)))


class Block(nn.Module):
    def __init__(
        self, dim: int, heads: int, mlp_ratio: float, dropout: float, policy: SDPAPolicy
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads, dropout, policy)
        self.norm2 = nn.LayerNorm(dim)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(
            nn.Linear(dim, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, dim)
        )

    def forward(self, x: torch.Tensor, key_mask: torch.Tensor | None) -> torch.Tensor:
        x = x + cast(torch.Tensor, self.attn(self.norm1(x), key_mask))
        return x + cast(torch.Tensor, self.mlp(self.norm2(x)))


def _conv_block(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, stride=2, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.GELU(),
    )


class ImageStem(nn.Module):
    """The per-modality part of an image stem: one stride-2 3×3 conv block (conv → BN → GELU).

    Each image modality owns one; it maps that modality's pixels (colour, infrared intensity,
    strokes on paper, ...) into a common low-level feature map.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.block = _conv_block(3, channels)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return cast(torch.Tensor, self.block(images))


class ImageTokenizer(nn.Module):
    """Shared conv blocks after the per-modality stems, then a patchifying conv + positions.

    ``stem_layers`` stride-2 blocks in total (the first is per-modality) halve the resolution
    each, then a conv of kernel = stride = ``patch / 2^stem_layers`` makes the tokens: every token
    covers ``patch×patch`` pixels, so an ``H×W`` image gives ``(H/patch)·(W/patch)`` tokens. The
    convolutions give the small trunk the locality bias it lacks on a few thousand images.
    """

    def __init__(self, dim: int, patch: int, channels: int, height: int, width: int, layers: int):
        super().__init__()
        if layers < 1 or patch % (2**layers) or patch < 2**layers:
            raise ValueError(
                f"patch_size ({patch}) must be a multiple of 2**stem_layers ({2**layers}), "
                "stem_layers >= 1"
            )
        if height % patch or width % patch:
            raise ValueError(f"image size {height}x{width} must be divisible by patch_size {patch}")
        blocks = [_conv_block(channels * 2**i, channels * 2 ** (i + 1)) for i in range(layers - 1)]
        self.conv = nn.Sequential(*blocks)
        c = channels * 2 ** (layers - 1)
        k = patch // 2**layers
        self.patch = nn.Conv2d(c, dim, k, stride=k)
        self.pos = nn.Parameter(torch.zeros(1, (height // patch) * (width // patch), dim))
        nn.init.trunc_normal_(self.pos, std=0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch(self.conv(x))
        return x.flatten(2).transpose(1, 2) + self.pos


class TextStem(nn.Module):
    """Token embedding + learned positions (id 0 = padding)."""

    def __init__(self, dim: int, vocab_size: int, max_len: int) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab_size, dim, padding_idx=0)
        self.pos = nn.Parameter(torch.zeros(1, max_len, dim))
        nn.init.trunc_normal_(self.pos, std=0.02)
        nn.init.normal_(self.embed.weight, std=0.02)
        with torch.no_grad():
            self.embed.weight[0].zero_()

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        if tokens.shape[1] > self.pos.shape[1]:
            raise ValueError(
                f"token sequences of length {tokens.shape[1]} exceed text_length "
                f"{self.pos.shape[1]}"
            )
        return cast(torch.Tensor, self.embed(tokens)) + self.pos[:, : tokens.shape[1]]


@dataclass
class EmbeddingOutput:
    """Model output in batch order: raw trunk feature, BNNeck embedding, classifier logits."""

    features: torch.Tensor
    embeddings: torch.Tensor
    logits: torch.Tensor


class EmbeddingNetwork(nn.Module):
    """What the trainer reads from a network, whichever backbone it has.

    ``forward(images, image_rows, tokens, text_rows, modalities)`` returns an
    :class:`EmbeddingOutput` in batch order; ``embed_dim`` is the width of its features; the
    BNNeck (``bnneck``) and the bias-free ``classifier`` form the ``head`` parameter group.
    Subclasses: :class:`ReIDModel` (the built-in trunk) and
    :class:`~reid_example.hf_backbone.HFReIDModel` (a pretrained ``transformers`` backbone).
    """

    embed_dim: int
    bnneck: nn.BatchNorm1d
    classifier: nn.Linear

    def head_parameters(self) -> Iterator[nn.Parameter]:
        """The parameters trained at the head learning rate (``optim.head_lr``)."""
        yield from self.bnneck.parameters()
        yield from self.classifier.parameters()

    def decays(self, name: str, param: nn.Parameter) -> bool:
        """Whether weight decay applies to ``param`` (named ``name`` in ``named_parameters``).

        Not to norms and biases (1-D), position and CLS parameters, embeddings.
        """
        return not (param.ndim <= 1 or name.endswith(".pos") or name == "cls" or "embed" in name)

    def batch_output(
        self,
        modalities: torch.Tensor,
        image_rows: torch.Tensor | None,
        img_feat: torch.Tensor | None,
        text_rows: torch.Tensor | None,
        txt_feat: torch.Tensor | None,
    ) -> EmbeddingOutput:
        """The image and text rows' features put back in batch order (``image_rows`` /
        ``text_rows``), then the BNNeck and the classifier."""
        feats = modalities.new_zeros((modalities.shape[0], self.embed_dim), dtype=torch.float32)
        if img_feat is not None and image_rows is not None:
            feats = feats.index_copy(0, image_rows, img_feat)
        if txt_feat is not None and text_rows is not None:
            feats = feats.index_copy(0, text_rows, txt_feat)
        emb = self.bnneck(feats)
        return EmbeddingOutput(features=feats, embeddings=emb, logits=self.classifier(emb))


class ReIDModel(EmbeddingNetwork):
    """Per-modality stems → shared ViT trunk → BNNeck + classifier.

    ``forward`` takes the collated batch pieces and returns an :class:`EmbeddingOutput` whose rows
    follow the batch order given by ``image_rows`` / ``text_rows``.
    """

    def __init__(
        self,
        *,
        num_classes: int,
        vocab_size: int,
        image_size: tuple[int, int],
        text_length: int,
        embed_dim: int = 96,
        depth: int = 3,
        num_heads: int = 4,
        mlp_ratio: float = 2.0,
        patch_size: int = 4,
        stem_channels: int = 32,
        stem_layers: int = 2,
        pool: str = "cls",
        dropout: float = 0.0,
        sdpa_backend: str = "auto",
        trunk: nn.Module | None = None,
    ) -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        if pool not in ("cls", "mean"):
            raise ValueError(f"pool must be 'cls' or 'mean', got {pool!r}")
        self.pool = pool
        self.policy = SDPAPolicy(sdpa_backend)
        h, w = image_size
        self.image_stems = nn.ModuleDict(
            {m.name.lower(): ImageStem(stem_channels) for m in IMAGE_MODALITIES}
        )
        self.image_tokenizer = ImageTokenizer(
            embed_dim, patch_size, stem_channels, h, w, stem_layers
        )
        self.stem_channels = stem_channels
        self.text_stem = TextStem(embed_dim, max(vocab_size, 2), text_length)
        # A learned modality token helps the shared trunk know what it reads.
        self.cls = nn.Parameter(torch.zeros(1, 1, embed_dim))
        nn.init.trunc_normal_(self.cls, std=0.02)
        self.blocks = nn.ModuleList(
            [Block(embed_dim, num_heads, mlp_ratio, dropout, self.policy) for _ in range(depth)]
        )
        self.norm = nn.LayerNorm(embed_dim)
        self.external_trunk = trunk
        self.bnneck = nn.BatchNorm1d(embed_dim)
        self.bnneck.bias.requires_grad_(False)
        self.classifier = nn.Linear(embed_dim, num_classes, bias=False)
        self.embed_dim = embed_dim
        self.apply(self._init)
        # Unit-scale logits from the start: a tiny (BoT-style 0.001) init starves the trunk of
        # gradient until the classifier has grown, a long plateau when training from scratch.
        nn.init.normal_(self.classifier.weight, std=embed_dim**-0.5)
        if trunk is not None:
            # An external trunk (timm) replaces the built-in blocks; it brings its own norm.
            self.blocks = nn.ModuleList()
            self.norm = nn.Identity()  # type: ignore[assignment]

    @staticmethod
    def _init(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)

    def _trunk(self, tokens: torch.Tensor, key_mask: torch.Tensor | None) -> torch.Tensor:
        cls = self.cls.expand(tokens.shape[0], -1, -1)
        x = torch.cat([cls, tokens], dim=1)
        if key_mask is not None:
            key_mask = torch.cat(
                [torch.ones_like(key_mask[:, :1]), key_mask], dim=1
            )  # CLS always visible
        if self.external_trunk is not None:
            return self._external(x, key_mask)
        for blk in self.blocks:
            x = cast(torch.Tensor, blk(x, key_mask))
        x = cast(torch.Tensor, self.norm(x))
        if self.pool == "cls":
            return x[:, 0]
        # mean over the (unmasked) tokens, CLS included
        if key_mask is None:
            return x.mean(dim=1)
        w = key_mask.to(x.dtype).unsqueeze(-1)
        return (x * w).sum(dim=1) / w.sum(dim=1)

    def _external(self, x: torch.Tensor, key_mask: torch.Tensor | None) -> torch.Tensor:
        trunk = self.external_trunk
        assert trunk is not None
        mask = None if key_mask is None else key_mask[:, None, None, :]
        for blk in trunk.blocks:  # type: ignore[union-attr]
            x = blk(x) if mask is None else blk(x, attn_mask=mask)
        return trunk.norm(x)[:, 0]  # type: ignore[operator,no-any-return]

    def encode(
        self,
        images: torch.Tensor | None,
        image_modalities: torch.Tensor | None,
        tokens: torch.Tensor | None,
        *,
        image_counts: Sequence[int] | None = None,
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """Trunk features of the image rows and of the text rows (each in its input order).

        Each image modality's stem reads its modality's images as one contiguous slice.
        ``image_counts`` says that ``images`` already come grouped that way: by modality, in
        :data:`IMAGE_MODALITIES` order, ``image_counts[i]`` of ``IMAGE_MODALITIES[i]`` (the
        training batches, :func:`~reid_example.data.collate.group_by_modality`); the slices
        then have host-known sizes and nothing is read from the device. Without it the images
        are grouped here from ``image_modalities``, which reads the counts from the device
        once (evaluation batches).
        """
        img_tokens: torch.Tensor | None = None
        order: torch.Tensor | None = None
        if images is not None and images.shape[0] > 0:
            if image_counts is None:
                if image_modalities is None:
                    raise ValueError("image_modalities is required with images")
                order, image_counts = self._group_by_modality(image_modalities)
                images = images.index_select(0, order)
            img_tokens = self._image_tokens(images, image_counts)
        txt_tokens = txt_mask = None
        if tokens is not None and tokens.shape[0] > 0:
            txt_tokens, txt_mask = self.text_stem(tokens), tokens != 0
        img_feat, txt_feat = self._trunk_features(img_tokens, txt_tokens, txt_mask)
        if order is not None and img_feat is not None:  # back to the input order
            img_feat = torch.empty_like(img_feat).index_copy_(0, order, img_feat)
        return img_feat, txt_feat

    def _trunk_features(
        self,
        img_tokens: torch.Tensor | None,
        txt_tokens: torch.Tensor | None,
        txt_mask: torch.Tensor | None,
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """Trunk features of the image token sequences and of the caption token sequences.

        When both have the same length (e.g. 8×4 patches and 32-token captions) the trunk reads
        them in one pass, images unmasked and captions with their padding mask; else one pass
        each. Every row's feature is the same either way: rows never mix in the trunk.
        """
        if img_tokens is None or txt_tokens is None or txt_mask is None:
            img = None if img_tokens is None else self._trunk(img_tokens, None).float()
            txt = None if txt_tokens is None else self._trunk(txt_tokens, txt_mask).float()
            return img, txt
        if img_tokens.shape[1:] != txt_tokens.shape[1:]:
            return self._trunk(img_tokens, None).float(), self._trunk(txt_tokens, txt_mask).float()
        n_img = img_tokens.shape[0]
        visible = torch.ones_like(txt_mask[:1]).expand(n_img, -1)  # images have no padding
        feats = self._trunk(
            torch.cat([img_tokens, txt_tokens]), torch.cat([visible, txt_mask])
        ).float()
        return feats[:n_img], feats[n_img:]

    @staticmethod
    def _group_by_modality(image_modalities: torch.Tensor) -> tuple[torch.Tensor, list[int]]:
        """The order that groups images by modality code (stable) and the count of each image
        modality (one read of the device)."""
        codes = image_modalities.to(torch.int64)
        n = len(IMAGE_MODALITIES)
        # counts of every image modality, then of codes outside them, read at once
        outside = ((codes < 0) | (codes >= n)).sum().reshape(1)
        counts = torch.cat([torch.bincount(codes.clamp(0, n - 1), minlength=n), outside])
        *per_modality, bad = counts.tolist()
        if bad:
            unknown = sorted(set(codes.tolist()) - {int(m) for m in IMAGE_MODALITIES})
            names = [Modality(c).name if 0 <= c < len(Modality) else str(c) for c in unknown]
            raise ValueError(f"no image stem for modality {', '.join(names)}")
        return torch.sort(codes, stable=True).indices, per_modality

    def _image_tokens(self, images: torch.Tensor, image_counts: Sequence[int]) -> torch.Tensor:
        """Token sequences of images grouped by modality (see :meth:`encode`), in their order:
        each modality's stem on its slice, then the shared conv blocks and patches."""
        # One shared pass for all image rows: conv blocks, patches.
        return cast(torch.Tensor, self.image_tokenizer(self._stems(images, image_counts)))

    @torch.compiler.disable  # type: ignore[untyped-decorator]
    def _stems(self, images: torch.Tensor, image_counts: Sequence[int]) -> torch.Tensor:
        """Each image modality's stem on its slice of the grouped images.

        Under ``torch.compile`` this runs eagerly: the slice sizes change from batch to batch,
        and compiled code would specialise on them (one graph per batch composition); the rest
        of the network sees only the batch's image count, one dynamic size.
        """
        counts = [int(n) for n in image_counts]
        if len(counts) != len(IMAGE_MODALITIES) or sum(counts) != images.shape[0]:
            raise ValueError(
                f"image_counts must give the number of images of each of the "
                f"{len(IMAGE_MODALITIES)} image modalities (summing to {images.shape[0]}), "
                f"got {tuple(image_counts)}"
            )
        stems = [self.image_stems[m.name.lower()] for m in IMAGE_MODALITIES]
        low = [
            stem(part)
            for stem, part, n in zip(stems, torch.split(images, counts), counts, strict=True)
            if n > 0  # a stem's batch norm needs its own images
        ]
        return torch.cat(low) if len(low) > 1 else low[0]

    def forward(
        self,
        images: torch.Tensor | None,
        image_rows: torch.Tensor | None,
        tokens: torch.Tensor | None,
        text_rows: torch.Tensor | None,
        modalities: torch.Tensor,
        image_counts: Sequence[int] | None = None,
    ) -> EmbeddingOutput:
        """``image_counts``: the images are grouped by modality (see :meth:`encode`)."""
        img_mods = None if image_rows is None else modalities.index_select(0, image_rows)
        img_feat, txt_feat = self.encode(images, img_mods, tokens, image_counts=image_counts)
        return self.batch_output(modalities, image_rows, img_feat, text_rows, txt_feat)


def _timm_trunk(name: str) -> nn.Module:  # pragma: no cover - optional dependency
    try:
        import timm
    except ImportError as err:
        raise RuntimeError(
            f"model.backbone={name!r} needs the optional 'timm' package; use model.backbone=vit"
        ) from err
    model = timm.create_model(name, pretrained=False, num_classes=0)
    if not (hasattr(model, "blocks") and hasattr(model, "norm") and hasattr(model, "embed_dim")):
        raise ValueError(
            f"timm model {name!r} is not a ViT-style model (needs .blocks, .norm, .embed_dim)"
        )
    log.info("timm trunk %s (random init, no pretrained download)", name)
    return model  # type: ignore[no-any-return]


def build_model(
    model_cfg: object,
    *,
    num_classes: int,
    vocab_size: int,
    image_size: tuple[int, int],
    text_length: int,
) -> EmbeddingNetwork:
    """Build the network named by ``model.backbone`` from a
    :class:`~reid_example.config.ModelConfig`: :class:`ReIDModel` for ``vit`` and ``timm:<name>``,
    :class:`~reid_example.hf_backbone.HFReIDModel` for ``hf:<directory or hub id>``."""
    from reid_example.config import ModelConfig

    if not isinstance(model_cfg, ModelConfig):
        raise TypeError(f"model_cfg must be a ModelConfig, got {type(model_cfg).__name__}")
    if model_cfg.backbone.startswith("hf:"):
        from reid_example.hf_backbone import build_hf_model

        return build_hf_model(
            model_cfg,
            num_classes=num_classes,
            vocab_size=vocab_size,
            image_size=image_size,
            text_length=text_length,
        )
    trunk: nn.Module | None = None
    embed_dim = model_cfg.embed_dim
    if model_cfg.backbone.startswith("timm:"):
        # The timm ViT's blocks + final norm become the shared trunk; the per-modality stems
        # project into its width. Its own patch embedding and head are not used.
        trunk = _timm_trunk(model_cfg.backbone.split(":", 1)[1])
        embed_dim = int(trunk.embed_dim)  # type: ignore[arg-type]
    elif model_cfg.backbone != "vit":
        raise ValueError(
            "model.backbone must be 'vit', 'timm:<name>' or 'hf:<directory or hub id>', got "
            f"{model_cfg.backbone!r}"
        )
    return ReIDModel(
        num_classes=num_classes,
        vocab_size=model_cfg.vocab_size or vocab_size,
        image_size=image_size,
        text_length=text_length,
        embed_dim=embed_dim,
        depth=model_cfg.depth,
        num_heads=model_cfg.num_heads,
        mlp_ratio=model_cfg.mlp_ratio,
        patch_size=model_cfg.patch_size,
        stem_channels=model_cfg.stem_channels,
        stem_layers=model_cfg.stem_layers,
        pool=model_cfg.pool,
        dropout=model_cfg.dropout,
        sdpa_backend=model_cfg.sdpa_backend,
        trunk=trunk,
    )


def param_groups(
    model: EmbeddingNetwork, *, lr: float, head_lr: float, weight_decay: float
) -> list[dict[str, object]]:
    """Optimiser groups: ``backbone`` (decayed), ``backbone_no_decay``, ``head``.

    The model's :meth:`~EmbeddingNetwork.head_parameters` form ``head``; the others are decayed
    where the model's :meth:`~EmbeddingNetwork.decays` says so.
    """
    head_ids = {id(p) for p in model.head_parameters()}
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    for name, p in model.named_parameters():
        if not p.requires_grad or id(p) in head_ids:
            continue
        (decay if model.decays(name, p) else no_decay).append(p)
    head = [p for p in model.head_parameters() if p.requires_grad]
    return [
        {"name": "backbone", "params": decay, "lr": lr, "weight_decay": weight_decay},
        {"name": "backbone_no_decay", "params": no_decay, "lr": lr, "weight_decay": 0.0},
        {"name": "head", "params": head, "lr": head_lr, "weight_decay": weight_decay},
    ]


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
