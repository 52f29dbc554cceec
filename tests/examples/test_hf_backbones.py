"""``model.backbone = "hf:<dir>"``: CLIP, ResNet, ViT and DINOv2 through ``transformers``, offline.

Tiny random models are written with ``save_pretrained`` to a temporary directory (CLIP with a
small character-level tokenizer written here), then loaded the way a user's downloaded model is:

* the adapter's output against references computed with the ``transformers`` models themselves
  (features, projections, batch order, BNNeck, modality embeddings, the shift of token ids);
* weights, parameter groups, last stride, gradient checkpointing, bf16 autocast, image size and
  normalisation taken from the backbone;
* every refusal names the option to change (missing extra, not a model, an image size or a
  tokenizer the backbone cannot take, ...);
* the trainer on the fixture trees of every real layout and on the synthetic data, a tiny CLIP
  trained end to end, and an exact checkpoint / resume round trip;
* a bf16 run on CUDA (marked ``gpu``).
"""

from __future__ import annotations

import copy
import doctest
import json
import math
import string
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F

transformers = pytest.importorskip("transformers")

from reid_example.builders import build_data  # noqa: E402
from reid_example.config import Config, apply_overrides  # noqa: E402
from reid_example.hf_backbone import HFReIDModel, data_inputs, inspect_backbone  # noqa: E402
from reid_example.model import build_model, param_groups  # noqa: E402

from sdmreid import Modality  # noqa: E402
from tests.examples.test_data_layouts import png, sysu_tree  # noqa: E402
from tests.examples.test_trainer import run  # noqa: E402
from tests.examples.test_trainer_layouts import write_manifest  # noqa: E402
from tests.examples.test_trainer_resume import assert_same_run, resume  # noqa: E402

SIZE = (32, 16)  # every model here takes 32x16 images (8-pixel patches: 4x2 tokens)
TEXT_LENGTH = 24


def _clip_tokenizer() -> Any:
    """A CLIP tokenizer over single letters (no merges): 26 + 26 word-final letters + 2."""
    vocab: dict[str, int] = {}
    for suffix in ("", "</w>"):
        for c in string.ascii_lowercase:
            vocab[c + suffix] = len(vocab)
    for special in ("<|startoftext|>", "<|endoftext|>"):
        vocab[special] = len(vocab)
    return transformers.CLIPTokenizer(vocab=vocab, merges=[])


def _clip_config(tok: Any, vocab_size: int | None = None, eos: int | None = None) -> Any:
    text = {
        "vocab_size": vocab_size or len(tok),
        "hidden_size": 16,
        "intermediate_size": 32,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
        "max_position_embeddings": 32,
        "eos_token_id": tok.eos_token_id if eos is None else eos,
        "bos_token_id": tok.bos_token_id,
        "pad_token_id": tok.pad_token_id,
    }
    vision = {
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "image_size": 32,
        "patch_size": 8,
    }
    return transformers.CLIPConfig(text_config=text, vision_config=vision, projection_dim=24)


