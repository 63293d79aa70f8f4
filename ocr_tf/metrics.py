"""Segmentation scores the way the benchmarks compute them.

Everything derives from one confusion matrix `cm[true, predicted]` of pixel counts (int64: 500
Cityscapes images of 2M pixels, or ADE20K's 2000, would overflow int32). Pixels whose label is
`ignore_label` are not counted.

Absent classes: a class with no ground-truth pixel *and* no predicted pixel (union 0) has IoU
NaN and is left out of the mean, as cityscapesscripts' evalPixelLevelSemanticLabeling and
mmsegmentation do. A class that is predicted but absent from the ground truth has IoU 0 and
counts.

* `confusion_matrix_np` / `ConfusionMatrix`: NumPy, streaming, int64 (evaluation CLIs).
* `confusion_matrix`: the same in `keras.ops` (TensorFlow, JAX, PyTorch).
* `SegmentationMeanIoU`: a `keras.metrics.Metric` for `compile(metrics=...)`; its int64 matrix is
  an on-read variable summed over replicas under tf.distribute (Keras creates metric variables
  with `synchronization="on_read", aggregation="sum"`). Runs on every Keras backend; JAX keeps
  it int32 unless `jax_enable_x64` is set (enough for 2**31 pixels per cell).
* `miou_from_confusion`: mIoU, per-class IoU, pixel accuracy, mean accuracy, frequency-weighted
  IoU from a matrix.
"""

import keras
import numpy as np
from keras import ops

from ocr_tf.layers.common import check_label_range, resize_bilinear
from ocr_tf.preprocessing import IGNORE_LABEL


def _check_num_classes(num_classes):
    if int(num_classes) < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}.")
    return int(num_classes)


def confusion_matrix_np(labels, predictions, num_classes, ignore_label=IGNORE_LABEL, void_predictions=False):
    """int64 (K, K) matrix, rows = ground truth, columns = prediction, of one or more label maps.

    `labels` and `predictions` are integer arrays of the same shape. A label that is neither
    `ignore_label` nor in [0, K) is an error (it would silently corrupt the counts), and so is a
    prediction outside [0, K) unless `void_predictions`: then predictions equal to
    `ignore_label` ("no class", e.g. a Cityscapes labelId that is not evaluated) are counted in
    an extra last column, giving a (K, K + 1) matrix: misses of the true class, nobody's false
    positive, exactly as cityscapesscripts counts them.
    """
    k = _check_num_classes(num_classes)
    labels = np.asarray(labels)
    predictions = np.asarray(predictions)
    if labels.shape != predictions.shape:
        raise ValueError(f"labels {labels.shape} and predictions {predictions.shape} must have the same shape.")
    keep = labels != ignore_label
    y = labels[keep].astype(np.int64)
    p = predictions[keep].astype(np.int64)
    columns = k + 1 if void_predictions else k
    if void_predictions:
        p[p == ignore_label] = k
    for name, values, limit in (("label", y, k), ("prediction", p, columns)):
        bad = (values < 0) | (values >= limit)
        if bad.any():
            raise ValueError(
                f"{name} values must be in [0, {k}) or the ignore label {ignore_label}; "
                f"found {sorted(set(values[bad].tolist()))[:10]}."
            )
    return np.bincount(y * columns + p, minlength=k * columns).reshape(k, columns).astype(np.int64)


class ConfusionMatrix:
    """Streaming int64 confusion matrix in NumPy: `update(labels, predictions)` per image/batch,
    `result()` for the scores, `matrix` for the counts ((K, K + 1) with `void_predictions`, see
    `confusion_matrix_np`)."""

    def __init__(self, num_classes, ignore_label=IGNORE_LABEL, void_predictions=False):
        self.num_classes = _check_num_classes(num_classes)
        self.ignore_label = ignore_label
        self.void_predictions = bool(void_predictions)
        columns = self.num_classes + 1 if self.void_predictions else self.num_classes
        self.matrix = np.zeros((self.num_classes, columns), np.int64)

    def update(self, labels, predictions):
        self.matrix += confusion_matrix_np(
            labels, predictions, self.num_classes, self.ignore_label, self.void_predictions
        )
        return self

    def merge(self, other):
        """Add another matrix (a `ConfusionMatrix` or an array), e.g. from another worker."""
        other = np.asarray(getattr(other, "matrix", other), np.int64)
        if other.shape != self.matrix.shape:
            raise ValueError(f"cannot merge a {other.shape} matrix into {self.matrix.shape}.")
        self.matrix += other
        return self

    def reset(self):
        self.matrix[...] = 0

    def result(self, class_names=None):
        return miou_from_confusion(self.matrix, class_names)


