"""Config files: schema validation with named errors, --set overrides, and the shipped recipes
against the reference values (../shared/ANCHORS.md)."""

import glob
import os

import pytest

from ocr_tf.config import ConfigError, apply_overrides, from_dict, load_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ALL_CONFIGS = sorted(glob.glob(os.path.join(ROOT, "configs", "**", "*.yaml"), recursive=True))


def test_unknown_key_is_named_with_a_suggestion(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("data:\n  num_classes: 3\ntrain:\n  lrr: 0.1\n")
    with pytest.raises(ConfigError, match=r"unknown config key 'train\.lrr' in .*c\.yaml; did you mean 'train\.lr'\?"):
        load_config(path)
    with pytest.raises(ConfigError, match=r"unknown config key 'trian'.*did you mean 'train'"):
        from_dict({"trian": {}})
    with pytest.raises(ConfigError, match=r"'loss\.ohem_min_keep'.*did you mean 'loss\.ohem_min_kept'"):
        from_dict({"data": {"num_classes": 3}, "loss": {"ohem_min_keep": 5}})


def test_wrong_types_and_values_are_named():
    with pytest.raises(ConfigError, match=r"'train\.batch_size' expects int, got str 'eight'"):
        from_dict({"data": {"num_classes": 3}, "train": {"batch_size": "eight"}})
    with pytest.raises(ConfigError, match=r"'data\.flip' expects bool"):
        from_dict({"data": {"num_classes": 3, "flip": "yes"}})
    with pytest.raises(ConfigError, match=r"'train\.iterations' expects int, got bool"):
        from_dict({"data": {"num_classes": 3}, "train": {"iterations": True}})
    with pytest.raises(ConfigError, match="train.strategy must be one of"):
        from_dict({"data": {"num_classes": 3}, "train": {"strategy": "mirror"}})
    with pytest.raises(ConfigError, match="mixed_precision"):
        from_dict({"data": {"num_classes": 3}, "train": {"mixed_precision": "fp16"}})
    with pytest.raises(ConfigError, match="loss.class_weights has 2 entries but data.num_classes is 3"):
        from_dict({"data": {"num_classes": 3}, "loss": {"class_weights": [1.0, 2.0]}})
    # int where a float is expected is fine (YAML `lr: 1` means 1.0)
    assert from_dict({"data": {"num_classes": 3}, "train": {"lr": 1}}).train.lr == 1.0


def test_set_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("data:\n  num_classes: 3\ntrain:\n  lr: 0.1\n")
    cfg = load_config(
        path,
        [
            "train.lr=0.02",
            "data.crop_size=[64, 96]",
            "model.overrides.alpha=0.35",
            "train.mixed_precision=bfloat16",
            "data.val=null",
        ],
    )
    assert cfg.train.lr == 0.02
    assert cfg.data.crop_size == [64, 96]
    assert cfg.model.overrides == {"alpha": 0.35}
    assert cfg.train.mixed_precision == "bfloat16"
    assert cfg.data.val is None
    with pytest.raises(ConfigError, match=r"unknown config key 'train\.lR'.*did you mean 'train\.lr'"):
        load_config(path, ["train.lR=0.5"])
    with pytest.raises(ConfigError, match="expects key=value"):
        apply_overrides({}, ["train.lr"])


def test_missing_config_file_is_named(tmp_path):
    with pytest.raises(ConfigError, match="config file not found: .*nope.yaml"):
        load_config(tmp_path / "nope.yaml")


def test_every_shipped_config_loads():
    names = {os.path.relpath(p, os.path.join(ROOT, "configs")) for p in ALL_CONFIGS}
    for ds in ("cityscapes", "ade20k", "lip", "pascal_context", "coco_stuff"):
        for model in ("hrnet_w48_ocr", "resnet101_ocr"):
            assert f"{ds}/{model}.yaml" in names
    assert "cityscapes/mobilenetv2_ocr.yaml" in names
    assert "demo/default.yaml" in names
    for p in ALL_CONFIGS:
        cfg = load_config(p)
        mscale = cfg.model.name.endswith("_mscale_ocr")  # NVIDIA's recipe: poly power 2 (issue 15)
        assert cfg.train.momentum == 0.9 and cfg.train.power == (2.0 if mscale else 0.9), p
        assert cfg.loss.aux_weight == 0.4, p
        assert cfg.data.ignore_label == 255, p


# dataset -> (classes, crop of the HRNet recipe, batch, lr, wd, ohem, head multiplier)
RECIPES = {
    "cityscapes": (19, [512, 1024], 12, 0.01, 5e-4, False, 1.0),
    "ade20k": (150, [520, 520], 16, 0.02, 1e-4, True, 1.0),
    "lip": (20, [473, 473], 40, 0.007, 5e-4, False, 1.0),
    "pascal_context": (59, [520, 520], 16, 0.001, 1e-4, False, 10.0),
    "coco_stuff": (171, [520, 520], 16, 0.001, 1e-4, True, 10.0),
}


@pytest.mark.parametrize("dataset", sorted(RECIPES))
def test_recipes_match_the_references(dataset):
    k, crop, batch, lr, wd, ohem, mult = RECIPES[dataset]
    hr = load_config(os.path.join(ROOT, "configs", dataset, "hrnet_w48_ocr.yaml"))
    rn = load_config(os.path.join(ROOT, "configs", dataset, "resnet101_ocr.yaml"))
    for cfg in (hr, rn):
        assert cfg.data.dataset == dataset and cfg.data.num_classes == k
        assert cfg.train.lr == lr and cfg.train.weight_decay == wd
        assert cfg.loss.ohem == ohem and cfg.train.head_lr_multiplier == mult
        assert cfg.data.scale_range == [0.5, 2.0]
    assert hr.model.name == "hrnet_w48_ocr" and rn.model.name == "resnet101_ocr"
    assert hr.data.crop_size == crop and hr.train.batch_size == batch
    if dataset == "cityscapes":
        assert rn.data.crop_size == [769, 769] and rn.train.batch_size == 8 and rn.train.iterations == 40000
        assert hr.loss.class_weights[0] == 0.8373 and hr.loss.class_weights[-1] == 1.0507
        assert len(hr.loss.class_weights) == 19


# ---------------------------------------------------------------- ranges and aliases (issue 12)

BASE = {"data": {"num_classes": 3}}


@pytest.mark.parametrize("section, key, value, expected", [
    ("train", "lr", -0.05, r"train\.lr must be > 0 .*got -0\.05"),
    ("train", "lr", 0, r"train\.lr must be > 0"),
    ("train", "lr", float("nan"), r"train\.lr must be > 0"),
    ("train", "momentum", 1.0, r"train\.momentum must be in \[0, 1\)"),
    ("train", "momentum", -0.1, r"train\.momentum must be in \[0, 1\)"),
    ("train", "weight_decay", -1e-4, r"train\.weight_decay must be >= 0"),
    ("train", "power", 0, r"train\.power must be > 0"),
    ("train", "iterations", 0, r"train\.iterations must be >= 1, got 0"),
    ("train", "batch_size", 0, r"train\.batch_size must be >= 1"),
    ("train", "warmup_factor", 1.5, r"train\.warmup_factor must be in \(0, 1\]"),
    ("train", "head_lr_multiplier", 0, r"train\.head_lr_multiplier must be > 0"),
    ("train", "verbose", 3, r"train\.verbose must be 0, 1 or 2"),
    ("data", "crop_size", [512], r"data\.crop_size must be a list of two numbers"),
    ("data", "crop_size", [0, 512], r"data\.crop_size must be two whole numbers >= 1"),
    ("data", "crop_size", [512.5, 512], r"data\.crop_size must be two whole numbers >= 1"),
    ("data", "val_pad_to", [-1, 512], r"data\.val_pad_to must be two whole numbers >= 1"),
    ("data", "scale_range", [0, 2.0], r"data\.scale_range must be two numbers > 0"),
    ("data", "scale_range", [2.0, 0.5], r"data\.scale_range must be \[min, max\] with min <= max"),
    ("data", "ignore_label", 300, r"data\.ignore_label must be in 0\.\.255"),
    ("data", "ignore_label", 2, r"data\.num_classes must be <= data\.ignore_label \(2\)"),
    ("data", "brightness", -5, r"data\.brightness must be >= 0"),
    ("data", "val_steps", 0, r"data\.val_steps must be null or >= 1"),
    ("loss", "ohem_threshold", 1.0, r"loss\.ohem_threshold must be in \(0, 1\)"),
    ("loss", "ohem_threshold", 0.0, r"loss\.ohem_threshold must be in \(0, 1\)"),
    ("loss", "ohem_min_kept", 0, r"loss\.ohem_min_kept must be >= 1"),
    ("loss", "aux_weight", -0.4, r"loss\.aux_weight must be >= 0"),
    ("loss", "class_weights", [1.0, -1.0, 1.0], r"loss\.class_weights must be numbers >= 0 \(entry 1"),
    ("loss", "class_weights", [0, 0, 0], r"loss\.class_weights must be not all 0"),
])
def test_values_out_of_range_are_named_with_the_range(section, key, value, expected, tmp_path):
    path = tmp_path / "run.yaml"
    data = {"data": dict(BASE["data"])}
    data.setdefault(section, {})[key] = value
    import yaml
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError, match=expected + r".*run\.yaml"):
        load_config(path)


