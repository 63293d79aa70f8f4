"""Confusion matrix, mIoU and the Keras metric against plain NumPy references."""

import json
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
import tensorflow as tf

from ocr_tf.metrics import (
    ConfusionMatrix,
    SegmentationMeanIoU,
    confusion_matrix_np,
    confusion_matrix,
    miou_from_confusion,
)

K = 6
IGNORE = 255


def reference_scores(labels, preds, k, ignore=IGNORE):
    """Per-class IoU by loops over classes, the textbook definition; NaN for union 0."""
    valid = labels != ignore
    ious = []
    for c in range(k):
        tp = np.sum((labels == c) & (preds == c) & valid)
        fp = np.sum((labels != c) & (preds == c) & valid)
        fn = np.sum((labels == c) & (preds != c) & valid)
        ious.append(tp / (tp + fp + fn) if tp + fp + fn else np.nan)
    acc = np.sum((labels == preds) & valid) / np.sum(valid)
    return np.array(ious), acc


def random_maps(rng, shape=(3, 17, 23)):
    """Labels with ignore pixels; class 4 absent everywhere (-> NaN); class 5 only predicted (-> 0)."""
    labels = rng.choice([0, 1, 2, 3], size=shape)
    labels[rng.random(shape) < 0.2] = IGNORE
    preds = rng.choice([0, 1, 2, 3, 5], size=shape)
    return labels, preds


def test_miou_matches_numpy_reference_with_ignore_and_absent_classes():
    rng = np.random.default_rng(0)
    labels, preds = random_maps(rng)
    ref_iou, ref_acc = reference_scores(labels, preds, K)
    scores = miou_from_confusion(confusion_matrix_np(labels, preds, K))
    iou = np.array(scores["per_class_iou"])
    np.testing.assert_allclose(iou, ref_iou, rtol=1e-12)
    assert np.isnan(iou[4]) and iou[5] == 0.0  # absent -> NaN; predicted only -> 0 and counted
    assert scores["valid_classes"] == 5
    np.testing.assert_allclose(scores["miou"], np.nanmean(ref_iou), rtol=1e-12)
    np.testing.assert_allclose(scores["pixel_accuracy"], ref_acc, rtol=1e-12)
    assert scores["num_pixels"] == int(np.sum(labels != IGNORE))


def test_void_predictions_are_misses_not_false_positives():
    rng = np.random.default_rng(6)
    labels, preds = random_maps(rng)
    preds[rng.random(preds.shape) < 0.15] = IGNORE  # "no class" predictions
    cm = ConfusionMatrix(K, void_predictions=True).update(labels, preds).matrix
    assert cm.shape == (K, K + 1)
    valid = labels != IGNORE
    for c in range(4):
        tp = np.sum((labels == c) & (preds == c))
        fp = np.sum((labels != c) & valid & (preds == c))
        fn = np.sum((labels == c) & (preds != c))  # void predictions included
        np.testing.assert_allclose(miou_from_confusion(cm)["per_class_iou"][c], tp / (tp + fp + fn), rtol=1e-12)
    with pytest.raises(ValueError, match="prediction values"):
        confusion_matrix_np(labels, preds, K)  # without void_predictions, 255 is not a class


def test_streaming_equals_one_shot_and_is_int64():
    rng = np.random.default_rng(1)
    labels, preds = random_maps(rng, (5, 9, 11))
    cm = ConfusionMatrix(K)
    for y, p in zip(labels, preds):
        cm.update(y, p)
    assert cm.matrix.dtype == np.int64
    np.testing.assert_array_equal(cm.matrix, confusion_matrix_np(labels, preds, K))
    # Counts beyond int32 stay exact (Cityscapes val: 500 x 2M pixels = 1.05e9 per pass; a few passes).
    big = ConfusionMatrix(2).merge(np.array([[3_000_000_000, 1], [2, 5_000_000_000]]))
    big.merge(big.matrix)
    assert big.matrix[1, 1] == 10_000_000_000
    np.testing.assert_allclose(big.result()["per_class_iou"], [6e9 / (6e9 + 6), 1e10 / (1e10 + 6)])


