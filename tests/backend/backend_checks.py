"""Checks run on one Keras backend per process (KERAS_BACKEND), by tests/backend/test_backends.py.

Not collected on its own (its name is not test_*): it needs the TensorFlow answers that the
parent writes to $OCR_TF_BACKEND_CASES. Every check compares numbers: with TensorFlow's outputs
and training step, with the NumPy float64 references, with the official PyTorch fixture.
"""

import glob
import json
import os

import keras
import numpy as np
import pytest
from keras import ops

import cases
import ocr_reference as ref

CASES = os.environ.get("OCR_TF_BACKEND_CASES", "")
FIXTURE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "fixtures", "hrnet_ocr_tiny_official.npz")
pytestmark = pytest.mark.skipif(not CASES, reason="run by tests/backend/test_backends.py")


def np_(x):
    return np.asarray(ops.convert_to_numpy(x), np.float64)


def rel_err(a, b):
    a, b = np_(a), np.asarray(b, np.float64)
    return np.max(np.abs(a - b)) / np.max(np.abs(b))


def test_runs_on_the_requested_backend():
    assert keras.backend.backend() == os.environ["KERAS_BACKEND"]


@pytest.mark.parametrize("align_corners", [True, False])
def test_resize_is_pytorchs_bilinear(align_corners):
    from ocr_tf.layers import resize_bilinear

    for src, dst in [((5, 7), (17, 23)), ((33, 21), (10, 9)), ((4, 4), (1, 1)), ((9, 13), (9, 13))]:
        x = np.random.default_rng(0).normal(size=(2, *src, 3))
        got = resize_bilinear(ops.convert_to_tensor(x.astype(np.float32)), dst, align_corners)
        assert tuple(got.shape) == (2, *dst, 3)
        assert np.max(np.abs(np_(got) - ref.resize_bilinear(x, dst, align_corners))) < 1e-5


def test_ocr_equations_match_numpy():
    from test_layers_ocr import attention_weights, head_weights, randomize

    from ocr_tf.layers import ObjectAttention, OCRHead, SpatialGather

    rng = np.random.default_rng(1)
    pixels, regions = rng.normal(size=(2, 7, 9, 12)), rng.normal(size=(2, 7, 9, 5))
    got = SpatialGather()(pixels.astype(np.float32), regions.astype(np.float32))
    assert rel_err(got, ref.region_representations(pixels, regions)) < 1e-5
    f = rng.normal(size=(2, 4, 12))
    att = ObjectAttention(key_channels=8)
    att(pixels.astype(np.float32), f.astype(np.float32))
    randomize(att, seed=3)
    got = att(pixels.astype(np.float32), f.astype(np.float32), training=False)
    assert rel_err(got, ref.object_contextual(pixels, f, attention_weights(att), 8)) < 1e-5
    features = rng.normal(size=(2, 7, 9, 24))
    head = OCRHead(5, mid_channels=16, key_channels=8)
    head(features.astype(np.float32))
    randomize(head, seed=6)
    out = head(features.astype(np.float32), training=False)
    logits, aux = ref.ocr_head(features, head_weights(head), 8)
    assert rel_err(out["aux_logits"], aux) < 1e-5 and rel_err(out["logits"], logits) < 1e-5


def _errors_of_saved_models(folder, expected_names):
    """{name: largest error relative to TensorFlow's outputs} of every <name>.keras in `folder`,
    loaded and run (`predict`) on this backend; the names must be `expected_names`."""
    names = sorted(os.path.basename(p)[: -len(".keras")] for p in glob.glob(os.path.join(folder, "*.keras")))
    assert names == sorted(expected_names)
    errors = {}
    for name in names:
        model = keras.models.load_model(os.path.join(folder, f"{name}.keras"))
        with np.load(os.path.join(folder, f"{name}.npz")) as data:
            xs = [data[f"x{i}"] for i in range(len(model.inputs))]
            out = model.predict(xs if len(xs) > 1 else xs[0], verbose=0)
            assert all(tuple(out[k].shape) == data[k].shape for k in ("logits", "aux_logits")), name
            errors[name] = max(rel_err(out[k], data[k]) for k in ("logits", "aux_logits"))
    return errors


def test_every_head_loads_from_tensorflows_keras_file_and_gives_its_outputs():
    """Serialization round trip across backends, for every head family (cases.head_models)."""
    import ocr_tf.layers.ablations  # noqa: F401  (registers the heads' classes for loading)
    import ocr_tf.layers.context  # noqa: F401

    errors = _errors_of_saved_models(CASES, cases.HEAD_NAMES)
    assert max(errors.values()) < 1e-5, errors


def test_resnet_and_mobilenet_models_load_from_tensorflows_keras_file_and_give_its_outputs():
    """The registry's dilated ResNet-50 + OCR ([OS]) and MobileNetV2 + OCR / FCN (the phone
    models), saved on TensorFlow with random weights and BatchNorm statistics, on this backend."""
    import ocr_tf.models  # noqa: F401  (registers FCNHead, CaffeInput, ...)

    errors = _errors_of_saved_models(os.path.join(CASES, "models"), cases.BACKBONE_MODELS)
    assert max(errors.values()) < 1e-5, errors


