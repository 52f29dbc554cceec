"""Config tree of the reference trainer: TOML loading, typed overrides, generated help."""

from __future__ import annotations

import dataclasses
import typing
from pathlib import Path

import pytest
from reid_example.config import (
    Config,
    apply_overrides,
    config_from_dict,
    config_to_dict,
    describe_options,
    iter_options,
    load_config,
)

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = sorted((ROOT / "examples" / "configs").glob("*.toml"))


def test_defaults_are_the_recipe() -> None:
    c = Config()
    assert c.loss.label_smoothing == 0.1
    assert c.loss.sdm_warmup_epochs == 1
    assert c.loss.sdm_schedule == (0.1, 0.3, 0.5)
    assert c.loss.memory and c.loss.memory_steps == 6
    assert c.sampler.kind == "strict"
    assert c.sampler.fallback_ratio == 0.3
    assert (c.optim.head_lr_after, c.optim.head_lr_switch_epoch) == (3e-3, 2)
    assert c.data.num_workers == 2 and c.data.persistent_workers
    assert c.data.prefetch_factor == 2 and c.data.pin_memory
    assert c.train.coverage_every == 100 and c.train.coverage_target == 0.85


def test_every_field_has_help_and_a_documented_default() -> None:
    text = describe_options()
    n = 0
    for key, _tp, _default, help_, _choices in iter_options():
        n += 1
        assert help_, f"{key} has no help text"
        assert key in text
    assert n > 40
    # the generated help is what --help prints
    for sec in dataclasses.fields(Config):
        assert f"[{sec.name}]" in text


@pytest.mark.parametrize(
    ("item", "key", "expected"),
    [
        ("train.epochs=7", ("train", "epochs"), 7),
        ("optim.lr=2e-4", ("optim", "lr"), 2e-4),
        ("optim.lr=1", ("optim", "lr"), 1.0),
        ("loss.sdm=false", ("loss", "sdm"), False),
        ("loss.sdm=Yes", ("loss", "sdm"), True),
        ("loss.sdm_schedule=[0.2, 0.4]", ("loss", "sdm_schedule"), (0.2, 0.4)),
        ("loss.sdm_schedule=0.5", ("loss", "sdm_schedule"), (0.5,)),
        ("eval.protocols=NIR->RGB,TEXT->RGB", ("eval", "protocols"), ("NIR->RGB", "TEXT->RGB")),
        ("dist.backend=gloo", ("dist", "backend"), "gloo"),
        ("output.name=a=b", ("output", "name"), "a=b"),
    ],
)
def test_override_typed_parsing(item: str, key: tuple[str, str], expected: object) -> None:
    cfg = apply_overrides(Config(), [item])
    value = getattr(getattr(cfg, key[0]), key[1])
    assert value == expected
    assert type(value) is type(expected)


def test_override_does_not_mutate_the_input() -> None:
    base = Config()
    apply_overrides(base, ["train.epochs=3"])
    assert base.train.epochs == Config().train.epochs


@pytest.mark.parametrize(
    ("item", "match"),
    [
        ("train.epoch=3", "did you mean 'epochs'"),
        ("trian.epochs=3", "did you mean 'train'"),
        ("train.epochs=three", r"train\.epochs: expected an integer"),
        ("loss.sdm=maybe", "expected a boolean"),
        ("train.epochs=true", "expected an integer"),
        ("sampler.kind=random", "expected one of strict, pk"),
        ("epochs=3", r"section\.name"),
        ("train.epochs", r"section\.key=value"),
        ("loss.sdm_schedule=0.1,x", r"loss.sdm_schedule\[1\]"),
    ],
)
def test_bad_overrides_name_the_key(item: str, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        apply_overrides(Config(), [item])


def test_toml_errors_name_the_key(tmp_path: Path) -> None:
    p = tmp_path / "c.toml"
    p.write_text("[train]\nepochs = 'ten'\n")
    with pytest.raises(ValueError, match=r"train\.epochs"):
        load_config(p)
    p.write_text("epochs = 3\n")
    with pytest.raises(ValueError, match="section"):
        load_config(p)
    with pytest.raises(FileNotFoundError):
        load_config(tmp_path / "missing.toml")


def test_toml_then_overrides(tmp_path: Path) -> None:
    p = tmp_path / "c.toml"
    p.write_text("[train]\nepochs = 3\nseed = 5\n[loss]\nsdm_schedule = [0.2]\n")
    cfg = load_config(p, ["train.seed=9"])
    assert (cfg.train.epochs, cfg.train.seed, cfg.loss.sdm_schedule) == (3, 9, (0.2,))


def test_round_trip_through_dict() -> None:
    cfg = apply_overrides(Config(), ["train.epochs=3", "loss.sdm_schedule=0.2,0.6"])
    assert config_from_dict(config_to_dict(cfg)) == cfg


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_shipped_configs_load(path: Path) -> None:
    cfg = load_config(path)
    assert isinstance(cfg, Config)


def test_shipped_configs_exist() -> None:
    names = {p.name for p in CONFIGS}
    assert {"demo.toml", "default.toml", "sysu.toml"} <= names


def test_field_types_are_supported() -> None:
    # every option type must be parseable from the command line
    for _key, tp, default, *_ in iter_options():
        origin = typing.get_origin(tp)
        assert tp in (int, float, str, bool) or origin is tuple, tp
        assert isinstance(default, tp if origin is None else tuple)


def test_help_lists_options(capsys: pytest.CaptureFixture[str]) -> None:
    import train

    with pytest.raises(SystemExit) as exc:
        train.main(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for key, *_ in iter_options():
        assert key in out
    assert "loss.sdm_schedule (list[float], default [0.1, 0.3, 0.5])" in out


def test_cli_rejects_unknown_option(capsys: pytest.CaptureFixture[str]) -> None:
    import train

    with pytest.raises(SystemExit) as exc:
        train.main(["--set", "train.epoch=1"])
    assert exc.value.code == 2
    assert "did you mean 'epochs'" in capsys.readouterr().err