def miou_from_confusion(cm, class_names=None):
    """Scores of an int (K, K) confusion matrix (rows = ground truth, columns = prediction), or
    (K, K + 1) whose last column counts void predictions (misses, no class's false positive).

    Returns a dict of plain Python values (fractions in [0, 1], not percent):
    miou (NaN-excluding mean of per_class_iou), per_class_iou (list; NaN where the class has
    neither ground truth nor prediction), pixel_accuracy, mean_accuracy (over classes present
    in the ground truth), per_class_accuracy (NaN where absent from the ground truth), fwiou
    (frequency-weighted IoU), num_pixels, valid_classes (how many IoUs entered the mean),
    class_names (when given).
    """
    cm = np.asarray(cm, np.int64)
    if cm.ndim != 2 or cm.shape[1] not in (cm.shape[0], cm.shape[0] + 1):
        raise ValueError(f"confusion matrix must be (K, K) or (K, K + 1), got shape {cm.shape}.")
    k = cm.shape[0]
    if class_names is not None and len(class_names) != k:
        raise ValueError(f"{len(class_names)} class names for a {k}-class confusion matrix.")
    tp = np.diag(cm[:, :k]).astype(np.float64)
    gt = cm.sum(axis=1).astype(np.float64)  # void predictions included: they are misses
    pred = cm[:, :k].sum(axis=0).astype(np.float64)
    union = gt + pred - tp
    total = float(cm.sum())
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = np.where(union > 0, tp / union, np.nan)
        acc = np.where(gt > 0, tp / gt, np.nan)
    valid = ~np.isnan(iou)
    result = {
        "miou": float(iou[valid].mean()) if valid.any() else float("nan"),
        "per_class_iou": [float(v) for v in iou],
        "pixel_accuracy": float(tp.sum() / total) if total > 0 else float("nan"),
        "mean_accuracy": float(np.nanmean(acc)) if (gt > 0).any() else float("nan"),
        "per_class_accuracy": [float(v) for v in acc],
        "fwiou": float((gt[valid] * iou[valid]).sum() / total) if total > 0 else float("nan"),
        "num_pixels": int(total),
        "valid_classes": int(valid.sum()),
    }
    if class_names is not None:
        result["class_names"] = list(class_names)
    return result


def confusion_matrix(labels, predictions, num_classes, ignore_label=IGNORE_LABEL):
    """`keras.ops` twin of `confusion_matrix_np` (every backend): int64 (K, K) (int32 on JAX
    unless `jax_enable_x64`).

    XLA-compatible (Keras compiles train/test steps with XLA on GPUs, and always on JAX): no
    boolean masks and static output sizes. Ignored pixels go to an extra bin that is dropped.
    Labels outside [0, K) are refused by `check_label_range` where it can run (see there); either
    way they are not counted.
    """
    k = _check_num_classes(num_classes)
    y = ops.reshape(ops.cast(labels, "int32"), (-1,))
    p = ops.reshape(ops.cast(predictions, "int32"), (-1,))
    check_label_range(y, k, ignore_label)
    counted = ops.logical_and(ops.not_equal(y, ignore_label), ops.logical_and(y >= 0, y < k))
    index = ops.where(counted, y * k + p, k * k)
    # Counts of one batch fit int32 (< 2**31 pixels); the running sum is int64.
    counts = ops.segment_sum(ops.ones_like(index), index, num_segments=k * k + 1)[: k * k]
    return ops.cast(ops.reshape(counts, (k, k)), "int64")


@keras.saving.register_keras_serializable(package="ocr_tf")
class SegmentationMeanIoU(keras.metrics.Metric):
    """Mean IoU from logits, for `model.compile(metrics={"logits": SegmentationMeanIoU(K)})`.

    `update_state(y_true, y_pred)`: y_true int labels (B, H, W) (a trailing 1 channel is
    accepted), y_pred logits (B, h, w, K) at any resolution: they are resized bilinearly to the
    label size (align_corners as the references) before the argmax, as evaluation does.
    `result()`: mIoU in [0, 1], absent classes (union 0) excluded. The int64 confusion matrix
    variable `confusion` sums over replicas under tf.distribute.
    """

    def __init__(self, num_classes, ignore_label=IGNORE_LABEL, align_corners=True, name="miou", dtype=None):
        super().__init__(name=name, dtype=dtype)
        self.num_classes = _check_num_classes(num_classes)
        self.ignore_label = int(ignore_label)
        self.align_corners = bool(align_corners)
        self.confusion = self.add_variable(
            shape=(self.num_classes, self.num_classes),
            initializer="zeros",
            dtype="int64",
            aggregation="sum",
            name="confusion",
        )

    def update_state(self, y_true, y_pred, sample_weight=None):
        if sample_weight is not None:
            raise ValueError("SegmentationMeanIoU does not take sample weights; mark pixels with the ignore label.")
        y_true = ops.convert_to_tensor(y_true)
        if len(y_true.shape) == 4:
            y_true = ops.squeeze(y_true, axis=-1)
        y_pred = ops.convert_to_tensor(y_pred)
        if len(y_pred.shape) != 4 or len(y_true.shape) != 3:
            raise ValueError(
                f"{self.name}: expects labels (B, H, W) and logits (B, h, w, K); "
                f"got labels {y_true.shape} and logits {y_pred.shape}."
            )
        if y_pred.shape[-1] is not None and y_pred.shape[-1] != self.num_classes:
            raise ValueError(f"{self.name}: logits have {y_pred.shape[-1]} channels, expected {self.num_classes}.")
        logits = resize_bilinear(ops.cast(y_pred, "float32"), ops.shape(y_true)[1:3], self.align_corners)
        predictions = ops.cast(ops.argmax(logits, axis=-1), "int32")
        counts = confusion_matrix(y_true, predictions, self.num_classes, self.ignore_label)
        self.confusion.assign_add(ops.cast(counts, self.confusion.dtype))

    def result(self):
        # float64 where the backend has it (TF, PyTorch); JAX without x64 computes in float32.
        cm = ops.cast(self.confusion, "float64")
        tp = ops.diagonal(cm)
        union = ops.sum(cm, axis=0) + ops.sum(cm, axis=1) - tp
        valid = union > 0
        iou = ops.where(valid, tp / ops.where(valid, union, 1.0), 0.0)  # static shapes (XLA)
        # 0 / 0 = NaN when nothing was counted yet, as in miou_from_confusion.
        miou = ops.sum(iou) / ops.sum(ops.cast(valid, cm.dtype))
        return ops.cast(miou, "float32")

    def get_config(self):
        return {
            "num_classes": self.num_classes,
            "ignore_label": self.ignore_label,
            "align_corners": self.align_corners,
            "name": self.name,
            "dtype": self.dtype,
        }
