"""Pretrained backbones from Hugging Face ``transformers``: ``model.backbone = "hf:<dir or id>"``.

One adapter, :class:`HFReIDModel`, puts a saved ``transformers`` model behind the trainer's
network contract (:class:`~reid_example.model.EmbeddingNetwork`): the same ``forward`` arguments,
the same :class:`~reid_example.model.EmbeddingOutput` (features, BNNeck embeddings, logits) and
the same ``head`` parameter group as the built-in trunk.

===========  ==========================================  ===================================
family       image modalities (RGB, NIR, SKETCH, CP)     TEXT
===========  ==========================================  ===================================
``clip``     vision tower → visual projection            text tower → text projection
``resnet``   all stages → global average pool            (no text tower: refused)
``vit``      the CLS token after the final norm          (no text tower: refused)
``dinov2``   the CLS token after the final norm          (no text tower: refused)
===========  ==========================================  ===================================

**One tower for every image modality.** NIR, SKETCH and CPENCIL rows share RGB's tower in one
pass. Each image modality owns a learned embedding, zero at the start, added to the tower's first
feature map: to every token of a ViT/CLIP/DINOv2 patch embedding, or as a per-channel offset of
a ResNet's stem output. The tower therefore starts as the pretrained network exactly, knows from
the first block on which modality it reads (the side-information embeddings of TransReID do the
same for cameras), and the batch stays one pass, without per-modality branches or host reads.

**Inputs.** :func:`data_inputs` tells the data pipeline what the backbone expects: the image size
(``data.image_height`` / ``data.image_width`` when set, else the backbone's image processor or
config, else the data set's default), the normalisation (the image processor's mean/std, else
CLIP's or ImageNet's) and, for CLIP, the caption tokenizer saved with the model
(``model.tokenizer`` to take another one).

**Offline.** A local directory (``save_pretrained`` output) needs no network. A hub id is fetched
by ``transformers`` (network, or its cache with ``HF_HUB_OFFLINE=1``).
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, cast

import torch
from torch import nn

from reid_example.config import Config, ModelConfig
from reid_example.data.text import CaptionTokenizer, WordTokenizer
from reid_example.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from reid_example.model import IMAGE_MODALITIES, EmbeddingNetwork, EmbeddingOutput

__all__ = [
    "FAMILIES",
    "HF_PREFIX",
    "BackboneSpec",
    "DataInputs",
    "HFReIDModel",
    "HFTokenizer",
    "build_hf_model",
    "data_inputs",
    "hf_source",
    "inspect_backbone",
    "load_tokenizer",
]

log = logging.getLogger("reid_example")

#: the prefix of ``model.backbone`` that selects this adapter
HF_PREFIX = "hf:"

#: supported ``model_type`` values (``config.json``) and the ``transformers`` class each loads
FAMILIES: dict[str, str] = {
    "clip": "CLIPModel",
    "resnet": "ResNetModel",
    "vit": "ViTModel",
    "dinov2": "Dinov2Model",
}

#: CLIP's normalisation (``transformers.utils.constants.OPENAI_CLIP_MEAN`` / ``_STD``)
CLIP_MEAN: tuple[float, float, float] = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD: tuple[float, float, float] = (0.26862954, 0.26130258, 0.27577711)

_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*(/[\w.-]+)?")

# Parameters kept out of weight decay besides the 1-D ones (norms, biases): position, class,
# mask and register tokens and the modality embeddings (the timm convention).
_NO_DECAY = (
    "position_embedding",
    "class_embedding",
    "cls_token",
    "mask_token",
    "register_tokens",
    "modality_embedding",
)


def hf_source(backbone: str) -> str | None:
    """The directory or hub id of an ``hf:`` backbone option; ``None`` for any other backbone.

    Example:
        >>> hf_source("hf:openai/clip-vit-base-patch16"), hf_source("vit")
        ('openai/clip-vit-base-patch16', None)
    """
    if not backbone.startswith(HF_PREFIX):
        return None
    return backbone[len(HF_PREFIX) :]


def _transformers() -> ModuleType:
    try:
        import transformers
    except ImportError as err:
        raise ImportError(
            "model.backbone='hf:...' needs the optional 'transformers' package: "
            "pip install 'sdmreid[hf]'"
        ) from err
    return cast(ModuleType, transformers)


def _location(source: str, option: str) -> tuple[str, bool]:
    """``(where to load from, whether it is a local directory)``; refuses what cannot be one."""
    if not source:
        raise ValueError(f"{option}: expected hf:<directory or hub id> after 'hf:', got nothing")
    path = Path(source).expanduser()
    if path.exists():
        if not path.is_dir():
            raise ValueError(
                f"{option}: {path} is a file; expected a directory written by "
                "save_pretrained (config.json and the weights)"
            )
        return str(path), True
    if _HUB_ID.fullmatch(source) and not source.startswith("."):
        return source, False
    raise ValueError(
        f"{option}: no directory {path} (and {source!r} is not a hub id of the form "
        "'name' or 'organisation/name')"
    )


@dataclass(frozen=True)
class BackboneSpec:
    """What a saved model's ``config.json`` and ``preprocessor_config.json`` say.

    Example:
        >>> import tempfile, transformers
        >>> where = tempfile.mkdtemp()
        >>> transformers.ViTConfig(hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
        ...                        image_size=32, patch_size=8).save_pretrained(where)
        >>> spec = inspect_backbone(f"hf:{where}")
        >>> spec.family, spec.image_size, spec.patch_size, spec.mean == IMAGENET_MEAN
        ('vit', (32, 32), 8, True)
        >>> spec.check_image_size((36, 16))
        Traceback (most recent call last):
        ...
        ValueError: data.image_height=36 / data.image_width=16: ... multiples of 8 (e.g. 32x16)

    Attributes:
        option: the ``model.backbone`` value, as the errors quote it.
        location: the local directory or hub id.
        local: whether ``location`` is a local directory.
        family: ``clip``, ``resnet``, ``vit`` or ``dinov2``.
        config: the ``transformers`` configuration.
        image_size: ``(height, width)`` the backbone's processor (or config) names, if any.
        mean, std: per-channel normalisation of the backbone's inputs.
        patch_size: side of a patch for the transformer families (``None`` for ResNet).
    """

    option: str
    location: str
    local: bool
    family: str
    config: Any
    image_size: tuple[int, int] | None
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    patch_size: int | None

    @property
    def text_config(self) -> Any:
        """The text tower's configuration (CLIP), ``None`` for the vision-only families."""
        return self.config.text_config if self.family == "clip" else None

    def check_image_size(self, size: tuple[int, int]) -> None:
        """Refuse an input size the backbone cannot take, naming the data options.

        Raises:
            ValueError: a side that is not positive, or not a multiple of the patch size.
        """
        h, w = size
        if h < 1 or w < 1:
            raise ValueError(f"data.image_height / data.image_width must be positive, got {h}x{w}")
        p = self.patch_size
        if p is not None and (h % p or w % p):
            raise ValueError(
                f"data.image_height={h} / data.image_width={w}: {self.option} cuts images into "
                f"{p}x{p} patches, so both sides must be multiples of {p} (e.g. "
                f"{max(p, h // p * p)}x{max(p, w // p * p)})"
            )