def test_losses_and_metric_match_numpy():
    from test_losses import np_ce, np_ohem

    from ocr_tf.losses import cross_entropy, ohem_cross_entropy
    from ocr_tf.metrics import SegmentationMeanIoU, confusion_matrix_np, miou_from_confusion

    rng = np.random.default_rng(0)
    labels = rng.integers(0, cases.K, (2, 13, 17)).astype(np.int32)
    labels[rng.random(labels.shape) < 0.2] = 255
    logits = (rng.normal(size=(2, 4, 5, cases.K)) * 3).astype(np.float32)
    full = ref.resize_bilinear(logits.astype(np.float64), labels.shape[1:], True)
    np.testing.assert_allclose(float(cross_entropy(labels, logits)), np_ce(labels, full), rtol=1e-5)
    want, _ = np_ohem(labels, full, 0.7, 50)
    np.testing.assert_allclose(float(ohem_cross_entropy(labels, logits, threshold=0.7, min_kept=50)), want, rtol=1e-5)
    metric = SegmentationMeanIoU(cases.K)
    metric.update_state(labels, logits)
    cm = confusion_matrix_np(labels, np.argmax(full, -1), cases.K)
    np.testing.assert_array_equal(np_(metric.confusion), cm)
    np.testing.assert_allclose(float(metric.result()), miou_from_confusion(cm)["miou"], rtol=1e-6)


def test_poly_lr():
    from ocr_tf.optim import PolyLR

    s = PolyLR(0.01, 100, power=0.9, warmup_steps=10)
    for step in (0, 5, 37, 100, 150):
        want = 0.01 * (1 - min(step, 100) / 100) ** 0.9 * (0.1 + 0.9 * min(step / 10, 1.0))
        np.testing.assert_allclose(float(s(step)), want, rtol=1e-6, atol=1e-12)


def _train_step_case():
    network = cases.head_models()["ocr_hrnet"]
    with np.load(os.path.join(CASES, "train_step.npz")) as data:
        tf_answer = {k: data[k] for k in data.files}
    for i, w in enumerate(network.weights):
        w.assign(tf_answer[f"before_{i}"])
    return network, tf_answer


def _assert_same_step(network, tf_answer, history):
    np.testing.assert_allclose(history.history["loss"][0], tf_answer["loss"], rtol=1e-5)
    worst = max(
        np.max(np.abs(np_(w) - tf_answer[f"after_{i}"])) / max(1e-3, np.max(np.abs(tf_answer[f"after_{i}"])))
        for i, w in enumerate(network.weights)
    )
    assert worst < 1e-4, worst


def test_one_fit_step_equals_tensorflows():
    """fit (loss, aux loss, mIoU, SGD with L2 and head multiplier, PolyLR, BN statistics) from
    the same weights on the same batch gives TensorFlow's weights."""
    network, tf_answer = _train_step_case()
    x, y = cases.train_batch()
    history = cases.trainer_for(network).fit(x, y, batch_size=2, epochs=1, shuffle=False, verbose=0)
    _assert_same_step(network, tf_answer, history)


@pytest.mark.skipif(keras.backend.backend() != "jax", reason="keras.distribution is JAX's")
def test_jax_data_parallel_on_two_devices_equals_one_device_on_the_global_batch():
    import jax

    devices = jax.devices("cpu")
    assert len(devices) == 2, "run with XLA_FLAGS=--xla_force_host_platform_device_count=2"
    keras.distribution.set_distribution(keras.distribution.DataParallel(devices=devices))
    try:
        network, tf_answer = _train_step_case()
        x, y = cases.train_batch()  # global batch 2: one image per device
        history = cases.trainer_for(network).fit(x, y, batch_size=2, epochs=1, shuffle=False, verbose=0)
        assert len(network.weights[0].value.sharding.device_set) == 2  # replicated on both devices
    finally:
        keras.distribution.set_distribution(None)
    _assert_same_step(network, tf_answer, history)


def test_official_fixture_parity():
    """The converted official tiny HRNet-OCR reproduces the official outputs (< 1e-4), built
    with the registry's `build_model` on this backend."""
    from ocr_tf import convert
    from ocr_tf.models import build_model

    with np.load(FIXTURE) as data:
        fixture = {k: data[k] for k in data.files}
    config = json.loads(str(fixture["config"]))
    model = build_model(
        "hrnet_w18_ocr", config["num_classes"], extra=config["extra"],
        mid_channels=config["ocr_mid_channels"], key_channels=config["ocr_key_channels"],
    )
    state = {k[len("state/"):]: v for k, v in fixture.items() if k.startswith("state/")}
    convert.load_official_weights(model, convert.clean_state_dict(state))
    for n in (0, 1):  # 64x96 and the odd 70x90
        out = model.predict(np.transpose(fixture[f"input_{n}"], (0, 2, 3, 1)), verbose=0)
        for key, name in ((f"aux_{n}", "aux_logits"), (f"out_{n}", "logits")):
            assert rel_err(out[name], np.transpose(fixture[key], (0, 2, 3, 1))) < 1e-4, key
