"""`ocr_tf.fold_bn.fold_batch_norm`: the folded copy computes what the network computes (issue 13)."""

import json

import numpy as np
import pytest

from ocr_tf.fold_bn import conv_bn_layers, fold_batch_norm
from ocr_tf.models import build_model
from official_fixture import FIXTURE, fixture_model, load_fixture

TOL = 1e-5  # max |folded - unfolded| / max |unfolded|


def rel_error(a, b):
    a, b = np.asarray(a), np.asarray(b)
    return float(np.max(np.abs(a - b)) / np.max(np.abs(b)))


def randomize_batch_norms(model, seed=0):
    """BN statistics and affine far from the identity, so that a wrong fold shows."""
    rng = np.random.default_rng(seed)
    for cb in conv_bn_layers(model):
        n = cb.bn.gamma.shape[0]
        cb.bn.gamma.assign(rng.uniform(0.5, 1.5, n).astype("float32"))
        cb.bn.beta.assign(rng.normal(0, 0.2, n).astype("float32"))
        cb.bn.moving_mean.assign(rng.normal(0, 0.5, n).astype("float32"))
        cb.bn.moving_variance.assign(rng.uniform(0.5, 2.0, n).astype("float32"))


def assert_folded_equal(model, x):
    folded = fold_batch_norm(model)
    want, got = model(x, training=False), folded(x, training=False)
    for key in ("logits", "aux_logits"):
        assert rel_error(got[key], want[key]) < TOL, key
    layers = conv_bn_layers(folded)
    assert layers and all(cb.bn is None and cb.conv.use_bias for cb in layers)
    return folded


def test_folded_official_fixture_model_equals_unfolded_and_the_official_outputs():
    fixture = load_fixture()
    model = fixture_model(fixture)
    x = np.transpose(fixture["input_0"], (0, 2, 3, 1))
    folded = assert_folded_equal(model, x)
    official = np.transpose(fixture["out_0"], (0, 2, 3, 1))
    assert rel_error(folded(x, training=False)["logits"], official) < 1e-4
    # the original is untouched (still has its BatchNorms)
    assert all(cb.bn is not None for cb in conv_bn_layers(model))


def tiny_extra():
    with np.load(FIXTURE) as data:
        return json.loads(str(data["config"]))["extra"]


# HRNet + OCR: the official fixture above; here the other families and heads.
@pytest.mark.parametrize("name, overrides", [
    ("hrnet_w18_fcn", {"extra": "fixture"}),
    ("resnet50_ocr", {"mid_channels": 16, "key_channels": 8}),
    ("mobilenetv2_ocr", {"alpha": 0.35, "mid_channels": 16, "key_channels": 8}),
])
def test_folded_equals_unfolded_on_each_family(name, overrides):
    if overrides.get("extra") == "fixture":
        overrides = dict(overrides, extra=tiny_extra())
    model = build_model(name, 4, **overrides)
    randomize_batch_norms(model)
    x = np.random.default_rng(1).normal(size=(1, 64, 96, 3)).astype("float32")
    assert_folded_equal(model, x)


def test_only_functional_models_are_folded():
    with pytest.raises(TypeError, match="functional keras.Model"):
        fold_batch_norm(lambda x: x)