def _read_preprocessor(location: str, local: bool) -> dict[str, Any]:
    """``preprocessor_config.json`` as a dict (empty when the model has none)."""
    if local:
        path = Path(location) / "preprocessor_config.json"
        if not path.is_file():
            return {}
        try:
            return cast(dict[str, Any], json.loads(path.read_text(encoding="utf-8")))
        except json.JSONDecodeError as err:
            raise ValueError(f"{path} is not valid JSON: {err}") from err
    try:
        found, _ = _transformers().ImageProcessingMixin.get_image_processor_dict(location)
    except OSError:  # the model has no image processor: the family's defaults apply
        return {}
    return cast(dict[str, Any], found)


def _size_of(value: Any) -> tuple[int, int] | None:
    if isinstance(value, int) and not isinstance(value, bool):
        return (value, value)
    if isinstance(value, dict) and "height" in value and "width" in value:
        return (int(value["height"]), int(value["width"]))
    if isinstance(value, (list, tuple)) and len(value) == 2:
        return (int(value[0]), int(value[1]))
    return None


def _channels(value: Any, what: str, option: str) -> tuple[float, float, float]:
    if not isinstance(value, (list, tuple)) or len(value) != 3:
        raise ValueError(f"{option}: {what} must list 3 channel values, got {value!r}")
    out = (float(value[0]), float(value[1]), float(value[2]))
    if what == "image_std" and min(out) <= 0:
        raise ValueError(f"{option}: image_std must be positive, got {value!r}")
    return out