def test_bad_labels_are_named():
    with pytest.raises(ValueError, match=r"label values must be in \[0, 6\).*\[7\]"):
        confusion_matrix_np(np.array([[1, 7]]), np.array([[1, 1]]), K)
    with pytest.raises(ValueError, match="same shape"):
        confusion_matrix_np(np.zeros((2, 2)), np.zeros((2, 3)), K)


def test_keras_ops_confusion_matrix_equals_numpy():
    rng = np.random.default_rng(2)
    labels, preds = random_maps(rng)
    cm = confusion_matrix(labels, preds, K)
    assert cm.dtype == tf.int64
    np.testing.assert_array_equal(cm.numpy(), confusion_matrix_np(labels, preds, K))
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"labels must be in \[0, 6\)"):
        confusion_matrix(np.array([[1, 9]]), np.array([[1, 1]]), K)


def resize_align_corners_np(x, size):
    """Bilinear resize with align_corners=True of (B, h, w, C), by the definition."""
    h, w = x.shape[1:3]
    H, W = size
    ys = np.arange(H) * ((h - 1) / (H - 1) if H > 1 else 0)
    xs = np.arange(W) * ((w - 1) / (W - 1) if W > 1 else 0)
    y0 = np.floor(ys).astype(int).clip(0, h - 1)
    x0 = np.floor(xs).astype(int).clip(0, w - 1)
    y1, x1 = np.minimum(y0 + 1, h - 1), np.minimum(x0 + 1, w - 1)
    wy, wx = (ys - y0)[None, :, None, None], (xs - x0)[None, None, :, None]
    top = x[:, y0][:, :, x0] * (1 - wx) + x[:, y0][:, :, x1] * wx
    bottom = x[:, y1][:, :, x0] * (1 - wx) + x[:, y1][:, :, x1] * wx
    return top * (1 - wy) + bottom * wy


def test_keras_metric_resizes_logits_and_matches_numpy():
    rng = np.random.default_rng(3)
    logits = rng.normal(size=(2, 5, 7, K)).astype(np.float32)
    labels = rng.integers(0, 4, size=(2, 19, 25))
    labels[:, :3] = IGNORE
    preds = resize_align_corners_np(logits.astype(np.float64), (19, 25)).argmax(-1)
    metric = SegmentationMeanIoU(K)
    metric.update_state(labels[:1], logits[:1])
    metric.update_state(labels[1:, ..., None], logits[1:])  # (B, H, W, 1) labels are accepted
    ref_iou, _ = reference_scores(labels, preds, K)
    np.testing.assert_array_equal(metric.confusion.numpy(), confusion_matrix_np(labels, preds, K))
    np.testing.assert_allclose(float(metric.result()), np.nanmean(ref_iou), rtol=1e-6)
    metric.reset_state()
    assert np.isnan(float(metric.result())) and metric.confusion.numpy().sum() == 0


def test_keras_metric_counts_past_int32():
    metric = SegmentationMeanIoU(2)
    metric.confusion.assign(np.full((2, 2), 2**31 - 1, np.int64))
    metric.update_state(np.ones((1, 2, 2)), np.tile(np.array([0.0, 1.0], np.float32), (1, 2, 2, 1)))
    cm = metric.confusion.numpy()
    assert cm.dtype == np.int64 and cm[1, 1] == 2**31 + 3 and cm[0, 0] == 2**31 - 1


