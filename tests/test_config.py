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