def inspect_backbone(backbone: str) -> BackboneSpec:
    """Read an ``hf:`` backbone's configuration (no weights are loaded).

    Raises:
        ImportError: ``transformers`` is not installed (``pip install 'sdmreid[hf]'``).
        ValueError: not an ``hf:`` option, a missing directory, a directory without
            ``config.json``, or a model family other than CLIP, ResNet, ViT and DINOv2.
        OSError: a hub id that cannot be fetched (no network and no cached copy).
    """
    source = hf_source(backbone)
    option = f"model.backbone={backbone!r}"
    if source is None:
        raise ValueError(f"{option}: not an hf: backbone")
    location, local = _location(source, option)
    if local and not (Path(location) / "config.json").is_file():
        raise ValueError(
            f"{option}: {location} has no config.json, so it is not a model saved with "
            "transformers' save_pretrained"
        )
    transformers = _transformers()
    try:
        config = transformers.AutoConfig.from_pretrained(location)
    except ValueError as err:
        raise ValueError(f"{option}: {location} is not a supported model ({err})") from err
    except OSError as err:
        raise OSError(
            f"{option}: there is no local directory {location!r}, and fetching it as a hub id "
            f"failed ({err}). A hub id needs network, or a copy in the Hugging Face cache with "
            "HF_HUB_OFFLINE=1; a local directory written by save_pretrained needs neither"
        ) from err
    family = str(getattr(config, "model_type", ""))
    if family not in FAMILIES:
        raise ValueError(
            f"{option}: a {family!r} model is not supported; supported model types: "
            f"{', '.join(FAMILIES)}"
        )
    pre = _read_preprocessor(location, local)
    vision = config.vision_config if family == "clip" else config
    size = _size_of(pre.get("crop_size")) or _size_of(pre.get("size"))
    if size is None:
        size = _size_of(getattr(vision, "image_size", None))
    default_mean, default_std = (
        (CLIP_MEAN, CLIP_STD) if family == "clip" else (IMAGENET_MEAN, IMAGENET_STD)
    )
    patch = getattr(vision, "patch_size", None) if family != "resnet" else None
    return BackboneSpec(
        option=backbone,
        location=location,
        local=local,
        family=family,
        config=config,
        image_size=size,
        mean=_channels(pre.get("image_mean", default_mean), "image_mean", option),
        std=_channels(pre.get("image_std", default_std), "image_std", option),
        patch_size=None if patch is None else int(patch),
    )


class HFTokenizer:
    """A ``transformers`` tokenizer in the data pipeline's convention (``0`` = padding).

    The collate function pads captions with ``0``, but ``0`` is a real token of most vocabularies
    (CLIP's ``!``), so every id is stored one higher: :meth:`encode` returns ``id + 1`` and the
    model subtracts one. Captions get the tokenizer's own start and end tokens; a caption longer
    than ``max_len`` is cut before its end token, which is kept.

    Args:
        tokenizer: a loaded ``transformers`` tokenizer.

    Example:
        >>> class Chars:  # a stand-in with the tokenizer call signature
        ...     def __len__(self): return 30
        ...     def __call__(self, text, truncation, max_length):
        ...         ids = [28] + [ord(c) - 97 for c in text][: max_length - 2] + [29]
        ...         return {"input_ids": ids}
        >>> tok = HFTokenizer(Chars())
        >>> tok.encode("abc", max_len=4).tolist(), tok.vocab_size
        ([29, 1, 2, 30], 31)
    """

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer

    @property
    def vocab_size(self) -> int:
        """The tokenizer's ids plus the padding id ``0``."""
        return len(self.tokenizer) + 1

    def encode(self, text: str, max_len: int = 64) -> torch.Tensor:
        """Encode ``text`` to at most ``max_len`` shifted ids (1-D ``int64``, no padding).

        Raises:
            TypeError: ``text`` is not a str.
            ValueError: ``max_len < 2`` (the start and end tokens need two places).
        """
        if not isinstance(text, str):
            raise TypeError(f"text must be a str, got {type(text).__name__}")
        if isinstance(max_len, bool) or not isinstance(max_len, int) or max_len < 2:
            raise ValueError(f"max_len must be an int >= 2, got {max_len!r}")
        ids = self.tokenizer(text, truncation=True, max_length=max_len)["input_ids"]
        return torch.tensor(ids, dtype=torch.int64) + 1

    def __len__(self) -> int:
        return self.vocab_size