@pytest.mark.parametrize("jit_compile", [False, True])  # Keras uses XLA by default on GPUs
def test_keras_metric_in_compile_evaluate(jit_compile):
    rng = np.random.default_rng(4)
    x = rng.normal(size=(4, 8, 8, 3)).astype(np.float32)
    y = rng.integers(0, 3, size=(4, 16, 16))
    y[:, 0] = IGNORE
    inp = keras.Input((None, None, 3))
    logits = keras.layers.Conv2D(3, 1, name="logits")(inp)
    model = keras.Model(inp, {"logits": logits})
    # Labels are at twice the logits' size; the metric resizes (the loss is irrelevant here).
    model.compile(loss={"logits": lambda y, p: tf.reduce_mean(p) * 0.0}, metrics={"logits": SegmentationMeanIoU(3, name="miou")},
                  jit_compile=jit_compile)
    result = model.evaluate(x, {"logits": y}, batch_size=2, return_dict=True, verbose=0)
    preds = resize_align_corners_np(model.predict(x, verbose=0)["logits"].astype(np.float64), (16, 16)).argmax(-1)
    expected = np.nanmean(reference_scores(y, preds, 3)[0])
    (value,) = [v for k, v in result.items() if "miou" in k]
    np.testing.assert_allclose(value, expected, rtol=1e-6)
    clone = SegmentationMeanIoU.from_config(SegmentationMeanIoU(3, ignore_label=7, name="m").get_config())
    assert (clone.num_classes, clone.ignore_label, clone.name) == (3, 7, "m")


DISTRIBUTED = textwrap.dedent(
    """
    import json, sys
    import tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    import keras, numpy as np
    from ocr_tf.metrics import SegmentationMeanIoU, confusion_matrix_np

    rng = np.random.default_rng(5)
    x = rng.normal(size=(8, 6, 6, 3)).astype(np.float32)
    y = rng.integers(0, 4, size=(8, 6, 6))
    y[:, :, 0] = 255
    strategy = tf.distribute.MirroredStrategy(
        ["/cpu:0", "/cpu:1"], cross_device_ops=tf.distribute.ReductionToOneDevice())
    with strategy.scope():
        inp = keras.Input((6, 6, 3))
        model = keras.Model(inp, {"logits": keras.layers.Conv2D(4, 1, name="logits")(inp)})
        model.compile(loss={"logits": lambda y, p: tf.reduce_mean(p) * 0.0}, metrics={"logits": SegmentationMeanIoU(4)})
        metric = SegmentationMeanIoU(4, name="loop")
    fit_result = model.evaluate(x, {"logits": y}, batch_size=8, return_dict=True, verbose=0)
    preds = model.predict(x, verbose=0)["logits"].argmax(-1)

    @tf.function
    def step(xb, yb):
        def replica(xb, yb):
            metric.update_state(yb, model(xb)["logits"])
        strategy.run(replica, (xb, yb))

    ds = strategy.experimental_distribute_dataset(tf.data.Dataset.from_tensor_slices((x, y)).batch(8))
    for xb, yb in ds:
        step(xb, yb)
    per_replica = [v.numpy().tolist() for v in metric.confusion.value.values]
    json.dump({
        "replicas": strategy.num_replicas_in_sync,
        "evaluate": [float(v) for k, v in fit_result.items() if "miou" in k],
        "loop_cm": np.asarray(metric.confusion.numpy()).tolist(),
        "loop_miou": float(metric.result()),
        "per_replica": per_replica,
        "ref_cm": confusion_matrix_np(y, preds, 4).tolist(),
    }, sys.stdout)
    """
)


def test_keras_metric_sums_over_replicas():
    out = subprocess.run(
        [sys.executable, "-c", DISTRIBUTED], capture_output=True, text=True, timeout=300,
        env={**__import__("os").environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
    )
    assert out.returncode == 0, out.stderr[-3000:]
    res = json.loads(out.stdout.strip().splitlines()[-1])
    assert res["replicas"] == 2
    ref_cm = np.array(res["ref_cm"])
    expected = miou_from_confusion(ref_cm)["miou"]
    # Each replica saw half the batch; the on-read value is their sum, equal to one device on all.
    per_replica = np.array(res["per_replica"])
    assert per_replica.shape == (2, 4, 4) and (per_replica.sum(axis=(1, 2)) > 0).all()
    np.testing.assert_array_equal(per_replica.sum(0), ref_cm)
    np.testing.assert_array_equal(np.array(res["loop_cm"]), ref_cm)
    np.testing.assert_allclose(res["loop_miou"], expected, rtol=1e-6)
    np.testing.assert_allclose(res["evaluate"], [expected], rtol=1e-6)
