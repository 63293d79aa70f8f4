"""The `keras.Model` that `fit` trains: a segmentation network plus the OCR loss and mIoU.

`SegmentationTrainer(network, loss)` wraps a network returning {"logits", "aux_logits"} and
trains it with `fit` on (image, label) batches:

* `compute_loss`: `ocr_tf.losses.SegmentationLoss` on the local batch, scaled by
  1 / replicas (Keras sums the replicas' gradients), tracked as loss / main_loss / aux_loss;
* `compute_metrics`: mIoU of the final logits (`SegmentationMeanIoU`);
* the fix that makes Keras 3 `fit` / `evaluate` work under `MultiWorkerMirroredStrategy`.

Keras 3.15 under MultiWorkerMirroredStrategy fails twice (keras-team/keras#20585,
tensorflow/tensorflow#72388; ../shared/ANCHORS.md):
1. `_maybe_symbolic_build` averages the first distributed *input batch* across workers with
   `strategy.reduce("MEAN", batch, axis=None)`, which cannot convert the PerReplica value.
   Only shapes and dtypes are needed to build, so we build from this worker's first local
   replica batch instead.
2. `reduce_per_replica` reduces the step's logs with `strategy.reduce("MEAN", v, axis=0)`,
   which rejects scalars. Under multi-worker only, `train_step` / `test_step` return each log
   with a leading axis of length 1, so that reduction is the mean over all replicas of all
   workers and yields the scalar Keras expects.
Both are contained here; the two-process test in tests/test_distribute.py proves them.
"""

import keras
import tensorflow as tf
from keras.src.losses.loss import scale_loss_for_distribution

from ocr_tf.distribute import is_multi_worker
from ocr_tf.metrics import SegmentationMeanIoU


class SegmentationTrainer(keras.Model):
    """Train `network` (outputs {"logits", "aux_logits"}) with `loss` (a `SegmentationLoss`).

    Compile with an optimizer only (`trainer.compile(optimizer=...)`); `fit` takes batches of
    (image (B, H, W, 3), label (B, H, W)). The network itself is what gets saved and exported.
    """

    def __init__(self, network, loss, num_classes, ignore_label=255, align_corners=True, **kwargs):
        super().__init__(**kwargs)
        self.network = network
        self.seg_loss = loss
        self.main_loss_tracker = keras.metrics.Mean(name="main_loss")
        self.aux_loss_tracker = keras.metrics.Mean(name="aux_loss")
        self.miou = SegmentationMeanIoU(num_classes, ignore_label, align_corners=align_corners, name="miou")

    def call(self, inputs, training=None):
        return self.network(inputs, training=training)

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        if sample_weight is not None:
            raise ValueError("SegmentationTrainer takes no sample weights: label pixels 255 to ignore them.")
        parts = self.seg_loss(y, y_pred)
        self.main_loss_tracker.update_state(parts["main_loss"])
        self.aux_loss_tracker.update_state(parts["aux_loss"])
        # Per-replica mean -> its share of the global objective: Keras sums the replicas'
        # gradients (and multiplies back for the logged loss).
        total = scale_loss_for_distribution(parts["loss"])
        for extra in self.losses:  # regularizers, if a network defines any (Keras scales them)
            total = total + keras.ops.cast(self._aggregate_additional_loss(extra), total.dtype)
        return total

    def compute_metrics(self, x, y, y_pred, sample_weight=None):
        self.miou.update_state(y, y_pred["logits"])
        return self.get_metrics_result()

    # --- MultiWorkerMirroredStrategy fixes (see the module docstring) -------------------------

    def _logs_for_reduction(self, logs):
        # tf.distribute only (TensorFlow by nature); JAX / PyTorch trainers have no strategy.
        if keras.backend.backend() != "tensorflow" or not is_multi_worker(self.distribute_strategy):
            return logs
        return {k: tf.reshape(v, [1]) if v.shape.rank == 0 else v for k, v in logs.items()}

    # *args: JAX's steps are (state, data) -> (logs, state); the fix concerns TF's logs only.
    def train_step(self, *args):
        out = super().train_step(*args)
        return self._logs_for_reduction(out) if keras.backend.backend() == "tensorflow" else out

    def test_step(self, *args):
        out = super().test_step(*args)
        return self._logs_for_reduction(out) if keras.backend.backend() == "tensorflow" else out

    def _maybe_symbolic_build(self, iterator=None, data_batch=None):
        if keras.backend.backend() == "tensorflow" and iterator is not None and data_batch is None:
            for _, _, it in iterator:
                data_batch = next(it)
                break
            strategy = self.distribute_strategy

            def local(value):
                if isinstance(value, tf.distribute.DistributedValues):
                    return strategy.experimental_local_results(value)[0]
                return value

            data_batch = tf.nest.map_structure(local, data_batch)
        return super()._maybe_symbolic_build(data_batch=data_batch)
