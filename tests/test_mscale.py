"""Hierarchical multi-scale attention (NVIDIA HRNet_Mscale): parity with NVIDIA's code through the
fixture tests/fixtures/nvidia_mscale_tiny.npz (made by tools/make_nvidia_fixture.py; no torch
needed here), the merge against a NumPy float64 reference, and the parameter counts."""

import json
import os

import numpy as np
import pytest

from ocr_tf import convert
from ocr_tf.convert_nvidia import load_nvidia_weights, nvidia_variables, verify_fixture
from ocr_tf.layers.mscale import (
    attention_head_params,
    check_scales,
    is_mscale,
    mscale_predict,
    nscale_merge,
    scaled_size,
)
from ocr_tf.models import build_model

FIXTURE = os.path.join(os.path.dirname(__file__), "fixtures", "nvidia_mscale_tiny.npz")
TOL = 1e-4  # max |a - b| / max |b|


@pytest.fixture(scope="module")
def fixture():
    with np.load(FIXTURE) as data:
        return {k: data[k] for k in data.files}


@pytest.fixture(scope="module")
def config(fixture):
    return json.loads(str(fixture["config"]))


@pytest.fixture(scope="module")
def state(fixture):
    return {k[len("state/") :]: v for k, v in fixture.items() if k.startswith("state/")}


def tiny_model(config):
    return build_model(
        "hrnet_tiny_mscale_ocr",
        config["num_classes"],
        extra=config["extra"],
        mid_channels=config["ocr_mid_channels"],
        key_channels=config["ocr_key_channels"],
        attn_channels=config["attn_channels"],
    )


@pytest.fixture(scope="module")
def converted(config, state):
    model = tiny_model(config)
    # As released: every key under `module.` (DataParallel), plus BN's num_batches_tracked.
    released = {f"module.{k}": v for k, v in state.items()}
    released["module.scale_attn.bn0.num_batches_tracked"] = np.array(7)
    load_nvidia_weights(model, convert.clean_state_dict(released, head="mscale"))
    return model


def test_converted_model_reproduces_nvidia_for_both_scale_lists_and_sizes(converted):
    errors = verify_fixture(converted, FIXTURE)
    assert sorted(errors) == ["pred_0_s05_10", "pred_0_s05_10_20", "pred_1_s05_10", "pred_1_s05_10_20"]
    assert max(errors.values()) < TOL, errors


def test_attention_at_scale_one_matches_nvidia(converted, fixture):
    from ocr_tf.layers.mscale import scale_outputs

    for n in (0, 1):
        x = np.transpose(fixture[f"input_{n}"], (0, 2, 3, 1))
        got = np.asarray(scale_outputs(converted, x, 1.0)["attention"])
        want = np.transpose(fixture[f"attn_{n}"], (0, 2, 3, 1))
        assert got.shape == want.shape
        assert np.max(np.abs(got - want)) < 1e-5  # attention is in (0, 1)


def test_align_corners_true_would_not_reproduce_nvidia(config, state, fixture):
    """The fixture catches the [HR] resize mode: the same weights with align_corners=True miss."""
    model = build_model(
        "hrnet_tiny_mscale_ocr", config["num_classes"], extra=config["extra"],
        mid_channels=config["ocr_mid_channels"], key_channels=config["ocr_key_channels"],
        attn_channels=config["attn_channels"], align_corners=True,
    )
    load_nvidia_weights(model, state)
    x = np.transpose(fixture["input_1"], (0, 2, 3, 1))
    want = np.transpose(fixture["pred_1_s05_10"], (0, 2, 3, 1))
    got = np.asarray(mscale_predict(model, x, [0.5, 1.0]))
    assert np.max(np.abs(got - want)) / np.max(np.abs(want)) > 1e-2


def test_mismatched_checkpoint_lists_every_problem_and_loads_nothing(config, state):
    model = tiny_model(config)
    before = [np.array(v) for v in model.weights]
    bad = dict(state)
    del bad["scale_attn.conv2.weight"]
    bad["scale_attn.conv2.bias"] = np.zeros(1, np.float32)
    bad["ocr.cls_head.weight"] = np.zeros((3, config["ocr_mid_channels"], 1, 1), np.float32)
    with pytest.raises(convert.CheckpointMismatch) as err:
        load_nvidia_weights(model, bad, "bad.pth")
    e = err.value
    assert e.missing == ["scale_attn.conv2.weight"]
    assert e.unexpected == ["scale_attn.conv2.bias"]
    assert len(e.mismatched) == 1 and e.mismatched[0].startswith("ocr.cls_head.weight")
    assert "bad.pth" in str(e)
    assert all(np.array_equal(b, np.array(v)) for b, v in zip(before, model.weights))