def load_tokenizer(model_cfg: ModelConfig, spec: BackboneSpec, text_length: int) -> HFTokenizer:
    """The caption tokenizer of a CLIP backbone (``model.tokenizer``, else the backbone's own).

    Raises:
        ValueError: no tokenizer there; a tokenizer whose ids do not fit the text tower's
            embedding table or whose end token is not the tower's; ``data.text_length`` longer
            than the tower's positions.
    """
    text = spec.text_config
    if text is None:
        raise ValueError(f"model.backbone={spec.option!r} has no text tower")
    if model_cfg.tokenizer:
        option = f"model.tokenizer={model_cfg.tokenizer!r}"
        path = Path(model_cfg.tokenizer).expanduser()
        source = str(path) if path.exists() else model_cfg.tokenizer
    else:
        option = f"model.tokenizer='' (the tokenizer of model.backbone={spec.option!r})"
        source = spec.location
    try:
        tok = _transformers().AutoTokenizer.from_pretrained(source)
    except (OSError, ValueError, TypeError) as err:
        raise ValueError(
            f"{option}: no tokenizer could be loaded from {source!r} ({err}); set "
            "model.tokenizer to a directory or hub id that holds the text tower's tokenizer"
        ) from err
    if len(tok) > int(text.vocab_size):
        raise ValueError(
            f"{option}: the tokenizer has {len(tok)} tokens but the text tower of "
            f"model.backbone={spec.option!r} embeds {text.vocab_size}: they do not belong "
            "together"
        )
    eos = getattr(text, "eos_token_id", None)
    # eos_token_id == 2 marks configs saved before transformers fixed the field; those pool the
    # largest id, which is the end token of a CLIP vocabulary.
    if eos is not None and int(eos) != 2 and tok.eos_token_id != int(eos):
        raise ValueError(
            f"{option}: the tokenizer's end token is id {tok.eos_token_id}, the text tower of "
            f"model.backbone={spec.option!r} pools at id {eos}: they do not belong together"
        )
    positions = int(text.max_position_embeddings)
    if text_length > positions:
        raise ValueError(
            f"data.text_length={text_length} exceeds the {positions} positions of the text "
            f"tower of model.backbone={spec.option!r}"
        )
    return HFTokenizer(tok)


@dataclass(frozen=True)
class DataInputs:
    """What the data pipeline takes from the model options.

    Attributes:
        image_size: ``(height, width)`` of every transformed image.
        mean, std: the per-channel normalisation of the transforms.
        tokenizer: the caption tokenizer.
    """

    image_size: tuple[int, int]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    tokenizer: CaptionTokenizer


