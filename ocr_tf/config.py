"""Training configuration: YAML files validated against dataclasses.

A config file has four sections (`model`, `data`, `loss`, `train`) plus `output`; every key is a
field below. Unknown or mistyped keys are errors that name the key and suggest the closest valid
one, and values are type-checked, so a typo never silently falls back to a default.
`--set a.b=value` overrides (value parsed as YAML) are applied on top of the file.
"""

import dataclasses
import difflib
import math
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Optional

import yaml

from ocr_tf.errors import MissingFileError, UserError


class ConfigError(UserError):
    """A config file or override that does not match the schema (or a value out of range)."""


class MissingConfigError(ConfigError, MissingFileError):
    """The config file named does not exist."""


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
    head_layers: list = field(default_factory=lambda: ["head"])  # layers whose variables get head_lr_multiplier
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


# Names other trainers (mmseg, HRNet-OCR, timm, Keras, Lightning...) use for our keys. A key found
# here points at ours instead of at a far fuzzy match ('learning_rate' is not 'strategy').
ALIASES = {
    "learning_rate": "train.lr", "lr_rate": "train.lr", "base_lr": "train.lr", "init_lr": "train.lr",
    "initial_lr": "train.lr", "max_lr": "train.lr",
    "epochs": "train.iterations", "num_epochs": "train.iterations", "max_epochs": "train.iterations",
    "end_epoch": "train.iterations", "max_iter": "train.iterations", "max_iters": "train.iterations",
    "max_steps": "train.iterations", "total_steps": "train.iterations", "num_steps": "train.iterations",
    "steps": "train.iterations", "iters": "train.iterations",
    "batch": "train.batch_size", "bs": "train.batch_size", "batch_size_per_gpu": "train.batch_size",
    "images_per_gpu": "train.batch_size", "samples_per_gpu": "train.batch_size",
    "train_batch_size": "train.batch_size",
    "wd": "train.weight_decay", "decay": "train.weight_decay", "l2": "train.weight_decay",
    "lr_power": "train.power", "poly_power": "train.power",
    "warmup": "train.warmup_steps", "warmup_iters": "train.warmup_steps", "warmup_epochs": "train.warmup_steps",
    "warmup_ratio": "train.warmup_factor",
    "amp": "train.mixed_precision", "fp16": "train.mixed_precision", "precision": "train.mixed_precision",
    "distribution": "train.strategy", "distribute": "train.strategy",
    "crop": "data.crop_size", "image_size": "data.crop_size", "input_size": "data.crop_size",
    "img_size": "data.crop_size", "train_size": "data.crop_size",
    "classes": "data.num_classes", "n_classes": "data.num_classes", "nclass": "data.num_classes",
    "num_class": "data.num_classes", "nclasses": "data.num_classes",
    "ignore_index": "data.ignore_label", "ignore_idx": "data.ignore_label", "ignore": "data.ignore_label",
    "scale": "data.scale_range", "scales": "data.scale_range", "scale_factor": "data.scale_range",
    "multi_scale": "data.scale_range", "ratio_range": "data.scale_range",
    "train_data": "data.train", "train_files": "data.train", "train_set": "data.train",
    "val_data": "data.val", "val_files": "data.val", "val_set": "data.val",
    "dataset_name": "data.dataset",
    "aux_loss_weight": "loss.aux_weight", "aux_weights": "loss.aux_weight",
    "ohem_thres": "loss.ohem_threshold", "ohem_thresh": "loss.ohem_threshold",
    "ohem_keep": "loss.ohem_min_kept", "min_kept": "loss.ohem_min_kept",
    "use_ohem": "loss.ohem",
    "arch": "model.name", "model_name": "model.name", "architecture": "model.name",
    "output_dir": "output.dir", "out_dir": "output.dir", "save_dir": "output.dir",
    "work_dir": "output.dir", "log_dir": "output.dir", "checkpoint_dir": "output.dir",
}
ALIAS_NOTES = {
    "train.iterations": " (ocr_tf counts optimizer steps: iterations = epochs x images / batch_size)",
    "train.warmup_steps": " (in optimizer steps)",
}