@pytest.fixture(scope="module")
def hf(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Tiny random models saved with ``save_pretrained``, one directory per family."""
    root = tmp_path_factory.mktemp("hf")
    torch.manual_seed(0)
    tok = _clip_tokenizer()
    dirs = {name: root / name for name in ("clip", "resnet", "vit", "dinov2")}
    transformers.CLIPModel(_clip_config(tok)).save_pretrained(dirs["clip"])
    tok.save_pretrained(dirs["clip"])
    resnet = transformers.ResNetConfig(
        embedding_size=8, hidden_sizes=[8, 8, 16, 16], depths=[1, 1, 1, 1], layer_type="basic"
    )
    transformers.ResNetModel(resnet).save_pretrained(dirs["resnet"])
    small = {"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1}
    small |= {"num_attention_heads": 2, "image_size": 32, "patch_size": 8}
    vit = transformers.ViTModel(transformers.ViTConfig(**small), add_pooling_layer=False)
    vit.save_pretrained(dirs["vit"])
    transformers.Dinov2Model(transformers.Dinov2Config(**small)).save_pretrained(dirs["dinov2"])
    return dirs


def _cfg(path: Path, *extra: str) -> Config:
    return apply_overrides(
        Config(),
        [
            f"model.backbone=hf:{path}",
            f"data.image_height={SIZE[0]}",
            f"data.image_width={SIZE[1]}",
            f"data.text_length={TEXT_LENGTH}",
            *extra,
        ],
    )


def _model(path: Path, *extra: str, num_classes: int = 5) -> HFReIDModel:
    cfg = _cfg(path, *extra)
    inputs = data_inputs(cfg, default_size=SIZE)
    model = build_model(
        cfg.model,
        num_classes=num_classes,
        vocab_size=inputs.tokenizer.vocab_size,
        image_size=inputs.image_size,
        text_length=cfg.data.text_length,
    )
    assert isinstance(model, HFReIDModel)
    return model


def _images(n: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 3, *SIZE, generator=torch.Generator().manual_seed(seed))


def _tokens(model_dir: Path, captions: list[str]) -> torch.Tensor:
    """Captions as the data pipeline gives them: shifted ids, right-padded with 0."""
    inputs = data_inputs(_cfg(model_dir), default_size=SIZE)
    rows = [inputs.tokenizer.encode(c, TEXT_LENGTH) for c in captions]
    return torch.nn.utils.rnn.pad_sequence(rows, batch_first=True, padding_value=0)


def _raw(model_dir: Path, family: str) -> Any:
    """The saved ``transformers`` model itself: the independent reference."""
    name = {"clip": "CLIPModel", "resnet": "ResNetModel", "vit": "ViTModel"}[family]
    kwargs = {"add_pooling_layer": False} if family == "vit" else {}
    return getattr(transformers, name).from_pretrained(model_dir, **kwargs).eval()


def test_docstring_examples() -> None:
    import reid_example.hf_backbone as module

    result = doctest.testmod(module, optionflags=doctest.NORMALIZE_WHITESPACE | doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0


# -- the adapter's output -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("family", "width"), [("clip", 24), ("resnet", 16), ("vit", 16), ("dinov2", 16)]
)
def test_each_family_gives_the_trainer_output_in_batch_order(
    hf: dict[str, Path], family: str, width: int
) -> None:
    torch.manual_seed(0)
    model = _model(hf[family], num_classes=5)
    assert model.embed_dim == width
    codes = [Modality.NIR, Modality.RGB, Modality.SKETCH, Modality.CPENCIL, Modality.RGB]
    modalities = torch.tensor([int(m) for m in codes])
    # image rows in a shuffled batch order
    image_rows = torch.tensor([3, 0, 4, 1, 2])
    images = _images(5)
    out = model(images, image_rows, None, None, modalities)
    assert out.features.dtype == torch.float32 and out.features.shape == (5, width)
    # each row alone, in eval mode (no batch statistics): the same feature at its batch row
    model.eval()
    with torch.no_grad():
        for i, row in enumerate(image_rows.tolist()):
            one = modalities[row : row + 1]
            alone = model(images[i : i + 1], torch.tensor([0]), None, None, one)
            torch.testing.assert_close(alone.features[0], out.features[row], atol=1e-5, rtol=1e-4)
    # BNNeck in training mode: (x - batch mean) / sqrt(biased var + eps) * weight (bias 0)
    f = out.features.detach().double()
    expected = (f - f.mean(0)) / torch.sqrt(f.var(0, unbiased=False) + model.bnneck.eps)
    expected = expected * model.bnneck.weight.detach().double()
    torch.testing.assert_close(out.embeddings.detach().double(), expected, atol=1e-5, rtol=1e-4)
    logits = expected @ model.classifier.weight.detach().double().T
    torch.testing.assert_close(out.logits.detach().double(), logits, atol=1e-6, rtol=1e-4)


def test_clip_features_are_the_towers_with_their_projections(hf: dict[str, Path]) -> None:
    model = _model(hf["clip"]).eval()
    raw = _raw(hf["clip"], "clip")
    captions = ["a man in a red coat", "someone", "a woman with a bag and black shoes"]
    tokens = _tokens(hf["clip"], captions)
    images = _images(2)
    modalities = torch.tensor([int(Modality.TEXT), 0, int(Modality.TEXT), 0, int(Modality.TEXT)])
    with torch.no_grad():
        out = model(images, torch.tensor([1, 3]), tokens, torch.tensor([0, 2, 4]), modalities)
        expected_images = raw.get_image_features(
            pixel_values=images, interpolate_pos_encoding=True
        ).pooler_output
        tok = transformers.AutoTokenizer.from_pretrained(hf["clip"])
        # each caption alone, unpadded, with the tokenizer's own ids (the last one is cut to
        # data.text_length, its end token kept)
        ids = [tok(c, truncation=True, max_length=TEXT_LENGTH)["input_ids"] for c in captions]
        assert len(ids[2]) == TEXT_LENGTH and ids[2][-1] == tok.eos_token_id
        expected_text = torch.cat(
            [raw.get_text_features(input_ids=torch.tensor([i])).pooler_output for i in ids]
        )
    torch.testing.assert_close(out.features[[1, 3]], expected_images, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(out.features[[0, 2, 4]], expected_text, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("family", ["resnet", "vit"])
def test_modality_embeddings_start_at_zero_and_shift_the_first_feature_map(
    hf: dict[str, Path], family: str
) -> None:
    model = _model(hf[family], "model.last_stride=2").eval()  # the ResNet as saved
    raw = _raw(hf[family], family)
    images = _images(4)
    rows = torch.arange(4)

    def reference(shift: torch.Tensor) -> torch.Tensor:
        """The saved model with ``shift`` [4, width] added to its first block's output (that
        block's ``forward`` wrapped for the call)."""
        first = raw.embedder if family == "resnet" else raw.embeddings
        forward = first.forward
        view = shift[:, :, None, None] if family == "resnet" else shift[:, None, :]
        first.forward = lambda *args, **kwargs: forward(*args, **kwargs) + view
        try:
            if family == "resnet":
                return raw(pixel_values=images).pooler_output.flatten(1)
            out = raw(pixel_values=images, interpolate_pos_encoding=True)
            return out.last_hidden_state[:, 0]
        finally:
            del first.forward

    codes = torch.tensor([int(Modality.RGB), int(Modality.NIR), int(Modality.SKETCH), 3])
    width = model.modality_embedding.shape[1]
    with torch.no_grad():
        # at the start every modality reads the pretrained tower unchanged
        start = model(images, rows, None, None, codes).features
        torch.testing.assert_close(start, reference(torch.zeros(4, width)), atol=1e-5, rtol=1e-4)
        table = torch.randn(4, width, generator=torch.Generator().manual_seed(3))
        model.modality_embedding.copy_(table)
        moved = model(images, rows, None, None, codes).features
        torch.testing.assert_close(moved, reference(table[codes]), atol=1e-5, rtol=1e-4)
        # a copy (the weight average is one) adds its own embeddings, not the original's
        twin = copy.deepcopy(model)
        twin.modality_embedding.zero_()
        torch.testing.assert_close(twin(images, rows, None, None, codes).features, start)
        torch.testing.assert_close(model(images, rows, None, None, codes).features, moved)


def test_weights_are_the_saved_ones_unless_pretrained_is_false(hf: dict[str, Path]) -> None:
    from safetensors.torch import load_file

    saved = load_file(hf["vit"] / "model.safetensors")
    key = next(k for k in saved if k.endswith("patch_embeddings.projection.weight"))
    name = "vision." + key.split(".", 1)[1] if key.startswith("vit.") else "vision." + key
    pretrained = dict(_model(hf["vit"]).named_parameters())
    torch.testing.assert_close(pretrained[name].detach(), saved[key], atol=0, rtol=0)
    torch.manual_seed(1)
    scratch = dict(_model(hf["vit"], "model.pretrained=false").named_parameters())
    assert scratch[name].shape == saved[key].shape
    assert not torch.equal(scratch[name].detach(), saved[key])


def test_param_groups_split_backbone_and_head_learning_rates(hf: dict[str, Path]) -> None:
    model = _model(hf["vit"])
    groups = param_groups(model, lr=1e-5, head_lr=3e-3, weight_decay=0.05)
    by_name = {str(g["name"]): g for g in groups}
    names = {id(p): n for n, p in model.named_parameters()}

    def members(group: str) -> set[str]:
        return {names[id(p)] for p in by_name[group]["params"]}  # type: ignore[attr-defined]

    assert by_name["backbone"]["lr"] == by_name["backbone_no_decay"]["lr"] == 1e-5
    assert by_name["head"]["lr"] == 3e-3 and by_name["backbone_no_decay"]["weight_decay"] == 0.0
    assert members("head") == {"bnneck.weight", "classifier.weight"}  # the bias is frozen
    no_decay = members("backbone_no_decay")
    assert {"modality_embedding", "vision.embeddings.cls_token"} <= no_decay
    assert "vision.embeddings.position_embeddings" in no_decay
    assert all(p.ndim == 1 for n, p in model.named_parameters() if n.endswith(".bias"))
    assert "vision.embeddings.patch_embeddings.projection.weight" in members("backbone")
    # every trainable parameter is in exactly one group
    listed = [names[id(p)] for g in groups for p in g["params"]]  # type: ignore[attr-defined]
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert sorted(listed) == sorted(trainable)


def test_resnet_last_stride_keeps_the_previous_stage_resolution(hf: dict[str, Path]) -> None:
    images = _images(2)
    maps = {}
    for stride in (1, 2):
        model = _model(hf["resnet"], f"model.last_stride={stride}").eval()
        with torch.no_grad():
            hidden = model.vision(pixel_values=images, output_hidden_states=True).hidden_states
        maps[stride] = (hidden[-2].shape[-2:], hidden[-1].shape[-2:])
    # 32x16 input: stem /4 -> 8x4, stages /1 /2 /2 /2 -> 8x4, 4x2, 2x1, then 1x1 or 2x1
    assert maps[2] == ((2, 1), (1, 1))
    assert maps[1] == ((2, 1), (2, 1))


def test_gradient_checkpointing_gives_the_same_loss_and_gradients(hf: dict[str, Path]) -> None:
    images, modalities = _images(4), torch.tensor([0, 1, 0, 1, 4, 4])
    tokens = _tokens(hf["clip"], ["a red coat", "blue jeans"])
    results = []
    for flag in ("false", "true"):
        torch.manual_seed(0)
        model = _model(hf["clip"], f"model.gradient_checkpointing={flag}").train()
        out = model(images, torch.arange(4), tokens, torch.tensor([4, 5]), modalities)
        loss = F.cross_entropy(out.logits, torch.tensor([0, 0, 1, 1, 2, 3])) + out.features.sum()
        loss.backward()
        results.append((loss.detach(), {n: p.grad for n, p in model.named_parameters()}))
    (loss0, grads0), (loss1, grads1) = results
    torch.testing.assert_close(loss1, loss0)
    assert grads0.keys() == grads1.keys()
    for name, grad in grads0.items():
        if grad is None:
            assert grads1[name] is None, name
        else:
            torch.testing.assert_close(grads1[name], grad, atol=1e-6, rtol=1e-5, msg=name)


def test_bf16_autocast_and_channels_last_give_float32_features(hf: dict[str, Path]) -> None:
    model = _model(hf["resnet"]).eval()
    images = _images(4)
    codes = torch.tensor([0, 1, 2, 3])
    with torch.no_grad():
        ref = model(images, torch.arange(4), None, None, codes).features
        model = model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        fast = images.contiguous(memory_format=torch.channels_last)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            got = model(fast, torch.arange(4), None, None, codes)
    assert got.features.dtype == torch.float32
    assert float((got.features - ref).norm() / ref.norm()) < 0.05


# -- inputs taken from the backbone -------------------------------------------------------------


def test_image_size_and_normalisation_come_from_the_backbone(
    hf: dict[str, Path], tmp_path: Path
) -> None:
    def inputs(path: Path, *extra: str) -> Any:
        cfg = apply_overrides(Config(), [f"model.backbone=hf:{path}", *extra])
        return data_inputs(cfg, default_size=(256, 128))

    clip = inputs(hf["clip"])  # no image processor: the vision config's size, CLIP's statistics
    assert clip.image_size == (32, 32)
    assert clip.mean == pytest.approx(transformers.utils.constants.OPENAI_CLIP_MEAN)
    assert clip.std == pytest.approx(transformers.utils.constants.OPENAI_CLIP_STD)
    resnet = inputs(hf["resnet"])  # no size anywhere: the data set's default, ImageNet's
    assert resnet.image_size == (256, 128)
    assert resnet.mean == pytest.approx(transformers.utils.constants.IMAGENET_DEFAULT_MEAN)
    # an image processor's crop size and statistics win over the config; data.* over both
    with_processor = tmp_path / "vit"
    with_processor.mkdir()
    (with_processor / "config.json").write_text((hf["vit"] / "config.json").read_text())
    processor = {"crop_size": {"height": 48, "width": 24}, "size": {"shortest_edge": 64}}
    processor |= {"image_mean": [0.5, 0.4, 0.3], "image_std": [0.2, 0.25, 0.5]}
    (with_processor / "preprocessor_config.json").write_text(json.dumps(processor))
    vit = inputs(with_processor)
    assert (vit.image_size, vit.mean, vit.std) == ((48, 24), (0.5, 0.4, 0.3), (0.2, 0.25, 0.5))
    assert inputs(with_processor, "data.image_height=64").image_size == (64, 24)
    assert inputs(with_processor, "data.image_width=16").image_size == (48, 16)


def test_the_data_pipeline_uses_the_backbone_normalisation_and_tokenizer(
    hf: dict[str, Path],
) -> None:
    cfg = _cfg(hf["clip"], "data.identities_per_split=4,2,2", "data.augment=false")
    data = build_data(cfg)
    assert data.image_size == SIZE
    tok = transformers.AutoTokenizer.from_pretrained(hf["clip"])
    assert data.vocab_size == len(tok) + 1
    text_index = int(np.flatnonzero(data.val.modalities == int(Modality.TEXT))[0])
    caption = data.val.texts[text_index]  # type: ignore[attr-defined]
    expected = torch.tensor(tok(caption, truncation=True, max_length=TEXT_LENGTH)["input_ids"])
    assert torch.equal(data.val[text_index]["tokens"], expected + 1)
    # the same raw image through both splits' transforms: (x / 255 - mean) / std, CLIP's mean
    index = int(np.flatnonzero(data.val.modalities == int(Modality.RGB))[0])
    raw = data.val.raw_image(index).double() / 255  # type: ignore[attr-defined]
    mean = torch.tensor(transformers.utils.constants.OPENAI_CLIP_MEAN, dtype=torch.float64)
    std = torch.tensor(transformers.utils.constants.OPENAI_CLIP_STD, dtype=torch.float64)
    assert raw.shape[-2:] == SIZE  # rendered at the data size: nothing to resize
    expected_image = (raw - mean[:, None, None]) / std[:, None, None]
    got = data.val[index]["image"].double()
    torch.testing.assert_close(got, expected_image, atol=2e-3, rtol=0)


# -- refusals, each naming the option -------------------------------------------------------------


def test_a_missing_transformers_names_the_extra(
    hf: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "transformers", None)  # import transformers -> ImportError
    with pytest.raises(ImportError, match=r"pip install 'sdmreid\[hf\]'"):
        data_inputs(_cfg(hf["vit"]), default_size=SIZE)


def test_a_directory_that_is_not_a_supported_model_is_refused(
    hf: dict[str, Path], tmp_path: Path
) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    a_file = tmp_path / "weights.bin"
    a_file.write_bytes(b"\0")
    bert = tmp_path / "bert"
    transformers.BertConfig(hidden_size=8, num_hidden_layers=1).save_pretrained(bert)
    garbage = tmp_path / "garbage"
    garbage.mkdir()
    (garbage / "config.json").write_text('{"hidden_size": 8}')
    cases = [
        (empty, "has no config.json"),
        (a_file, "is a file"),
        (tmp_path / "no" / "such" / "dir", "no directory"),
        (bert, "'bert' model is not supported; supported model types: clip, resnet, vit"),
        (garbage, "is not a supported model"),
    ]
    for path, message in cases:
        with pytest.raises(ValueError, match=r"model.backbone='hf:") as err:
            inspect_backbone(f"hf:{path}")
        assert message in str(err.value), (path, str(err.value))
    config_only = tmp_path / "config-only"
    vit = {"hidden_size": 8, "num_hidden_layers": 1, "num_attention_heads": 2}
    transformers.ViTConfig(**vit).save_pretrained(config_only)
    with pytest.raises(OSError, match=r"model.pretrained=false builds the model"):
        _model(config_only)
    assert _model(config_only, "model.pretrained=false").embed_dim == 8


def test_a_hub_id_that_cannot_be_fetched_names_the_offline_cache(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``org/name`` with no such local directory is a hub id, fetched by ``transformers``; its
    failure (no network, not cached) is reported with the way to work offline."""
    seen: list[str] = []

    def unreachable(location: str, *args: Any, **kwargs: Any) -> Any:
        seen.append(location)
        raise OSError("We couldn't connect to 'https://huggingface.co'")

    monkeypatch.setattr(transformers.AutoConfig, "from_pretrained", unreachable)
    with pytest.raises(OSError, match=r"no local directory 'someone/tiny-clip'.*HF_HUB_OFFLINE=1"):
        inspect_backbone("hf:someone/tiny-clip")
    assert seen == ["someone/tiny-clip"]


@pytest.mark.parametrize("family", ["vit", "clip"])
def test_an_image_size_the_backbone_cannot_take_names_the_option(
    hf: dict[str, Path], family: str
) -> None:
    for bad in (["data.image_height=36"], ["data.image_width=20"]):
        with pytest.raises(ValueError, match=r"data.image_height=\d+ / data.image_width=\d+"):
            data_inputs(_cfg(hf[family], *bad), default_size=SIZE)
    cfg = _cfg(hf[family])
    with pytest.raises(ValueError, match=r"multiples of 8"):
        build_model(cfg.model, num_classes=3, vocab_size=55, image_size=(30, 16), text_length=8)


def test_a_tokenizer_that_does_not_match_the_text_tower_names_the_option(
    hf: dict[str, Path], tmp_path: Path
) -> None:
    tok = _clip_tokenizer()
    tok.add_tokens(["<|extra|>"])  # one more id than the text tower embeds
    tok.save_pretrained(tmp_path / "bigger")
    with pytest.raises(ValueError, match=r"model.tokenizer=.*has 55 tokens but the text tower"):
        data_inputs(_cfg(hf["clip"], f"model.tokenizer={tmp_path / 'bigger'}"), SIZE)
    # a text tower that pools at another end token
    other = tmp_path / "other-eos"
    transformers.CLIPModel(_clip_config(_clip_tokenizer(), eos=7)).save_pretrained(other)
    _clip_tokenizer().save_pretrained(other)
    with pytest.raises(ValueError, match=r"end token is id 53.*pools at id 7"):
        data_inputs(_cfg(other), SIZE)
    # a CLIP directory without a tokenizer
    bare = tmp_path / "bare"
    transformers.CLIPModel(_clip_config(_clip_tokenizer())).save_pretrained(bare)
    with pytest.raises(ValueError, match=r"model.tokenizer='' \(the tokenizer of model.backbone"):
        data_inputs(_cfg(bare), SIZE)
    # the model side: a data tokenizer larger than the embedding table
    cfg = _cfg(hf["clip"])
    with pytest.raises(ValueError, match=r"model.tokenizer: the data's tokenizer has 99 tokens"):
        build_model(cfg.model, num_classes=3, vocab_size=100, image_size=SIZE, text_length=8)


def test_a_text_length_beyond_the_text_tower_names_the_option(hf: dict[str, Path]) -> None:
    with pytest.raises(ValueError, match=r"data.text_length=33 exceeds the 32 positions"):
        data_inputs(_cfg(hf["clip"], "data.text_length=33"), SIZE)


def test_captions_need_a_text_tower(hf: dict[str, Path]) -> None:
    model = _model(hf["resnet"])
    tokens = torch.tensor([[3, 4, 5]])
    with pytest.raises(ValueError, match=r"model.backbone=.*\(resnet\) has no text tower"):
        model(_images(2), torch.tensor([0, 1]), tokens, torch.tensor([2]), torch.tensor([0, 1, 4]))


def test_options_a_backbone_cannot_follow_are_refused(hf: dict[str, Path]) -> None:
    with pytest.raises(ValueError, match=r"model.gradient_checkpointing=true: ResNetModel"):
        _model(hf["resnet"], "model.gradient_checkpointing=true")
    with pytest.raises(ValueError, match=r"model.last_stride must be 1 or 2, got 3"):
        _model(hf["resnet"], "model.last_stride=3")


def test_a_caption_needs_room_for_its_start_and_end_tokens(hf: dict[str, Path]) -> None:
    tokenizer = data_inputs(_cfg(hf["clip"]), SIZE).tokenizer
    assert tokenizer.encode("abc", 2).tolist() == [53, 54]  # <start> <end>, shifted by one
    with pytest.raises(ValueError, match=r"max_len must be an int >= 2, got 1"):
        tokenizer.encode("abc", 1)
    with pytest.raises(TypeError, match=r"text must be a str"):
        tokenizer.encode(None, 8)  # type: ignore[arg-type]


# -- the trainer ------------------------------------------------------------------------------


def _llcm_tree(root: Path) -> None:
    """4 training and 3 test identities, visible and NIR images on LLCM's cameras."""
    (root / "idx").mkdir(parents=True)
    for split, ids in (("train", range(1, 5)), ("test", range(5, 8))):
        for name, mode, cams in (("vis", "RGB", (1, 2)), ("nir", "L", (1, 4))):
            lines = []
            for pid in ids:
                for cam in cams:
                    rel = f"{split}_{name}/cam{cam}/{pid:04d}/{pid:04d}_c{cam:02d}_s1_f1_{name}.jpg"
                    png(root / rel, 20 * pid + cam, mode)
                    lines.append(f"{rel} {pid}")
            (root / "idx" / f"{split}_{name}.txt").write_text("\n".join(lines) + "\n")


def _regdb_tree(root: Path) -> None:
    (root / "idx").mkdir(parents=True)
    for split, ids in (("train", range(4)), ("test", range(4, 7))):
        for modality, folder, mode in (("visible", "Visible", "RGB"), ("thermal", "Thermal", "L")):
            lines = []
            for pid in ids:
                for k in range(2):
                    rel = f"{folder}/{pid}/{k}.bmp"
                    png(root / rel, 30 * pid + k, mode)
                    lines.append(f"{rel} {pid}")
            (root / "idx" / f"{split}_{modality}_1.txt").write_text("\n".join(lines) + "\n")


def _prcv_manifest(root: Path) -> Path:
    """A PRCV/ORBench-style JSON manifest: 6 training and 3 test identities, all modalities."""
    people = []
    for pid in range(9):
        entry: dict[str, Any] = {"id": pid, "split": "train" if pid < 6 else "test"}
        for key, mode in (("rgb", "RGB"), ("nir", "L"), ("sketch", "L"), ("cp", "RGB")):
            count = 2 if key == "rgb" else 1
            entry[key] = [
                png(root / f"{pid}_{key}_{k}.png", 25 * pid + k, mode).name for k in range(count)
            ]
        entry["text"] = [f"a person number {'abcdefghi'[pid]} in a coat", "someone walking"]
        people.append(entry)
    path = root / "manifest.json"
    path.write_text(json.dumps({"identities": people}))
    return path


LAYOUT_RUN = (
    f"data.image_height={SIZE[0]}",
    f"data.image_width={SIZE[1]}",
    f"data.text_length={TEXT_LENGTH}",
    "train.epochs=1",
    "train.max_steps_per_epoch=3",
    "eval.every=1",
    "eval.trials=2",
    "output.plots=false",
    "sampler.num_identities=2",
    "sampler.num_instances=2",
    "sampler.kind=pk",
)


@pytest.mark.parametrize(
    ("layout", "family"),
    [("sysu", "resnet"), ("regdb", "vit"), ("llcm", "dinov2"), ("prcv", "clip"), ("csv", "vit")],
)
def test_trainer_runs_every_real_layout(
    hf: dict[str, Path], tmp_path: Path, layout: str, family: str
) -> None:
    data = tmp_path / "data"
    data.mkdir()
    root: Path = data
    if layout == "sysu":
        sysu_tree(data)
    elif layout == "regdb":
        _regdb_tree(data)
    elif layout == "llcm":
        _llcm_tree(data)
    elif layout == "prcv":
        root = _prcv_manifest(data)
    else:
        root = write_manifest(data)
    summary = run(
        tmp_path / "runs",
        layout,
        f"data.dataset={layout}",
        f"data.root={root}",
        f"model.backbone=hf:{hf[family]}",
        *LAYOUT_RUN,
    )
    assert not summary["stopped"] and summary["global_step"] >= 1
    assert summary["test"] and all(math.isfinite(m["mAP"]) for m in summary["test"].values())
    log = (Path(summary["run_dir"]) / "train.log").read_text()
    assert f"hf backbone {hf[family]}" in log


def test_trainer_runs_on_synthetic_data_without_captions(
    hf: dict[str, Path], tmp_path: Path
) -> None:
    summary = run(
        tmp_path,
        "resnet",
        f"model.backbone=hf:{hf['resnet']}",
        "data.preset=sysu",
        "data.identities_per_split=6,3,3",
        *LAYOUT_RUN[:4],
        "eval.every=1",
        "output.plots=false",
    )
    assert not summary["stopped"]
    assert set(summary["test"]) == {"NIR->RGB", "RGB->RGB"}


def _rows(summary: dict[str, Any], name: str) -> list[dict[str, Any]]:
    lines = (Path(summary["run_dir"]) / name).read_text().splitlines()
    return [json.loads(x) for x in lines]


def test_a_tiny_clip_trains_end_to_end_on_the_demo_data(
    hf: dict[str, Path], tmp_path: Path
) -> None:
    """Eight identities, all five modalities (captions through the CLIP text tower), 8 epochs
    of 7 steps: the cross-entropy falls and each evaluation scores every protocol."""
    summary = run(
        tmp_path,
        "clip",
        f"model.backbone=hf:{hf['clip']}",
        f"data.text_length={TEXT_LENGTH}",
        "data.identities_per_split=8,4,4",
        "train.epochs=8",
        "eval.every=4",
        "eval.train_ids=0",
        "output.plots=false",
        "optim.lr=3e-3",
        "optim.head_lr=3e-2",
        "optim.head_lr_after=3e-2",
        "optim.warmup_epochs=0.2",
    )
    assert not summary["stopped"] and summary["global_step"] == 8 * 7
    ce = [r["ce"] for r in _rows(summary, "steps.jsonl")]
    first, last = sum(ce[:10]) / 10, sum(ce[-10:]) / 10
    assert last < first - 0.1, (first, last)
    protocols = {"NIR->RGB", "SKETCH->RGB", "CPENCIL->RGB", "TEXT->RGB", "RGB->RGB"}
    assert set(summary["test"]) == protocols
    epochs = _rows(summary, "epochs.jsonl")
    assert [r["epoch"] for r in epochs if "val/select" in r] == [4, 8]
    assert all(math.isfinite(r["val/mAP/TEXT->RGB"]) for r in epochs if "val/select" in r)
    assert (Path(summary["run_dir"]) / "report.md").exists()


RESUME = (
    f"data.text_length={TEXT_LENGTH}",
    "data.identities_per_split=6,3,3",
    "train.epochs=2",
    "train.max_steps_per_epoch=3",
    "eval.every=1",
    "eval.train_ids=0",
    "eval.test_at_end=false",
    "output.plots=false",
    "optim.ema_decay=0.9",
)


def test_checkpoint_resume_round_trip_is_exact(hf: dict[str, Path], tmp_path: Path) -> None:
    options = [f"model.backbone=hf:{hf['clip']}", *RESUME]
    full = run(tmp_path / "full", "full", *options)
    assert full["global_step"] == 6
    part = run(tmp_path / "part", "part", *options, "train.stop_after_steps=2")
    assert part["stopped"] and part["global_step"] == 2
    resumed = resume(Path(part["run_dir"]) / "last.pt")
    assert resumed["global_step"] == 6
    assert_same_run(Path(full["run_dir"]), Path(part["run_dir"]))


CONFIGS = Path(__file__).resolve().parents[2] / "examples" / "configs"


@pytest.mark.parametrize(
    ("recipe", "family", "preset"),
    [
        ("sysu_resnet50", "resnet", "sysu"),
        ("sysu_clip", "clip", "sysu"),
        ("prcv_clip", "clip", "prcv"),
    ],
)
def test_each_recipe_trains_with_a_local_backbone(
    hf: dict[str, Path], tmp_path: Path, recipe: str, family: str, preset: str
) -> None:
    """A recipe file run as a user runs it, its backbone replaced by a tiny local one and its
    data set by the synthetic preset with the same modalities (two steps)."""
    import train

    overrides = [
        f"model.backbone=hf:{hf[family]}",
        "data.dataset=synthetic",
        f"data.preset={preset}",
        "data.identities_per_split=16,3,3",
        f"data.image_height={SIZE[0]}",
        f"data.image_width={SIZE[1]}",
        f"data.text_length={TEXT_LENGTH}",
        "data.num_workers=0",
        "train.device=cpu",
        "train.epochs=1",
        "train.max_steps_per_epoch=2",
        "eval.select_metric=mAP_mean",
        "eval.train_ids=0",
        "output.plots=false",
        "output.progress=off",
        "output.tensorboard=false",
        f"output.root={tmp_path}",
        "output.name=recipe",
    ]
    argv = ["--config", str(CONFIGS / f"{recipe}.toml")]
    for item in overrides:
        argv += ["--set", item]
    summary = train.main(argv)
    assert not summary["stopped"] and 1 <= summary["global_step"] <= 2
    assert all(math.isfinite(m["mAP"]) for m in summary["test"].values())
    written = (Path(summary["run_dir"]) / "config.toml").read_text()
    assert "last_stride = 1" in written and f'backbone = "hf:{hf[family]}"' in written


@pytest.mark.gpu
def test_gpu_bf16_clip_trains_with_the_recipe_options(hf: dict[str, Path], tmp_path: Path) -> None:
    """The ``sysu_clip`` recipe's model and loss options with a tiny CLIP, bf16 on CUDA, on the
    synthetic ``sysu`` preset; the run's images/s is in the summary."""
    summary = run(
        tmp_path,
        "gpu-clip",
        f"model.backbone=hf:{hf['clip']}",
        "train.device=cuda",
        "train.amp=bf16",
        "data.preset=sysu",
        "data.identities_per_split=32,8,8",
        "data.num_workers=2",
        "sampler.num_identities=8",
        "sampler.num_instances=8",
        "model.gradient_checkpointing=true",
        "train.epochs=2",
        "eval.every=2",
        "output.plots=false",
    )
    assert not summary["stopped"]
    log = (Path(summary["run_dir"]) / "train.log").read_text()
    assert "amp bfloat16" in log
    assert all(math.isfinite(r["ce"]) for r in _rows(summary, "epochs.jsonl"))
    assert all(math.isfinite(m["mAP"]) for m in summary["test"].values())
    assert summary["images_per_second"] > 0