def test_official_names_cover_every_weight_once(config, state):
    model = tiny_model(config)
    names = nvidia_variables(model)
    assert sorted(names) == sorted(state)
    assert len({id(v) for v in names.values()}) == len(model.weights)


# ---------------------------------------------------------------- the merge, in NumPy float64


def np_resize(x, size):
    """PyTorch bilinear, align_corners=False (half-pixel, source clamped at 0), NHWC, float64."""
    def axis(n_in, n_out):
        src = np.maximum((np.arange(n_out) + 0.5) * n_in / n_out - 0.5, 0.0)
        i0 = np.minimum(np.floor(src).astype(int), n_in - 1)
        i1 = np.minimum(i0 + 1, n_in - 1)
        return i0, i1, src - i0

    y0, y1, wy = axis(x.shape[1], size[0])
    x0, x1, wx = axis(x.shape[2], size[1])
    rows = x[:, y0] * (1 - wy)[None, :, None, None] + x[:, y1] * wy[None, :, None, None]
    return rows[:, :, x0] * (1 - wx)[None, None, :, None] + rows[:, :, x1] * wx[None, None, :, None]


def np_nscale(outputs):
    pred = None
    for s in sorted(outputs, reverse=True):
        p, a = outputs[s]["logits"], outputs[s]["attention"]
        if pred is None:
            pred = p
        elif s >= 1.0:
            pred = a * p + (1 - a) * np_resize(pred, p.shape[1:3])
        else:
            size = pred.shape[1:3]
            pred = np_resize(a * p, size) + (1 - np_resize(a, size)) * pred
    return pred


def random_outputs(rng, height, width, scales, k=4):
    out = {}
    for s in scales:
        h, w = scaled_size(height, width, s)
        out[s] = {
            "logits": rng.normal(size=(2, h, w, k)) * 5,
            "aux_logits": rng.normal(size=(2, h, w, k)),
            "attention": rng.uniform(size=(2, h, w, 1)),
        }
    return out


@pytest.mark.parametrize("size", [(32, 48), (35, 45)])
@pytest.mark.parametrize("scales", [[0.5, 1.0], [1.0, 0.5, 2.0], [0.25, 0.75, 1.0, 1.5]])
def test_nscale_merge_equals_numpy_float64_reference(size, scales):
    rng = np.random.default_rng(0)
    outs = random_outputs(rng, *size, scales)
    want = np_nscale(outs)
    as32 = {s: {k: v.astype(np.float32) for k, v in o.items()} for s, o in outs.items()}
    got = np.asarray(nscale_merge(as32)["logits"])
    assert got.shape == (2, *size, 4)
    # float32 vs float64 (NVIDIA's own code spreads by up to 4e-6 between the two, [NV])
    assert np.max(np.abs(got - want)) / np.max(np.abs(want)) < 1e-5
    # The usual mistake (resizing a and p separately) would be caught at this tolerance.
    if 0.5 in scales and len(scales) == 2:
        a, p, hi = outs[0.5]["attention"], outs[0.5]["logits"], outs[1.0]["logits"]
        wrong = np_resize(a, size) * np_resize(p, size) + (1 - np_resize(a, size)) * hi
        assert np.max(np.abs(wrong - want)) / np.max(np.abs(want)) > 1e-4


def test_scales_must_contain_one_and_floor_sizes():
    with pytest.raises(ValueError, match="1.0"):
        check_scales([0.5, 2.0])
    with pytest.raises(ValueError, match="positive"):
        check_scales([1.0, 0.0])
    assert check_scales([0.5, 2, 1]) == [2.0, 1.0, 0.5]
    assert scaled_size(35, 45, 0.5) == (17, 22)
    assert scaled_size(1024, 2048, 0.75) == (768, 1536)


# ---------------------------------------------------------------- parameter counts


def trainable(model):
    return sum(int(np.prod(v.shape)) for v in model.trainable_weights)


def test_attention_head_param_formula(config, converted):
    # NVIDIA's W48 head: 512 -> 256 -> 256 -> 1 ([NV]: 1,770,752).
    assert attention_head_params(512, 256) == 1_770_752
    head = converted.get_layer("head").scale_attn
    assert trainable(head) == attention_head_params(config["ocr_mid_channels"], config["attn_channels"])
    import keras

    x = keras.Input((None, None, 3))
    plain = keras.Model(x, {"logits": x, "aux_logits": x})
    assert is_mscale(converted) and not is_mscale(plain)


@pytest.mark.slow  # builds the 72M-parameter network (~20-60 s on 2 shared cores)
def test_w48_parameter_count_equals_nvidia():
    model = build_model("hrnet_w48_mscale_ocr", 19)
    assert trainable(model) == 72_143_430  # NVIDIA's count (sum of parameters()) at 19 classes
    assert trainable(model.get_layer("head").scale_attn) == 1_770_752


# ---------------------------------------------------------------- inference integration