def _suggest(where, valid, all_keys=()):
    """'; did you mean X?' for an unknown dotted key: a known alias first, then the same name in
    another section, then a close match of the key's own name within its section."""
    name = where.rsplit(".", 1)[-1]
    target = ALIASES.get(name.lower())
    if target is not None:
        return f"; did you mean '{target}'?{ALIAS_NOTES.get(target, '')}"
    elsewhere = [k for k in all_keys if k.rsplit(".", 1)[-1] == name and k != where]
    if elsewhere:
        return f"; '{name}' belongs in another section: did you mean '{elsewhere[0]}'?"
    names = {v.rsplit(".", 1)[-1]: v for v in valid}
    lower = {n.lower(): v for n, v in names.items()}
    if name.lower() in lower:
        return f"; did you mean '{lower[name.lower()]}'?"
    close = difflib.get_close_matches(name, list(names), n=1, cutoff=0.6)
    return f"; did you mean '{names[close[0]]}'?" if close else f"; valid keys: {', '.join(sorted(valid))}"


def _all_keys(cls=None, prefix=""):
    """Every dotted key of the schema (for 'belongs in another section')."""
    keys = []
    hints = typing.get_type_hints(cls or Config)
    for f in dataclasses.fields(cls or Config):
        if dataclasses.is_dataclass(hints[f.name]):
            keys += _all_keys(hints[f.name], f"{prefix}{f.name}.")
        else:
            keys.append(f"{prefix}{f.name}")
    return keys


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
            raise ConfigError(f"unknown config key '{where}' in {source}{_suggest(where, valid, _all_keys())}")
        hint = hints[key]
        if dataclasses.is_dataclass(hint):
            kwargs[key] = _build(hint, value, f"{where}.", source)
        else:
            kwargs[key] = _check_type(value, hint, where)
    return cls(**kwargs)


def _require(ok, key, expected, value, source):
    """ConfigError '<key> must be <expected>, got <value> (<source>)' unless `ok`."""
    if not ok:
        raise ConfigError(f"{key} must be {expected}, got {value!r} ({source}).")


def _finite(x):
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _pair(value, key, source, positive_int=True):
    _require(isinstance(value, list) and len(value) == 2, key, "a list of two numbers [height, width]",
             value, source)
    for v in value:
        if positive_int:
            _require(isinstance(v, int) and not isinstance(v, bool) and v >= 1, key,
                     "two whole numbers >= 1 (pixels)", value, source)
        else:
            _require(_finite(v) and v > 0, key, "two numbers > 0", value, source)