def test_out_of_range_override_names_the_set_flag(tmp_path):
    expected = r"train\.lr must be > 0.*got -0\.05 \(defaults \+ --set .*train\.lr=-0\.05\)"
    with pytest.raises(ConfigError, match=expected):
        load_config(None, ["data.num_classes=3", "train.lr=-0.05"])


@pytest.mark.parametrize("key, ours", [
    ("train.learning_rate", "train.lr"),
    ("learning_rate", "train.lr"),
    ("train.lr_rate", "train.lr"),
    ("train.epochs", "train.iterations"),
    ("epochs", "train.iterations"),
    ("train.batch", "train.batch_size"),
    ("data.batch_size", "train.batch_size"),
    ("batch_size", "train.batch_size"),
    ("train.max_iters", "train.iterations"),
    ("data.ignore_index", "data.ignore_label"),
    ("train.crop_size", "data.crop_size"),
    ("output.output_dir", "output.dir"),
])
def test_known_aliases_point_at_our_key(key, ours):
    data = {"data": {"num_classes": 3}}
    node = data
    *parents, name = key.split(".")
    for p in parents:
        node = node.setdefault(p, {})
    node[name] = 1
    with pytest.raises(ConfigError, match=rf"unknown config key '{key}' in <dict>.*did you mean '{ours}'\?"):
        from_dict(data)


def test_an_alias_is_not_a_far_fuzzy_match():
    # Before: 'train.learning_rate' suggested 'train.strategy' (a shared 'train.' prefix and 'rate').
    with pytest.raises(ConfigError) as e:
        from_dict({"data": {"num_classes": 3}, "train": {"learning_rate": 0.1}})
    assert "strategy" not in str(e.value)


def test_config_errors_are_user_errors(tmp_path):
    from ocr_tf.errors import MissingFileError, UserError

    with pytest.raises(MissingFileError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="is a folder; expected a YAML file"):
        load_config(tmp_path)
    assert issubclass(ConfigError, UserError) and issubclass(ConfigError, ValueError)