def test_predict_logits_uses_the_hierarchical_merge(converted, fixture):
    """ocr_tf.inference (evaluate / predict) on a multi-scale network: NVIDIA's merge, not [HR]'s sum."""
    from ocr_tf.inference import predict_logits

    x = np.transpose(fixture["input_1"], (0, 2, 3, 1))
    want = np.transpose(fixture["pred_1_s05_10_20"], (0, 2, 3, 1))
    scores = np.asarray(predict_logits(converted, x, num_classes=5, scales=(2.0, 0.5, 1.0)))
    assert np.max(np.abs(np.log(scores) - want)) / np.max(np.abs(want)) < TOL
    flipped = np.asarray(predict_logits(converted, x, num_classes=5, scales=(0.5, 1.0), flip=True, merge="softmax"))
    a = np.asarray(mscale_predict(converted, x, (0.5, 1.0)))
    b = np.asarray(mscale_predict(converted, x[:, :, ::-1], (0.5, 1.0)))[:, :, ::-1]
    avg = 0.5 * (a + b)
    expected = np.exp(avg - avg.max(-1, keepdims=True))
    expected /= expected.sum(-1, keepdims=True)
    # Logits reach ~90 here: float32 noise of 1e-6 relative moves probabilities by ~1e-5.
    np.testing.assert_allclose(flipped, expected, atol=1e-4)
    assert np.mean(flipped.argmax(-1) == expected.argmax(-1)) > 0.999
    with pytest.raises(ValueError, match="1.0"):
        predict_logits(converted, x, num_classes=5, scales=(0.5, 0.75))


@pytest.mark.slow  # writes and reloads a SavedModel (~30-90 s on 2 shared cores)
def test_saved_model_with_fixed_scales_serves_the_merge(converted, tmp_path):
    import tensorflow as tf

    from ocr_tf.export import export_saved_model
    from ocr_tf.layers.mscale import FixedScalesNetwork
    from ocr_tf.preprocessing import normalize_image

    path = export_saved_model(FixedScalesNetwork(converted, (1.0, 0.5)), str(tmp_path / "sm"), with_probabilities=True)
    image = (np.random.default_rng(0).uniform(size=(1, 70, 90, 3)) * 255).astype(np.uint8)
    served = tf.saved_model.load(path).signatures["serving_default"](images=tf.constant(image))
    logits = np.asarray(mscale_predict(converted, normalize_image(image), (0.5, 1.0)))
    probs = np.exp(logits - logits.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    assert served["probabilities"].shape == (1, 70, 90, 5)
    # Logits reach ~90, so float32 graph-vs-eager noise (1e-6 relative) moves near-tie probabilities by
    # up to ~1e-4 (measured 9.6e-5); a wrong merge (single scale, [HR]'s sum) moves them by > 0.1.
    np.testing.assert_allclose(served["probabilities"].numpy(), probs, atol=1e-3)
    assert np.mean(served["labels"].numpy() == logits.argmax(-1)) > 0.999


def test_registry_names_and_unknown_override():
    from ocr_tf.models import list_models

    assert {"hrnet_w48_mscale_ocr", "hrnet_tiny_mscale_ocr"} <= set(list_models())
    with pytest.raises(ValueError, match=r"\['alpha'\] for model 'hrnet_tiny_mscale_ocr'; allowed: .*'attn_channels'"):
        build_model("hrnet_tiny_mscale_ocr", 3, alpha=0.5)


def test_preset_of_the_converted_network_predicts_uint8_images_by_the_merge(converted, tmp_path):
    """Issue 15's done-when: a preset loaded by `Segmenter.from_preset`, and `predict(uint8,
    scales=[0.5, 1.0, 2.0])` running the hierarchical merge at the input size."""
    import ocr_tf

    seg = ocr_tf.Segmenter(converted, [f"c{i}" for i in range(5)], align_corners=False,
                           model_name="hrnet_tiny_mscale_ocr")
    seg.save_to_preset(tmp_path / "preset")
    loaded = ocr_tf.Segmenter.from_preset(str(tmp_path / "preset"))
    image = np.random.default_rng(4).integers(0, 256, (70, 90, 3), dtype=np.uint8)
    labels = loaded.predict(image, scales=[0.5, 1.0, 2.0])
    x = ((image / 255.0 - np.array(seg.mean)) / np.array(seg.std)).astype(np.float32)[None]
    want = np.asarray(mscale_predict(converted, x, (0.5, 1.0, 2.0)))[0].argmax(-1)
    assert labels.shape == (70, 90)
    assert np.mean(labels == want) > 0.999
    # One scale alone predicts otherwise: the three scales were merged.
    single = np.asarray(mscale_predict(converted, x, (1.0,)))[0].argmax(-1)
    assert np.mean(labels == single) < np.mean(labels == want)
