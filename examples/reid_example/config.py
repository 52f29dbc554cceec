"""Configuration of the reference trainer: a dataclass tree, loaded from TOML, overridable.

Every option is a dataclass field with a ``help`` text in its metadata, so the command line help
(``python examples/train.py --help``) and the documentation's config reference are generated from
the same source. Defaults reproduce the original training recipe (label smoothing 0.1; SDM off in
epoch 1, weights 0.1/0.3/0.5 from epoch 2; a memory of the last 6 steps of RGB features; the strict
modality-aware P×K sampler with a 30% fallback budget; head LR 3e-3 from epoch 2;
two persistent DataLoader workers with prefetch factor 2 and pinned memory).

Loading order: dataclass defaults → TOML file (``--config``) → ``--set section.key=value``
overrides (parsed by the field's declared type). Unknown sections/keys are errors that name the
closest valid key.

Example:
    >>> from reid_example.config import Config, apply_overrides
    >>> cfg = apply_overrides(Config(), ["train.epochs=3", "loss.sdm_schedule=0.2,0.4"])
    >>> cfg.train.epochs, cfg.loss.sdm_schedule
    (3, (0.2, 0.4))
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import sys
import types
import typing
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "CheckpointConfig",
    "Config",
    "DataConfig",
    "DistConfig",
    "EvalConfig",
    "HealthConfig",
    "LossConfig",
    "ModelConfig",
    "OptimConfig",
    "OutputConfig",
    "SamplerConfig",
    "TrainConfig",
    "apply_overrides",
    "config_from_dict",
    "config_to_dict",
    "config_toml",
    "describe_options",
    "iter_options",
    "load_config",
    "load_toml",
]


def _opt(default: Any, help: str, choices: Sequence[str] | None = None) -> Any:
    meta: dict[str, Any] = {"help": help}
    if choices is not None:
        meta["choices"] = tuple(choices)
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class DataConfig:
    """Dataset and DataLoader options."""

    dataset: str = _opt(
        "synthetic",
        "dataset family: the embedded synthetic generator or a real on-disk layout (sysu, "
        "regdb, llcm: data.root is the dataset directory; prcv: data.root is a PRCV2025/"
        "ORBench-style JSON manifest; csv: data.root is a path,label,modality,camera CSV)",
        ("synthetic", "sysu", "regdb", "llcm", "prcv", "csv"),
    )
    preset: str = _opt(
        "demo",
        "synthetic preset (demo | sysu | regdb | prcv); ignored for real layouts",
    )
    root: str = _opt("", "dataset directory, or manifest file for prcv/csv (real layouts only)")
    trial: int = _opt(1, "RegDB trial (1..10): train and test one model per trial")
    on_error: str = _opt(
        "raise",
        "real layouts: a missing or undecodable image, or a duplicated manifest row, raises "
        "(naming it) or is skipped and counted",
        ("raise", "skip"),
    )
    verify: bool = _opt(
        True,
        "real layouts: decode every image once at start-up (false: only check that files exist)",
    )
    data_seed: int = _opt(0, "seed of the synthetic generator (the data, not the training run)")
    identities_per_split: tuple[int, ...] = _opt(
        (), "synthetic only: override the preset's identity counts, as (train, val, test)"
    )
    image_height: int = _opt(
        0, "input image height in pixels (0 = the synthetic preset's size; 256 for real data)"
    )
    image_width: int = _opt(
        0, "input image width in pixels (0 = the synthetic preset's size; 128 for real data)"
    )
    text_length: int = _opt(32, "maximum caption length in tokens (TEXT modality)")
    augment: bool = _opt(True, "random training augmentation (flip, pad + crop, erasing)")
    erasing_p: float = _opt(0.5, "probability of random erasing (when augment is on)")
    grayscale_p: float = _opt(
        0.0, "probability of converting a training image to grayscale (channel augmentation)"
    )
    channel_p: float = _opt(
        0.0,
        "probability of replacing a training colour image by one random channel of it "
        "(CAJ channel augmentation, applied after grayscale_p)",
    )
    num_workers: int = _opt(2, "DataLoader worker processes (0 = load in the main process)")
    persistent_workers: bool = _opt(True, "keep DataLoader workers alive between epochs")
    prefetch_factor: int = _opt(2, "batches prefetched per worker")
    pin_memory: bool = _opt(True, "pin host memory (CUDA only) and copy with non_blocking=True")
    eval_batch_size: int = _opt(256, "batch size of feature extraction for evaluation")
    device_cache: bool = _opt(
        False,
        "keep the whole training split on the training device (uint8 images, tokens) and build "
        "each batch there: gather by the sampler's indices, augment with the device's own "
        "generators (the same transforms and probabilities as the loader); no worker processes",
    )
    device_cache_budget_mb: int = _opt(
        4096,
        "data.device_cache: the most device memory (MiB) the cached training split may take; "
        "a larger split is refused with an error naming this option",
    )
    decoded_cache: str = _opt(
        "",
        "real layouts: a directory for a memory-mapped file of the decoded training images "
        "(uint8, as decoded), so epochs after the first skip image decoding ('' = off); a later "
        "run on the same image files reuses it, changed files are decoded again",
    )


@dataclass
class SamplerConfig:
    """Batch sampler (P identities × K instances)."""

    kind: str = _opt(
        "strict",
        "strict = ModalAwarePKSampler_Strict (cross-modal pairs), pk = plain P×K",
        ("strict", "pk"),
    )
    num_identities: int = _opt(8, "P: identities per batch")
    num_instances: int = _opt(4, "K: samples per identity per batch")
    fallback_ratio: float = _opt(
        0.3, "strict sampler: max fraction of identities per batch without a cross-modal pair"
    )


@dataclass
class ModelConfig:
    """Embedding network."""

    backbone: str = _opt(
        "vit",
        "vit = built-in small ViT trunk; timm:<name> = a timm model (no pretrained weights; "
        "requires timm); hf:<directory or hub id> = a transformers CLIP, ResNet, ViT or DINOv2 "
        "model (pip install 'sdmreid[hf]'; a hub id needs network or a cached copy with "
        "HF_HUB_OFFLINE=1); see the recipes page",
    )
    embed_dim: int = _opt(96, "token width of the trunk")
    depth: int = _opt(3, "number of transformer blocks")
    num_heads: int = _opt(4, "attention heads")
    mlp_ratio: float = _opt(2.0, "MLP hidden width / embed_dim")
    patch_size: int = _opt(4, "square patch size of the per-modality image stems")
    stem_channels: int = _opt(32, "channels of the first conv of each image stem")
    stem_layers: int = _opt(
        2, "stride-2 conv blocks per image stem before patchifying (patch_size % 2**n == 0)"
    )
    pool: str = _opt(
        "cls", "embedding from the CLS token or the mean of all tokens", ("cls", "mean")
    )
    embedding: str = _opt(
        "pre_bn",
        "retrieval embedding used by SDM, the memory and evaluation: the trunk feature before "
        "the BNNeck (pre_bn; CE alone reads the BNNeck output) or the BNNeck output (bn)",
        ("pre_bn", "bn"),
    )
    dropout: float = _opt(0.0, "dropout inside the trunk")
    vocab_size: int = _opt(0, "token vocabulary size (0 = take it from the tokenizer)")
    sdpa_backend: str = _opt(
        "auto",
        "scaled_dot_product_attention backend (falls back with one log line when unavailable)",
        ("auto", "flash", "efficient", "math", "cudnn"),
    )
    pretrained: bool = _opt(
        True,
        "hf: backbones: load the saved weights (false: build the model from its config.json "
        "only, randomly initialised)",
    )
    tokenizer: str = _opt(
        "",
        "hf: CLIP backbones: directory or hub id of the caption tokenizer ('' = the backbone's "
        "own); it must match the text tower's vocabulary",
    )
    gradient_checkpointing: bool = _opt(
        False,
        "hf: backbones: recompute the transformer blocks' activations in the backward pass "
        "(less memory, about a third more compute; CLIP, ViT, DINOv2)",
    )
    last_stride: int = _opt(
        1,
        "hf: ResNet backbones: stride of the last stage (1 = the ReID convention of BoT and AGW, "
        "a twice larger final feature map; 2 = as pretrained)",
    )


@dataclass
class LossConfig:
    """Cross-entropy + scheduled SDM."""

    label_smoothing: float = _opt(0.1, "label smoothing of the identity cross-entropy")
    sdm: bool = _opt(True, "add the SDM loss (non-RGB queries vs RGB gallery + memory)")
    sdm_logit_scale: float = _opt(50.0, "SDM logit scale (1 / temperature)")
    sdm_compiled: bool = _opt(
        False,
        "SDM as one torch.compile'd kernel (sdm_loss(compiled=True)): fewer, fused kernel "
        "launches, worth it on a GPU; compiles during the first steps",
    )
    sdm_mode: str = _opt(
        "pooled",
        "pooled: one SDM over every query modality's rows against the RGB rows + memory; "
        "per_modality: one SDM per query modality, weighted (loss.sdm_weights)",
        ("pooled", "per_modality"),
    )
    sdm_objective: str = _opt(
        "ce",
        "SDM loss form: ce (the seed pipeline's cross-entropy -sum q log p) or kl (IRRA's KL "
        "with eps=1e-8, about 10x larger and with far larger gradients)",
        ("ce", "kl"),
    )
    sdm_directions: str = _opt(
        "mean",
        "how SDM's query->gallery and gallery->query terms combine: mean (the seed) or sum (IRRA)",
        ("mean", "sum"),
    )
    sdm_weights: tuple[str, ...] = _opt(
        (),
        "per_modality weights as NAME=weight (e.g. NIR=2,TEXT=0.5); a modality not named "
        "weighs 1; the weights of the modalities present in a batch renormalise",
    )
    sdm_logit_scales: tuple[float, ...] = _opt(
        (),
        "SDM logit scale per stage of loss.sdm_schedule (following its rollbacks); empty = "
        "loss.sdm_logit_scale throughout",
    )
    sdm_readvance_after: int = _opt(
        0,
        "after a health rollback, re-advance SDM one stage every N epochs without a further "
        "rollback (0 = a rollback is final)",
    )
    sdm_warmup_epochs: int = _opt(1, "epochs with SDM off at the start (epochs counted from 1)")
    sdm_schedule: tuple[float, ...] = _opt(
        (0.1, 0.3, 0.5), "SDM weight per epoch after the warm-up; the last value is kept"
    )
    memory: bool = _opt(True, "use a cross-batch memory of RGB features as extra SDM gallery")
    memory_steps: int = _opt(6, "memory holds the RGB features of the last N steps")


@dataclass
class OptimConfig:
    """Optimiser and learning-rate schedule."""

    optimizer: str = _opt("adamw", "optimiser", ("adamw", "sgd"))
    lr: float = _opt(1e-3, "peak learning rate of the backbone/stems/trunk")
    head_lr: float = _opt(
        1e-2,
        "learning rate of the 'head' group (BNNeck + classifier) before the switch; the recipe "
        "drops it to head_lr_after at head_lr_switch_epoch because at the higher rate the "
        "classifier's weight norm grows fast (the head_weight_norm_growth health rule)",
    )
    head_lr_after: float = _opt(3e-3, "head learning rate from head_lr_switch_epoch on")
    head_lr_switch_epoch: int = _opt(2, "first epoch (from 1) that uses head_lr_after")
    weight_decay: float = _opt(0.05, "weight decay (not applied to norms, biases, embeddings)")
    momentum: float = _opt(0.9, "SGD momentum")
    warmup_epochs: float = _opt(1.0, "linear LR warm-up length in epochs (fractional allowed)")
    schedule: str = _opt("cosine", "LR decay after warm-up", ("cosine", "constant"))
    min_lr_ratio: float = _opt(0.05, "final LR as a fraction of the peak (cosine)")
    grad_clip: float = _opt(0.0, "clip the global gradient norm to this value (0 = off)")
    ema_decay: float = _opt(
        0.0,
        "exponential moving average of the weights (and BN statistics), updated every step; "
        "when > 0 it is what evaluation, best.pt's test and the report use (0 = off)",
    )


@dataclass
class TrainConfig:
    """Training loop."""

    epochs: int = _opt(60, "number of epochs (numbered from 1)")
    seed: int = _opt(0, "seed of the run: model init, sampler, augmentation")
    device: str = _opt("auto", "auto | cpu | cuda | cuda:N")
    amp: str = _opt(
        "auto",
        "mixed precision: auto = bf16 on CUDA, off on CPU; fp16 uses a GradScaler",
        ("auto", "bf16", "fp16", "off"),
    )
    channels_last: bool = _opt(True, "channels_last memory format for images and stems (CUDA)")
    compile: bool = _opt(
        False,
        "torch.compile the model's forward pass and SDM (train.compile_mode); without a working "
        "torch.compile (no inductor or no C++ compiler) the run says so once and trains eagerly",
    )
    compile_mode: str = _opt(
        "default",
        "torch.compile mode with train.compile: default, or reduce-overhead (CUDA graphs: no "
        "per-kernel launch cost; CUDA only, elsewhere the run says so once and uses default)",
        ("default", "reduce-overhead"),
    )
    deterministic: bool = _opt(False, "torch.use_deterministic_algorithms (CUDA: slower)")
    num_threads: int = _opt(0, "torch intra-op threads on CPU (0 = leave torch's default)")
    log_every: int = _opt(20, "steps between step-level metric rows")
    coverage_every: int = _opt(100, "steps between '[dbg] pair_coverage_mavg=' lines")
    coverage_window: int = _opt(100, "moving-average window (steps) of the pair coverage")
    coverage_target: float = _opt(0.85, "pair coverage health target")
    max_steps_per_epoch: int = _opt(0, "cap the steps of one epoch (0 = the sampler's length)")
    stop_after_steps: int = _opt(
        0, "write a checkpoint and stop after this global step (0 = off; resume tests)"
    )


@dataclass
class EvalConfig:
    """Evaluation."""

    every: int = _opt(5, "evaluate on the validation split every N epochs (and at the end)")
    select_metric: str = _opt(
        "mAP_mean", "validation metric that picks the best checkpoint (mAP_mean or mAP/<protocol>)"
    )
    test_at_end: bool = _opt(True, "evaluate the best checkpoint on the test split at the end")
    train_ids: int = _opt(
        -1,
        "training identities also evaluated (eval transforms, the dataset's protocols) on "
        "evaluation epochs; their score vs validation's feeds the overfitting rule "
        "(-1 = as many as the validation split has, so both galleries are alike; 0 = off)",
    )
    flip: bool = _opt(
        False, "embed each evaluation image as the mean of it and its horizontal mirror"
    )
    trials: int = _opt(
        10, "SYSU-MM01 / LLCM: trials of the published protocol run on the test split at the end"
    )
    protocols: tuple[str, ...] = _opt(
        (), "protocols to evaluate, e.g. NIR->RGB (empty = the dataset's presets)"
    )


@dataclass
class HealthConfig:
    """Health monitoring (the recipe's health lines as rules)."""

    enabled: bool = _opt(True, "run HealthMonitor on each epoch's statistics")
    act: bool = _opt(True, "act on findings (SDM rollback) instead of only logging them")
    ce_ceiling: float = _opt(2.5, "CE above this after SDM starts is a warning")
    every_steps: int = _opt(10, "steps between step-level health readings (coverage, head norm)")


@dataclass
class CheckpointConfig:
    """Checkpoints."""

    every_epochs: int = _opt(1, "write last.pt every N epochs")
    every_steps: int = _opt(0, "also write last.pt every N global steps (0 = off)")
    resume: str = _opt("", "checkpoint to resume from ('' = start fresh; also --resume)")


@dataclass
class OutputConfig:
    """Run directory, logs and reports."""

    root: str = _opt("runs", "parent directory of run directories")
    name: str = _opt("", "run directory name ('' = <config name>-seed<seed>)")
    overwrite: bool = _opt(
        False,
        "start over in a run directory that already holds a run, deleting that run's files "
        "first (also --overwrite); without it such a directory is refused: continue its run "
        "with --resume <dir>/last.pt, or choose another output.name",
    )
    progress: str = _opt("auto", "tqdm bars: auto = only on a TTY", ("auto", "on", "off"))
    tensorboard: bool = _opt(True, "write TensorBoard events when tensorboard is installed")
    plots: bool = _opt(True, "write PNG plots and report.md at the end")


@dataclass
class DistConfig:
    """torch.distributed (torchrun) options."""

    backend: str = _opt("auto", "auto = nccl on CUDA, gloo on CPU", ("auto", "nccl", "gloo"))
    gather_sdm: bool = _opt(True, "global SDM: queries see every rank's gallery")
    gather_memory: bool = _opt(True, "memory entries gathered from every rank")
    find_unused_parameters: bool = _opt(
        True, "DDP find_unused_parameters (stems of modalities absent from a batch are unused)"
    )


@dataclass
class Config:
    """The whole trainer configuration."""

    data: DataConfig = field(default_factory=DataConfig)
    sampler: SamplerConfig = field(default_factory=SamplerConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    health: HealthConfig = field(default_factory=HealthConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    output: OutputConfig = field(default_factory=OutputConfig)
    dist: DistConfig = field(default_factory=DistConfig)


# --------------------------------------------------------------------------------------------
# Introspection


def _section_types() -> dict[str, type]:
    hints = typing.get_type_hints(Config)
    return {f.name: hints[f.name] for f in dataclasses.fields(Config)}


def iter_options() -> Iterator[tuple[str, Any, Any, str, tuple[str, ...] | None]]:
    """Yield ``(dotted_key, type, default, help, choices)`` for every option.

    This is what ``--help`` prints and what the documentation's config reference is built from.

    Example:
        >>> from reid_example.config import iter_options
        >>> next(k for k, *_ in iter_options() if k.startswith("loss."))
        'loss.label_smoothing'
    """
    defaults = Config()
    for sec_name, sec_type in _section_types().items():
        hints = typing.get_type_hints(sec_type)
        sec_default = getattr(defaults, sec_name)
        for f in dataclasses.fields(sec_type):
            yield (
                f"{sec_name}.{f.name}",
                hints[f.name],
                getattr(sec_default, f.name),
                str(f.metadata.get("help", "")),
                f.metadata.get("choices"),
            )


def _type_name(tp: Any) -> str:
    if tp in (int, float, str, bool):
        return str(tp.__name__)
    origin = typing.get_origin(tp)
    if origin in (tuple, list):
        args = typing.get_args(tp)
        return f"list[{_type_name(args[0])}]"
    return str(tp)


def _fmt_default(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, tuple):
        return "[" + ", ".join(_fmt_default(v) for v in value) + "]"
    if isinstance(value, str):
        return repr(value)
    return str(value)


def describe_options() -> str:
    """Human-readable list of every option with type, default and help (used by ``--help``)."""
    lines: list[str] = []
    section = ""
    for key, tp, default, help_, choices in iter_options():
        sec = key.split(".", 1)[0]
        if sec != section:
            section = sec
            doc = (getattr(Config(), sec).__class__.__doc__ or "").strip()
            lines.append(f"\n[{sec}]  {doc}")
        extra = f" {{{'|'.join(choices)}}}" if choices else ""
        lines.append(f"  {key} ({_type_name(tp)}, default {_fmt_default(default)}){extra}")
        lines.append(f"      {help_}")
    return "\n".join(lines).lstrip("\n")


# --------------------------------------------------------------------------------------------
# Typed parsing


_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Convert a TOML value or a command-line string to the field type ``tp``."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):  # Optional[...]: not used, kept strict
        raise TypeError(f"{key}: union-typed options are not supported")
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
            return value.strip().lower() in _TRUE
        raise ValueError(f"{key}: expected a boolean (true/false), got {value!r}")
    if tp is int:
        if isinstance(value, bool):
            raise ValueError(f"{key}: expected an integer, got boolean {value!r}")
        if isinstance(value, int):
            return value
        if isinstance(value, str):
            try:
                return int(value.strip().replace("_", ""))
            except ValueError:
                pass
        raise ValueError(f"{key}: expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, bool):
            raise ValueError(f"{key}: expected a number, got boolean {value!r}")
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value.strip())
            except ValueError:
                pass
        raise ValueError(f"{key}: expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        raise ValueError(f"{key}: expected a string, got {value!r}")
    if origin in (tuple, list):
        (elem,) = typing.get_args(tp)[:1]
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("[") and text.endswith("]"):
                text = text[1:-1]
            items: list[Any] = [t.strip().strip("\"'") for t in text.split(",") if t.strip() != ""]
        elif isinstance(value, (list, tuple)):
            items = list(value)
        else:
            raise ValueError(f"{key}: expected a list, got {value!r}")
        out = [_coerce(v, elem, f"{key}[{i}]") for i, v in enumerate(items)]
        return tuple(out) if origin is tuple else out
    raise TypeError(f"{key}: unsupported option type {tp!r}")


def _unknown(name: str, valid: Sequence[str], what: str) -> ValueError:
    close = difflib.get_close_matches(name, list(valid), n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return ValueError(f"unknown {what} {name!r}{hint} (valid: {', '.join(valid)})")


def _set_option(cfg: Config, key: str, raw: Any) -> None:
    parts = key.split(".")
    if len(parts) != 2:
        raise ValueError(f"option key must be 'section.name', got {key!r}")
    sec_name, opt_name = parts
    sections = _section_types()
    if sec_name not in sections:
        raise _unknown(sec_name, list(sections), "config section")
    sec_type = sections[sec_name]
    hints = typing.get_type_hints(sec_type)
    names = [f.name for f in dataclasses.fields(sec_type)]
    if opt_name not in names:
        raise _unknown(opt_name, names, f"option in [{sec_name}]")
    value = _coerce(raw, hints[opt_name], key)
    fdef = next(f for f in dataclasses.fields(sec_type) if f.name == opt_name)
    choices = fdef.metadata.get("choices")
    if choices is not None and value not in choices:
        raise ValueError(f"{key}: expected one of {', '.join(choices)}, got {value!r}")
    setattr(getattr(cfg, sec_name), opt_name, value)


def config_from_dict(data: Mapping[str, Any], base: Config | None = None) -> Config:
    """Build a :class:`Config` from nested mappings (a parsed TOML document).

    Example:
        >>> from reid_example.config import config_from_dict
        >>> config_from_dict({"train": {"epochs": 2}}).train.epochs
        2
    """
    cfg = config_from_dict_copy(base if base is not None else Config())
    for sec_name, section in data.items():
        if not isinstance(section, Mapping):
            raise ValueError(
                f"top-level key {sec_name!r} must be a [section] table, got {section!r}"
            )
        for opt_name, raw in section.items():
            _set_option(cfg, f"{sec_name}.{opt_name}", raw)
    return cfg


def config_from_dict_copy(cfg: Config) -> Config:
    """Deep copy of a config (sections are separate objects)."""
    return Config(
        **{f.name: dataclasses.replace(getattr(cfg, f.name)) for f in dataclasses.fields(Config)}
    )


def config_to_dict(cfg: Config) -> dict[str, dict[str, Any]]:
    """Nested plain dict of a config (tuples become lists), e.g. for the run's ``config.json``."""
    out: dict[str, dict[str, Any]] = {}
    for f in dataclasses.fields(Config):
        sec = dataclasses.asdict(getattr(cfg, f.name))
        out[f.name] = {k: list(v) if isinstance(v, tuple) else v for k, v in sec.items()}
    return out


def config_toml(cfg: Config) -> str:
    """The config as TOML text (the run directory's ``config.toml``, the report's appendix).

    Example:
        >>> config_toml(Config()).splitlines()[:2]
        ['[data]', 'dataset = "synthetic"']
    """

    def value(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, (list, tuple)):
            return "[" + ", ".join(value(x) for x in v) + "]"
        if isinstance(v, str):
            return json.dumps(v)
        return repr(v)

    lines: list[str] = []
    for sec, opts in config_to_dict(cfg).items():
        lines.append(f"[{sec}]")
        lines.extend(f"{k} = {value(v)}" for k, v in opts.items())
        lines.append("")
    return "\n".join(lines)


def apply_overrides(cfg: Config, overrides: Sequence[str]) -> Config:
    """Return a copy of ``cfg`` with ``section.key=value`` overrides applied (typed parsing)."""
    cfg = config_from_dict_copy(cfg)
    for item in overrides:
        if "=" not in item:
            raise ValueError(f"--set expects section.key=value, got {item!r}")
        key, raw = item.split("=", 1)
        _set_option(cfg, key.strip(), raw)
    return cfg


def _toml_module() -> Any:
    if sys.version_info >= (3, 11):
        import tomllib

        return tomllib
    try:
        import tomli

        return tomli
    except ImportError as err:  # pragma: no cover - depends on the interpreter
        raise RuntimeError(
            "reading TOML configs on Python 3.10 needs the 'tomli' package "
            "(pip install tomli); Python >= 3.11 has tomllib built in"
        ) from err


def load_toml(path: str | Path) -> dict[str, Any]:
    """Parse a TOML file (stdlib ``tomllib``; ``tomli`` on Python 3.10)."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"config file not found: {p}")
    with p.open("rb") as fh:
        return dict(_toml_module().load(fh))


def load_config(path: str | Path | None = None, overrides: Sequence[str] = ()) -> Config:
    """Defaults → TOML file → overrides."""
    cfg = Config()
    if path:
        cfg = config_from_dict(load_toml(path), cfg)
    return apply_overrides(cfg, overrides)
