"""Training callbacks: fault-tolerant backup, best checkpoint, NaN stop, TensorBoard extras.

* `StepBackupAndRestore`: Keras `BackupAndRestore` whose files are written atomically (temp
  file + rename: a kill during a save leaves the previous backup intact) and whose metadata
  records the optimizer step, so a killed run resumes at that exact step, mid-epoch included
  (the runner splits `fit` at the resumed step, see `ocr_tf.train.plan_segments`). The
  optimizer's `iterations` counter is saved with the weights, so the LR schedule continues.
* `BestCheckpoint`: the network's weights with the best validation mIoU, plus the latest
  good weights every epoch, both atomically; `best.json` records mIoU, epoch and step.
* `NaNStop`: stops at the first non-finite loss, names the step, and keeps the last good
  backup (no backup or checkpoint is written after the NaN).
* `TensorBoardExtras`: the learning rate per epoch and prediction overlays (image | ground
  truth | prediction) of a few validation images; Keras' `TensorBoard` logs losses and mIoU.
"""

import json
import math
import os

import keras
import numpy as np
import tensorflow as tf

from ocr_tf.preprocessing import IMAGENET_MEAN, IMAGENET_STD
from ocr_tf.files import write_json_atomic


def _atomic_save_weights(model, path):
    """`model.save_weights` to a temp file in the same folder, then rename over `path`."""
    tmp = f"{path[:-len('.weights.h5')]}.tmp-{os.getpid()}.weights.h5"
    model.save_weights(tmp, overwrite=True)
    os.replace(tmp, path)


class StepBackupAndRestore(keras.callbacks.BackupAndRestore):
    """BackupAndRestore with atomic saves, the step in the metadata, and explicit `restore()`.

    `restore()` (call before `fit`, model and optimizer built) loads the backup if there is one
    and returns the step it was taken at (0 without a backup). Saves happen every `save_freq`
    batches and at every epoch end. The backup is kept when `fit` ends (the runner deletes it
    once the whole schedule is done).
    """

    def __init__(self, backup_dir, save_freq=100):
        super().__init__(backup_dir, save_freq=save_freq, delete_checkpoint=False)
        self._epoch = 0

    def restore(self):
        if not os.path.exists(self._weights_path):
            return 0
        optimizer = self.model.optimizer
        if optimizer is not None and not optimizer.built:
            optimizer.build(self.model.trainable_variables)
        self.model.load_weights(self._weights_path)
        step = int(optimizer.iterations.numpy()) if optimizer is not None else 0
        if os.path.exists(self._training_metadata_path):
            with open(self._training_metadata_path) as f:
                meta = json.load(f)
            if meta.get("step", step) != step:
                raise RuntimeError(
                    f"backup in {self.backup_dir} is inconsistent: weights at step {step}, "
                    f"metadata says {meta.get('step')}; delete the folder to start over."
                )
        return step

    def on_train_begin(self, logs=None):
        pass  # the runner restores explicitly before the first `fit` (see `restore`)

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch

    def on_epoch_end(self, epoch, logs=None):
        super().on_epoch_end(epoch, logs)
        self._save_model()

    def _save_model(self):
        if getattr(self.model, "nan_step", None) is not None:
            return  # never overwrite the last good backup with NaN weights
        os.makedirs(self.backup_dir, exist_ok=True)
        _atomic_save_weights(self.model, self._weights_path)
        step = int(self.model.optimizer.iterations.numpy())
        write_json_atomic(self._training_metadata_path, {"step": step, "epoch": self._epoch})

    def on_train_end(self, logs=None):
        pass