def data_inputs(cfg: Config, default_size: tuple[int, int]) -> DataInputs:
    """Image size, normalisation and tokenizer for ``cfg``'s backbone.

    The image size, per side: ``data.image_height`` / ``data.image_width`` when non-zero, else the
    ``hf:`` backbone's image processor (``crop_size``, then ``size``) or configuration
    (``image_size``), else ``default_size`` (the data set's own). The normalisation: the image
    processor's ``image_mean`` / ``image_std``, else CLIP's for a CLIP model and ImageNet's
    otherwise. The tokenizer: a CLIP backbone's (:func:`load_tokenizer`), else the built-in
    :class:`~reid_example.data.text.WordTokenizer`.

    Example:
        >>> from reid_example.config import apply_overrides
        >>> cfg = apply_overrides(Config(), ["data.image_height=32"])
        >>> inputs = data_inputs(cfg, default_size=(64, 32))
        >>> inputs.image_size, inputs.mean == IMAGENET_MEAN, type(inputs.tokenizer).__name__
        ((32, 32), True, 'WordTokenizer')

    Raises:
        ValueError: an image size the backbone cannot take (naming ``data.image_height`` /
            ``data.image_width``), or the errors of :func:`inspect_backbone` and
            :func:`load_tokenizer`.
    """
    if hf_source(cfg.model.backbone) is None:
        size = (cfg.data.image_height or default_size[0], cfg.data.image_width or default_size[1])
        return DataInputs(size, IMAGENET_MEAN, IMAGENET_STD, WordTokenizer())
    spec = inspect_backbone(cfg.model.backbone)
    native = spec.image_size or default_size
    size = (cfg.data.image_height or native[0], cfg.data.image_width or native[1])
    spec.check_image_size(size)
    tokenizer: CaptionTokenizer = (
        load_tokenizer(cfg.model, spec, cfg.data.text_length)
        if spec.family == "clip"
        else WordTokenizer()
    )
    return DataInputs(size, spec.mean, spec.std, tokenizer)