def _validate(config, source):
    """Ranges, not just types: everything a typo or a sign error could get wrong, named."""
    t, d, lo = config.train, config.data, config.loss
    if t.strategy not in STRATEGIES:
        raise ConfigError(f"train.strategy must be one of {STRATEGIES}, got {t.strategy!r} ({source}).")
    if t.mixed_precision not in PRECISIONS:
        raise ConfigError(
            f"train.mixed_precision must be one of float16, bfloat16 or null, got {t.mixed_precision!r} ({source})."
        )
    _require(bool(config.model.name.strip()), "model.name", "a model name (python -m ocr_tf.models lists them)",
             config.model.name, source)
    for name in ("batch_size", "iterations", "steps_per_epoch", "backup_every_steps", "steps_per_execution"):
        _require(getattr(t, name) >= 1, f"train.{name}", ">= 1", getattr(t, name), source)
    if t.warmup_steps < 0 or t.warmup_steps >= t.iterations:
        raise ConfigError(f"train.warmup_steps must be in [0, iterations), got {t.warmup_steps} ({source}).")
    _require(_finite(t.lr) and t.lr > 0, "train.lr", "> 0 (e.g. 0.01)", t.lr, source)
    _require(_finite(t.momentum) and 0 <= t.momentum < 1, "train.momentum", "in [0, 1) (e.g. 0.9)",
             t.momentum, source)
    _require(_finite(t.weight_decay) and t.weight_decay >= 0, "train.weight_decay", ">= 0 (e.g. 5e-4)",
             t.weight_decay, source)
    _require(_finite(t.power) and t.power > 0, "train.power", "> 0 (the poly schedule's exponent, e.g. 0.9)",
             t.power, source)
    _require(_finite(t.warmup_factor) and 0 < t.warmup_factor <= 1, "train.warmup_factor", "in (0, 1]",
             t.warmup_factor, source)
    _require(_finite(t.head_lr_multiplier) and t.head_lr_multiplier > 0, "train.head_lr_multiplier", "> 0",
             t.head_lr_multiplier, source)
    _require(all(isinstance(k, str) and k for k in t.head_layers), "train.head_layers",
             "a list of top-level layer names", t.head_layers, source)
    _require(t.seed >= 0, "train.seed", ">= 0", t.seed, source)
    _require(t.tensorboard_images >= 0, "train.tensorboard_images", ">= 0", t.tensorboard_images, source)
    _require(t.verbose in (0, 1, 2), "train.verbose", "0, 1 or 2", t.verbose, source)

    _require(0 <= d.ignore_label <= 255, "data.ignore_label", "in 0..255 (labels are stored as 8-bit PNG)",
             d.ignore_label, source)
    if d.num_classes < 1:
        raise ConfigError(f"data.num_classes must be >= 1, got {d.num_classes} ({source}).")
    _require(d.num_classes <= d.ignore_label, "data.num_classes",
             f"<= data.ignore_label ({d.ignore_label}): class ids and the ignore id share 8 bits",
             d.num_classes, source)
    _pair(d.crop_size, "data.crop_size", source)
    _pair(d.scale_range, "data.scale_range", source, positive_int=False)
    _require(d.scale_range[0] <= d.scale_range[1], "data.scale_range", "[min, max] with min <= max",
             d.scale_range, source)
    if d.val_pad_to is not None:
        _pair(d.val_pad_to, "data.val_pad_to", source)
    _require(_finite(d.brightness) and d.brightness >= 0, "data.brightness", ">= 0 (a +- shift in 0..255)",
             d.brightness, source)
    _require(d.shuffle_buffer >= 0, "data.shuffle_buffer", ">= 0", d.shuffle_buffer, source)
    _require(d.val_batch_size >= 1, "data.val_batch_size", ">= 1", d.val_batch_size, source)
    _require(d.val_steps is None or d.val_steps >= 1, "data.val_steps", "null or >= 1", d.val_steps, source)

    _require(_finite(lo.aux_weight) and lo.aux_weight >= 0, "loss.aux_weight", ">= 0 (the paper: 0.4)",
             lo.aux_weight, source)
    if lo.class_weights is not None and len(lo.class_weights) != d.num_classes:
        raise ConfigError(
            f"loss.class_weights has {len(lo.class_weights)} entries but data.num_classes is "
            f"{d.num_classes} ({source})."
        )
    if lo.class_weights is not None:
        bad = [i for i, w in enumerate(lo.class_weights) if not (_finite(w) and w >= 0)]
        _require(not bad, "loss.class_weights", f"numbers >= 0 (entry {bad[0] if bad else ''} is not)",
                 lo.class_weights[bad[0]] if bad else None, source)
        _require(any(w > 0 for w in lo.class_weights), "loss.class_weights", "not all 0", lo.class_weights,
                 source)
    _require(_finite(lo.ohem_threshold) and 0 < lo.ohem_threshold < 1, "loss.ohem_threshold",
             "in (0, 1) (a probability, [HR]: 0.9)", lo.ohem_threshold, source)
    _require(lo.ohem_min_kept >= 1, "loss.ohem_min_kept", ">= 1", lo.ohem_min_kept, source)
    _require(bool(config.output.dir.strip()), "output.dir", "a folder path", config.output.dir, source)
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
            raise MissingConfigError(f"config file not found: {path}") from None
        except IsADirectoryError:
            raise ConfigError(f"config file {path} is a folder; expected a YAML file") from None
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