class NaNStop(keras.callbacks.Callback):
    """Stop at the first non-finite training loss; `message` says where and what is kept."""

    def __init__(self, keep_hint=""):
        super().__init__()
        self.keep_hint = keep_hint
        self.message = None

    def on_train_batch_end(self, batch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is None:
            return
        loss = float(np.asarray(loss).reshape(-1)[0])
        if not math.isfinite(loss):
            step = int(self.model.optimizer.iterations.numpy())
            self.model.nan_step = step
            self.model.stop_training = True
            self.message = (
                f"training loss became {loss} at step {step}; stopped. Nothing was saved after "
                f"the NaN. {self.keep_hint} Lower train.lr, check the data, or try float32."
            )


class BestCheckpoint(keras.callbacks.Callback):
    """Save `network` weights: `last.weights.h5` every epoch and `best.weights.h5` when the
    monitored validation metric improves (higher is better); `best.json` describes the best.
    `resume=True` continues an interrupted run (its best so far stays the bar to beat); a
    fresh run in the same folder overwrites the old files at its first epoch."""

    def __init__(self, network, directory, monitor="val_miou", resume=False, run_id=None):
        super().__init__()
        self.run_id = run_id  # named in best.json, the manifest of the best set (ocr_tf.runs)
        self.network = network
        self.directory = directory
        self.monitor = monitor
        self.best_path = os.path.join(directory, "best.weights.h5")
        self.last_path = os.path.join(directory, "last.weights.h5")
        self.info_path = os.path.join(directory, "best.json")
        self.best = -math.inf
        if resume and os.path.exists(self.info_path):  # resumed run: keep beating its earlier best
            with open(self.info_path) as f:
                self.best = json.load(f).get(self.monitor, -math.inf)

    def on_epoch_end(self, epoch, logs=None):
        if getattr(self.model, "nan_step", None) is not None:
            return
        os.makedirs(self.directory, exist_ok=True)
        _atomic_save_weights(self.network, self.last_path)
        value = (logs or {}).get(self.monitor)
        if value is None or not math.isfinite(float(value)) or float(value) <= self.best:
            return
        self.best = float(value)
        _atomic_save_weights(self.network, self.best_path)
        from ocr_tf.runs import write_best_manifest  # best.json last: it names the weights by hash

        write_best_manifest(
            self.directory,
            {self.monitor: self.best, "epoch": epoch + 1, "step": int(self.model.optimizer.iterations.numpy())},
            self.run_id,
        )


def overlay(image, label, prediction, palette, ignore_label=255, alpha=0.6):
    """uint8 (H, 3W, 3): the image | ground truth over it | prediction over it.

    `image` is the normalised float input (H, W, 3); labels/predictions are class ids."""
    rgb = np.asarray(image) * np.asarray(IMAGENET_STD) + np.asarray(IMAGENET_MEAN)
    rgb = np.clip(rgb * 255.0, 0, 255)
    colors = np.asarray(palette, np.float32)

    def blend(ids):
        ids = np.asarray(ids)
        valid = ids != ignore_label
        out = rgb.copy()
        out[valid] = (1 - alpha) * rgb[valid] + alpha * colors[np.clip(ids[valid], 0, len(colors) - 1)]
        return out

    return np.concatenate([rgb, blend(label), blend(prediction)], axis=1).astype(np.uint8)


class TensorBoardExtras(keras.callbacks.Callback):
    """Learning rate and prediction overlays in TensorBoard, once per epoch.

    `images`, `labels`: a few validation examples (NumPy, normalised images)."""

    def __init__(self, log_dir, network, images, labels, palette, ignore_label=255, align_corners=True):
        super().__init__()
        self.align_corners = align_corners
        self.network = network
        self.images = images
        self.labels = labels
        self.palette = palette
        self.ignore_label = ignore_label
        self.writer = tf.summary.create_file_writer(os.path.join(log_dir, "extras"))

    def on_epoch_end(self, epoch, logs=None):
        step = int(self.model.optimizer.iterations.numpy())
        lr = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))
        with self.writer.as_default():
            tf.summary.scalar("learning_rate", lr, step=step)
            if self.images is not None and len(self.images):
                from ocr_tf.inference import logits_to_labels

                logits = self.network(self.images, training=False)["logits"]
                pred = logits_to_labels(logits, self.labels.shape[1:3], self.align_corners).numpy()
                pics = np.stack(
                    [overlay(i, t, p, self.palette, self.ignore_label) for i, t, p in zip(self.images, self.labels, pred)]
                )
                tf.summary.image("val image | truth | prediction", pics, step=step, max_outputs=len(pics))
        self.writer.flush()
