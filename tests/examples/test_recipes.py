"""The configuration files in ``examples/configs``: every one loads, and the published recipes say
what docs/recipes.md says they do (no dataset, no network and no ``transformers`` needed)."""

from __future__ import annotations

from pathlib import Path

import pytest
from reid_example.builders import build_data
from reid_example.config import Config, load_config

CONFIGS = Path(__file__).resolve().parents[2] / "examples" / "configs"
RECIPES = ("sysu_resnet50", "sysu_clip", "prcv_clip")


def _recipe(name: str) -> Config:
    return load_config(CONFIGS / f"{name}.toml")


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.toml")), ids=lambda p: p.stem)
def test_every_config_file_loads(path: Path) -> None:
    cfg = load_config(path)
    assert isinstance(cfg, Config)


def test_the_recipes_are_there() -> None:
    assert {p.stem for p in CONFIGS.glob("*.toml")} >= set(RECIPES)


@pytest.mark.parametrize("name", RECIPES)
def test_a_recipe_loads_without_its_data_and_asks_for_data_root(name: str) -> None:
    cfg = _recipe(name)
    assert cfg.data.root == ""
    assert cfg.model.backbone.startswith("hf:") and cfg.model.pretrained
    with pytest.raises(ValueError, match=r"data.root must point at the"):
        build_data(cfg)
    root = load_config(CONFIGS / f"{name}.toml", ["data.root=/data/somewhere"]).data.root
    assert root == "/data/somewhere"


def test_sysu_resnet50_follows_agw() -> None:
    cfg = _recipe("sysu_resnet50")
    assert cfg.model.backbone == "hf:microsoft/resnet-50" and cfg.model.last_stride == 1
    assert (cfg.data.image_height, cfg.data.image_width) == (288, 144)
    # AGW: 8 identities x 4 visible + 4 thermal images
    assert (cfg.sampler.num_identities, cfg.sampler.num_instances) == (8, 8)
    o = cfg.optim
    assert (o.optimizer, o.momentum, o.weight_decay, o.warmup_epochs) == ("sgd", 0.9, 5e-4, 10.0)
    assert (o.lr, o.head_lr, o.head_lr_after) == (0.01, 0.1, 0.1)
    assert cfg.loss.label_smoothing == 0.0 and cfg.train.epochs == 80


@pytest.mark.parametrize("name", ["sysu_clip", "prcv_clip"])
def test_the_clip_recipes_keep_the_seed_schedule(name: str) -> None:
    cfg = _recipe(name)
    assert cfg.model.backbone == "hf:openai/clip-vit-base-patch16"
    loss, o = cfg.loss, cfg.optim
    assert loss.sdm and loss.sdm_warmup_epochs == 1 and loss.sdm_schedule == (0.1, 0.3, 0.5)
    assert loss.label_smoothing == 0.1 and loss.memory and loss.memory_steps == 6
    assert (o.head_lr_after, o.head_lr_switch_epoch) == (3e-3, 2)
    assert cfg.sampler.kind == "strict"
    # CLIP ViT-B/16 cuts images into 16-pixel patches
    assert cfg.data.image_height % 16 == 0 and cfg.data.image_width % 16 == 0
    assert cfg.data.text_length <= 77  # CLIP's text positions
