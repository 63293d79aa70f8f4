"""Training configuration: YAML files validated against dataclasses.

A config file has four sections (`model`, `data`, `loss`, `train`) plus `output`; every key is a
field below. Unknown or mistyped keys are errors that name the key and suggest the closest valid
one, and values are type-checked, so a typo never silently falls back to a default.
`--set a.b=value` overrides (value parsed as YAML) are applied on top of the file.
"""

import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Optional

import yaml


class ConfigError(ValueError):
    """A config file or override that does not match the schema."""


@dataclass
class ModelConfig:
    name: str = "hrnet_w48_ocr"
    # Keyword overrides for `ocr_tf.models.build_model` (e.g. extra, alpha, mid_channels, weights).
    overrides: dict = field(default_factory=dict)


@dataclass
class DataConfig:
    dataset: str = "demo"  # a name known to ocr_tf.data.datasets (palette, flip pairs, classes)
    train: Optional[str] = None  # TFRecord glob; None only for the demo (generated on the fly)
    val: Optional[str] = None
    num_classes: int = 0  # must agree with the dataset
    crop_size: list = field(default_factory=lambda: [512, 512])  # (h, w)
    scale_range: list = field(default_factory=lambda: [0.5, 2.0])
    flip: bool = True
    brightness: float = 10.0
    ignore_label: int = 255
    shuffle_buffer: int = 256
    val_batch_size: int = 1  # global; validation images keep their own size
    val_pad_to: Optional[list] = None  # pad validation images to a fixed size (needed on TPU)
    val_steps: Optional[int] = None  # None: the whole validation set
    skip_bad: bool = False


@dataclass
class LossConfig:
    aux_weight: float = 0.4  # weight of the soft-object-region CE, as in the paper
    class_weights: Optional[list] = None
    ohem: bool = False  # OHEM on the final logits only, as [HR]
    ohem_threshold: float = 0.9
    ohem_min_kept: int = 131072  # per replica, as [HR] (per GPU)
    # *_mscale_ocr models only (NVIDIA's two-scale training, ocr_tf/losses_mscale.py):
    mscale_lo_scale: float = 0.5  # the low training scale (the other is 1.0)
    mscale_scale_weight: float = 0.05  # BCE on each scale's own logits
    mscale_rmi: bool = True  # RMI on the merged logits (0.5 BCE + 0.5 RMI)


@dataclass
class TrainConfig:
    batch_size: int = 8  # global, split across replicas
    iterations: int = 1000  # total optimizer steps; the poly schedule reaches 0 here
    steps_per_epoch: int = 100  # how often validation, best checkpoint and logs happen
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 5e-4  # L2 added to the gradient (PyTorch SGD semantics)
    power: float = 0.9
    warmup_steps: int = 0
    warmup_factor: float = 0.1  # LR at step 0 of the warmup, as a fraction of `lr`
    head_lr_multiplier: float = 1.0
    head_keywords: list = field(default_factory=lambda: ["cls", "aux", "ocr"])
    mixed_precision: Optional[str] = None  # None | float16 | bfloat16
    strategy: str = "auto"  # auto | default | mirrored | multi_worker | tpu
    tpu: Optional[str] = None  # TPU address / name for strategy=tpu
    seed: int = 0
    backup_every_steps: int = 50  # BackupAndRestore frequency
    steps_per_execution: int = 1
    tensorboard_images: int = 2  # prediction overlays written per validation
    verbose: int = 1  # Keras progress bar (1), one line per epoch (2), silent (0)


@dataclass
class OutputConfig:
    dir: str = "runs/default"  # checkpoints, backup, logs
    export_dir: Optional[str] = "saved_models/default"
    tflite: bool = True


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    output: OutputConfig = field(default_factory=OutputConfig)

    def to_dict(self):
        return dataclasses.asdict(self)


STRATEGIES = ("auto", "default", "mirrored", "multi_worker", "tpu")
PRECISIONS = (None, "float16", "bfloat16")


def _suggest(key, valid):
    close = difflib.get_close_matches(key, valid, n=1, cutoff=0.5)
    return f"; did you mean '{close[0]}'?" if close else f"; valid keys: {', '.join(sorted(valid))}"