class HFReIDModel(EmbeddingNetwork):
    """A ``transformers`` backbone → BNNeck + classifier, with per-modality embeddings.

    Build it with :func:`build_hf_model` from the trainer's options; the constructor takes a
    :class:`BackboneSpec` and the loaded ``transformers`` model.

    Example:
        >>> import tempfile, transformers
        >>> from reid_example.config import apply_overrides
        >>> where = tempfile.mkdtemp()
        >>> transformers.ResNetConfig(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1],
        ...                           layer_type="basic").save_pretrained(where)
        >>> options = [f"model.backbone=hf:{where}", "model.pretrained=false"]
        >>> cfg = apply_overrides(Config(), options)
        >>> model = build_hf_model(cfg.model, num_classes=4, vocab_size=1, image_size=(32, 16),
        ...                        text_length=8)
        >>> modalities = torch.tensor([int(m) for m in IMAGE_MODALITIES])  # RGB, NIR, SKETCH, CP
        >>> out = model(torch.rand(4, 3, 32, 16), torch.arange(4), None, None, modalities)
        >>> out.features.shape, out.embeddings.shape, out.logits.shape
        (torch.Size([4, 16]), torch.Size([4, 16]), torch.Size([4, 4]))

    Args:
        spec: the backbone's configuration (:func:`inspect_backbone`).
        backbone: the loaded model (``CLIPModel``, ``ResNetModel``, ``ViTModel`` or
            ``Dinov2Model``).
        num_classes: training identities (classifier outputs).
        pretrained: whether ``backbone`` holds pretrained weights (it sets the classifier's
            initial scale).
    """

    def __init__(
        self, spec: BackboneSpec, backbone: Any, *, num_classes: int, pretrained: bool
    ) -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.family = spec.family
        self.option = spec.option
        cfg = spec.config
        self.text: nn.Module | None = None
        self.text_projection: nn.Module | None = None
        self.visual_projection: nn.Module | None = None
        if spec.family == "clip":
            # the two towers and their projections; CLIP's own logit scale is not used
            self.vision = cast(nn.Module, backbone.vision_model)
            self.visual_projection = cast(nn.Module, backbone.visual_projection)
            self.text = cast(nn.Module, backbone.text_model)
            self.text_projection = cast(nn.Module, backbone.text_projection)
            self.embed_dim = int(cfg.projection_dim)
            first, width = self.vision.embeddings, int(cfg.vision_config.hidden_size)
        elif spec.family == "resnet":
            self.vision = backbone
            self.embed_dim = int(cfg.hidden_sizes[-1])
            first, width = backbone.embedder, int(cfg.embedding_size)
        else:  # vit, dinov2
            self.vision = backbone
            self.embed_dim = int(cfg.hidden_size)
            first, width = backbone.embeddings, int(cfg.hidden_size)
        # One embedding per image modality (rows indexed by the Modality code), zero at first.
        self.modality_embedding = nn.Parameter(torch.zeros(len(IMAGE_MODALITIES), width))
        self._image_modalities: torch.Tensor | None = None
        cast(nn.Module, first).register_forward_hook(self._add_modality_embedding)
        self.bnneck = nn.BatchNorm1d(self.embed_dim)
        self.bnneck.bias.requires_grad_(False)
        self.classifier = nn.Linear(self.embed_dim, num_classes, bias=False)
        # Pretrained features: BoT's small classifier init (0.001). From scratch: unit-scale
        # logits, as the built-in trunk, so the tower gets gradient from the first step.
        std = 0.001 if pretrained else self.embed_dim**-0.5
        nn.init.normal_(self.classifier.weight, std=std)

    def _add_modality_embedding(
        self, module: nn.Module, args: tuple[Any, ...], output: torch.Tensor
    ) -> torch.Tensor:
        """Forward hook on the tower's first block: add each row's modality embedding."""
        codes = self._image_modalities
        if codes is None:
            return output
        emb = self.modality_embedding.index_select(0, codes).to(output.dtype)
        # a ResNet stem gives [B, C, H, W]; a patch embedding [B, tokens, width]
        return output + (emb[:, :, None, None] if output.dim() == 4 else emb[:, None, :])

    def decays(self, name: str, param: nn.Parameter) -> bool:
        """Weight decay on every matrix and kernel except position, class, mask and register
        tokens and the modality embeddings; never on norms and biases."""
        return param.ndim > 1 and not any(part in name for part in _NO_DECAY)

    def image_features(self, images: torch.Tensor, modalities: torch.Tensor) -> torch.Tensor:
        """Features ``[B, embed_dim]`` of image rows whose modality codes are ``modalities``."""
        self._image_modalities = modalities
        try:
            if self.family == "resnet":
                return cast(torch.Tensor, self.vision(pixel_values=images).pooler_output.flatten(1))
            if self.family == "dinov2":  # interpolates its positions to any size itself
                return cast(torch.Tensor, self.vision(pixel_values=images).last_hidden_state[:, 0])
            out = self.vision(pixel_values=images, interpolate_pos_encoding=True)
            if self.visual_projection is not None:
                return cast(torch.Tensor, self.visual_projection(out.pooler_output))
            return cast(torch.Tensor, out.last_hidden_state[:, 0])
        finally:
            self._image_modalities = None

    def text_features(self, tokens: torch.Tensor) -> torch.Tensor:
        """Features ``[B, embed_dim]`` of captions given as shifted ids (``0`` = padding).

        No attention mask is needed: CLIP's text attention is causal and pools at the end token,
        so the padding after it cannot reach the pooled feature.
        """
        if self.text is None or self.text_projection is None:
            raise ValueError(
                f"model.backbone={self.option!r} ({self.family}) has no text tower, but the "
                "batch holds TEXT samples: use a CLIP backbone, or data without captions"
            )
        ids = (tokens - 1).clamp_min(0)
        return cast(torch.Tensor, self.text_projection(self.text(input_ids=ids).pooler_output))

    def encode(
        self,
        images: torch.Tensor | None,
        image_modalities: torch.Tensor | None,
        tokens: torch.Tensor | None,
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """Features of the image rows and of the text rows (each in its input order)."""
        img_feat: torch.Tensor | None = None
        if images is not None and images.shape[0] > 0:
            if image_modalities is None:
                raise ValueError("image_modalities is required with images")
            img_feat = self.image_features(images, image_modalities).float()
        txt_feat: torch.Tensor | None = None
        if tokens is not None and tokens.shape[0] > 0:
            txt_feat = self.text_features(tokens).float()
        return img_feat, txt_feat

    def forward(
        self,
        images: torch.Tensor | None,
        image_rows: torch.Tensor | None,
        tokens: torch.Tensor | None,
        text_rows: torch.Tensor | None,
        modalities: torch.Tensor,
        image_counts: Sequence[int] | None = None,
    ) -> EmbeddingOutput:
        """Features, BNNeck embeddings and logits in batch order.

        ``image_counts`` (images grouped by modality, see the built-in
        :meth:`~reid_example.model.ReIDModel.encode`) is accepted and not needed: every image
        row goes through the one tower, its modality embedding gathered by its code.
        """
        img_mods = None if image_rows is None else modalities.index_select(0, image_rows)
        img_feat, txt_feat = self.encode(images, img_mods, tokens)
        return self.batch_output(modalities, image_rows, img_feat, text_rows, txt_feat)


def _load(spec: BackboneSpec, pretrained: bool) -> Any:
    """The ``transformers`` model of ``spec``: its saved weights, or a random init."""
    transformers = _transformers()
    cls = getattr(transformers, FAMILIES[spec.family])
    # ViT's pooler (dense + tanh on the CLS token) is not used: the CLS token itself is
    kwargs: dict[str, Any] = {"add_pooling_layer": False} if spec.family == "vit" else {}
    if not pretrained:
        return cls(spec.config, **kwargs)
    try:
        # float32 weights whatever dtype they were saved in: autocast handles precision
        return cls.from_pretrained(spec.location, dtype=torch.float32, **kwargs)
    except OSError as err:
        raise OSError(
            f"model.backbone={spec.option!r}: no weights could be loaded from {spec.location!r} "
            f"({err}); model.pretrained=false builds the model from its config.json alone"
        ) from err


def build_hf_model(
    model_cfg: ModelConfig,
    *,
    num_classes: int,
    vocab_size: int,
    image_size: tuple[int, int],
    text_length: int,
) -> HFReIDModel:
    """The :class:`HFReIDModel` of ``model.backbone = "hf:..."`` and the other ``model.*``
    options (``pretrained``, ``gradient_checkpointing``, ``last_stride``).

    Args:
        model_cfg: the model options.
        num_classes: training identities.
        vocab_size: the data's tokenizer ``vocab_size`` (one more than its largest shifted id).
        image_size: ``(height, width)`` of the data's images.
        text_length: ``data.text_length``.

    Raises:
        ValueError: a size or a tokenizer the backbone cannot take, ``model.last_stride`` other
            than 1 or 2, gradient checkpointing on a backbone without it, and the errors of
            :func:`inspect_backbone`.
        OSError: weights that cannot be loaded.
    """
    if model_cfg.last_stride not in (1, 2):
        raise ValueError(f"model.last_stride must be 1 or 2, got {model_cfg.last_stride}")
    spec = inspect_backbone(model_cfg.backbone)
    spec.check_image_size(image_size)
    text = spec.text_config
    if text is not None:
        if vocab_size - 1 > int(text.vocab_size):
            raise ValueError(
                f"model.tokenizer: the data's tokenizer has {vocab_size - 1} tokens but the text "
                f"tower of model.backbone={spec.option!r} embeds {text.vocab_size}"
            )
        if text_length > int(text.max_position_embeddings):
            raise ValueError(
                f"data.text_length={text_length} exceeds the {text.max_position_embeddings} "
                f"positions of the text tower of model.backbone={spec.option!r}"
            )
    backbone = _load(spec, model_cfg.pretrained)
    if model_cfg.gradient_checkpointing:
        if not getattr(backbone, "supports_gradient_checkpointing", False):
            raise ValueError(
                f"model.gradient_checkpointing=true: {type(backbone).__name__} "
                f"({spec.option}) does not support gradient checkpointing"
            )
        kwargs = {"use_reentrant": False}
        if hasattr(backbone, "activation_checkpointing_enable"):  # its name from transformers 5
            backbone.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
        else:
            backbone.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    if spec.family == "resnet" and model_cfg.last_stride == 1:
        # the first block of the last stage downsamples (its shortcut and one conv); stride 1
        # keeps the previous stage's resolution, as ReID ResNets do
        first_block = cast(nn.Module, backbone.encoder.stages[-1].layers[0])
        for conv in first_block.modules():
            if isinstance(conv, nn.Conv2d) and conv.stride == (2, 2):
                conv.stride = (1, 1)
    model = HFReIDModel(spec, backbone, num_classes=num_classes, pretrained=model_cfg.pretrained)
    log.info(
        "hf backbone %s (%s, %s): %d-d features, images %dx%d",
        spec.location,
        type(backbone).__name__,
        "pretrained" if model_cfg.pretrained else "random init",
        model.embed_dim,
        *image_size,
    )
    return model