def _check_type(value, annotation, where):
    """Check (and lightly coerce: int -> float) `value` against a field annotation."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(annotation)
        if value is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _check_type(value, inner, where)
    if annotation is Any:
        return value
    if annotation is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    expected = origin or annotation
    if expected is int and isinstance(value, bool) or not isinstance(value, expected):
        raise ConfigError(
            f"config key '{where}' expects {getattr(expected, '__name__', expected)}, "
            f"got {type(value).__name__} {value!r}."
        )
    return value


def _build(cls, data, prefix, source):
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"config section '{prefix or 'top level'}' in {source} must be a mapping, got {data!r}.")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for key, value in data.items():
        where = f"{prefix}{key}"
        if key not in fields:
            valid = [f"{prefix}{name}" for name in fields]
            raise ConfigError(f"unknown config key '{where}' in {source}{_suggest(where, valid)}")
        hint = hints[key]
        if dataclasses.is_dataclass(hint):
            kwargs[key] = _build(hint, value, f"{where}.", source)
        else:
            kwargs[key] = _check_type(value, hint, where)
    return cls(**kwargs)


def _validate(config, source):
    t, d, lo = config.train, config.data, config.loss
    if t.strategy not in STRATEGIES:
        raise ConfigError(f"train.strategy must be one of {STRATEGIES}, got {t.strategy!r} ({source}).")
    if t.mixed_precision not in PRECISIONS:
        raise ConfigError(
            f"train.mixed_precision must be one of float16, bfloat16 or null, got {t.mixed_precision!r} ({source})."
        )
    for name in ("batch_size", "iterations", "steps_per_epoch", "backup_every_steps", "steps_per_execution"):
        if getattr(t, name) < 1:
            raise ConfigError(f"train.{name} must be >= 1, got {getattr(t, name)} ({source}).")
    if t.warmup_steps < 0 or t.warmup_steps >= t.iterations:
        raise ConfigError(f"train.warmup_steps must be in [0, iterations), got {t.warmup_steps} ({source}).")
    if d.num_classes < 1:
        raise ConfigError(f"data.num_classes must be >= 1, got {d.num_classes} ({source}).")
    if len(d.crop_size) != 2 or len(d.scale_range) != 2:
        raise ConfigError(f"data.crop_size and data.scale_range take two numbers each ({source}).")
    if lo.class_weights is not None and len(lo.class_weights) != d.num_classes:
        raise ConfigError(
            f"loss.class_weights has {len(lo.class_weights)} entries but data.num_classes is "
            f"{d.num_classes} ({source})."
        )
    if not 0.0 < lo.ohem_threshold <= 1.0 or lo.ohem_min_kept < 1:
        raise ConfigError(f"loss.ohem_threshold must be in (0, 1] and loss.ohem_min_kept >= 1 ({source}).")
    return config


def from_dict(data, source="<dict>"):
    """Validated `Config` from a nested dict."""
    return _validate(_build(Config, data, "", source), source)


def parse_override(text):
    """'a.b=value' -> (['a', 'b'], parsed value); the value is YAML (numbers, lists, null...)."""
    if "=" not in text:
        raise ConfigError(f"--set expects key=value (e.g. train.lr=0.01), got {text!r}.")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key:
        raise ConfigError(f"--set has an empty key in {text!r}.")
    return key.split("."), yaml.safe_load(raw) if raw.strip() else None


def apply_overrides(data, overrides):
    """Apply '--set a.b=value' strings to a nested dict (in place) and return it.

    Paths inside free-form dicts (model.overrides.*) may create new keys; the schema check that
    follows catches unknown keys everywhere else.
    """
    for text in overrides or ():
        path, value = parse_override(text)
        node = data
        for part in path[:-1]:
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                raise ConfigError(f"--set {text!r}: '{part}' is not a section.")
            node = child
        node[path[-1]] = value
    return data


def load_config(path=None, overrides=()):
    """Load a YAML config (None: all defaults), apply `--set` overrides, validate."""
    data = {}
    source = "defaults"
    if path is not None:
        source = str(path)
        try:
            with open(path) as f:
                data = yaml.safe_load(f) or {}
        except FileNotFoundError:
            raise ConfigError(f"config file not found: {path}") from None
        except yaml.YAMLError as e:
            raise ConfigError(f"config file {path} is not valid YAML: {e}") from None
    apply_overrides(data, overrides)
    if overrides:
        source += " + --set " + " ".join(overrides)
    return from_dict(data, source)


def dump_config(config, path):
    """Write the resolved config as YAML (temp file + rename)."""
    import os

    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        yaml.safe_dump(config.to_dict(), f, sort_keys=False)
    os.replace(tmp, path)
