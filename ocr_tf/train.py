"""Train an OCR segmenter with `model.fit`: `python -m ocr_tf.train [--config X.yaml] [--set k=v ...]`
(the command: `ocr_tf.cli.train`).

With no arguments it runs the demo (configs/demo/default.yaml): a small HRNet + OCR on the
built-in procedural dataset, a few minutes on 2 CPU cores, then evaluation and export into
saved_models/demo/. The same command trains the paper's recipes (configs/<dataset>/<model>.yaml)
from one CPU to many GPUs (`--strategy mirrored`) and machines (`--strategy multi_worker` with
TF_CONFIG on every machine), resuming automatically after a crash or kill (run it again).

What happens, in order: the config is validated; the dataset files and class count are
checked (before anything is built); the strategy is chosen; the network is built under it
(BatchNorm synchronized when there are several replicas); the backup, if any, is restored
(weights, optimizer, step); `fit` runs to `train.iterations` steps with validation every
`train.steps_per_epoch` steps; the best weights by validation mIoU are evaluated on the
validation set, saved as a Segmenter (`checkpoints/best.keras`: the network with its classes,
palette, normalisation and build arguments) and exported.
"""

if __name__ == "__main__":  # `python -m ocr_tf.train`: parse arguments before TensorFlow loads
    from ocr_tf.cli.train import main

    raise SystemExit(main())

import json
import math
import os
import shutil
import time

from ocr_tf.errors import UserError

DEFAULT_CONFIG = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs", "demo", "default.yaml")


class DataError(UserError):
    """Dataset files or classes that do not fit the config (found before training)."""


# ------------------------------------------------------------------------------------- planning


def plan_segments(step, iterations, steps_per_epoch):
    """The `fit` calls that take training from optimizer step `step` to `iterations`.

    Epoch e covers steps [e * spe, (e + 1) * spe) (the last one may be shorter). A run resumed
    mid-epoch first finishes that epoch, then runs whole epochs, then a final short epoch.
    Returns [(initial_epoch, epochs, steps_per_epoch), ...] for `fit`.
    """
    segments = []
    spe = steps_per_epoch
    while step < iterations:
        epoch = step // spe
        epoch_end = min((epoch + 1) * spe, iterations)
        if step % spe or epoch_end - step < spe:
            segments.append((epoch, epoch + 1, epoch_end - step))
            step = epoch_end
            continue
        full = (iterations - step) // spe
        segments.append((epoch, epoch + full, spe))
        step += full * spe
    return segments


# ------------------------------------------------------------------------------------- data


def resolve_data(cfg):
    """Fill in the demo paths, then refuse missing files or a class count that disagrees,
    before any model is built. Returns the DatasetInfo."""
    from ocr_tf.data.datasets import get_dataset_info
    from ocr_tf.data.pipeline import list_files

    d = cfg.data
    if d.dataset == "demo" and d.train is None:
        from ocr_tf.data.datasets.demo import prepare_demo

        demo = prepare_demo()
        d.train, d.val = demo["train"], demo["val"]
    try:
        info = get_dataset_info(d.dataset)
    except ValueError as e:
        raise DataError(f"data.dataset: {e}") from None
    if info.num_classes != d.num_classes:
        raise DataError(
            f"data.num_classes is {d.num_classes} but dataset '{d.dataset}' has {info.num_classes} classes."
        )
    for key in ("train", "val"):
        pattern = getattr(d, key)
        if pattern is None:
            if key == "train":
                raise DataError("data.train is not set: give a TFRecord glob (see python -m ocr_tf.data.convert).")
            continue
        try:
            files = list_files(pattern)
        except FileNotFoundError as e:
            raise DataError(f"data.{key}: {e}") from None
        _check_record_classes(key, files, d.num_classes)
    return info


def _check_record_classes(key, files, num_classes):
    """The writer's `<split>-info.json` knows the classes the records were made with."""
    seen = set()
    for path in files:
        info_path = os.path.join(os.path.dirname(path), os.path.basename(path).split("-")[0] + "-info.json")
        if info_path in seen or not os.path.exists(info_path):
            continue
        seen.add(info_path)
        with open(info_path) as f:
            recorded = json.load(f).get("num_classes")
        if recorded is not None and recorded != num_classes:
            raise DataError(
                f"data.{key}: {info_path} says the records have {recorded} classes, "
                f"the config says data.num_classes = {num_classes}."
            )


def count_records(pattern):
    from ocr_tf.data.pipeline import list_files

    total = 0
    for path in list_files(pattern):
        info_path = os.path.join(os.path.dirname(path), os.path.basename(path).split("-")[0] + "-info.json")
        shard = None
        if os.path.exists(info_path):
            with open(info_path) as f:
                shard = {s["file"]: s["num_records"] for s in json.load(f).get("shards", [])}.get(os.path.basename(path))
        if shard is None:
            import tensorflow as tf

            shard = sum(1 for _ in tf.data.TFRecordDataset(path))
        total += shard
    return total


def make_datasets(cfg, info, strategy):
    """(train, val, validation_steps): distributed per replica when there are several."""
    from ocr_tf.data.pipeline import make_dataset

    d, t = cfg.data, cfg.train
    replicas = strategy.num_replicas_in_sync
    for name, batch in (("train.batch_size", t.batch_size), ("data.val_batch_size", d.val_batch_size)):
        if batch % replicas:
            raise DataError(f"{name} = {batch} (global) does not split over {replicas} replicas.")

    def train_fn(ctx=None):
        batch = ctx.get_per_replica_batch_size(t.batch_size) if ctx else t.batch_size
        return make_dataset(
            d.train, num_classes=d.num_classes, training=True, batch_size=batch, crop_size=d.crop_size,
            scale_range=tuple(d.scale_range), flip=d.flip, brightness=d.brightness, flip_pairs=info.flip_pairs,
            ignore_label=d.ignore_label, shuffle_buffer=d.shuffle_buffer, seed=t.seed, input_context=ctx,
            skip_bad=d.skip_bad,
        )

    def val_fn(ctx=None):
        batch = ctx.get_per_replica_batch_size(d.val_batch_size) if ctx else d.val_batch_size
        ds = make_dataset(
            d.val, num_classes=d.num_classes, training=False, batch_size=batch, ignore_label=d.ignore_label,
            input_context=ctx, skip_bad=d.skip_bad, pad_to=tuple(d.val_pad_to) if d.val_pad_to else None,
        )
        return ds.repeat()  # a fixed number of steps per validation (equal on every worker)

    val, val_steps = None, None
    if d.val:
        val_steps = d.val_steps or math.ceil(count_records(d.val) / d.val_batch_size)
    if replicas > 1:
        train = strategy.distribute_datasets_from_function(train_fn)
        if d.val:
            val = strategy.distribute_datasets_from_function(val_fn)
    else:
        train = train_fn()
        val = val_fn() if d.val else None
    return train, val, val_steps


# ------------------------------------------------------------------------------------- model


# XLA policy: Keras' own "auto" -- XLA on GPUs/TPUs (one replica), not on CPU-only machines, where
# XLA measured 1.4-1.7x slower than TF's kernels on the AVX2 box (BENCHMARKS.md, issue 13). The loss
# (OHEM by masked sums) and the mIoU metric (unsorted_segment_sum) compile under XLA
# (tests/test_train_xla.py: the XLA step equals the eager one).
JIT_COMPILE = "auto"


def build_trainer(cfg, strategy, jit_compile=JIT_COMPILE):
    """(network, compiled SegmentationTrainer) under `strategy`; `jit_compile` as Keras' compile."""
    import keras

    from ocr_tf.distribute import sync_batch_norm
    from ocr_tf.layers.mscale import is_mscale
    from ocr_tf.losses import SegmentationLoss
    from ocr_tf.models import build_model
    from ocr_tf.optim import build_optimizer
    from ocr_tf.training_model import SegmentationTrainer

    overrides = dict(cfg.model.overrides)
    overrides.setdefault("synchronized", sync_batch_norm(strategy))
    lo = cfg.loss
    with strategy.scope():
        network = build_model(cfg.model.name, cfg.data.num_classes, **overrides)
        loss = SegmentationLoss(
            cfg.data.num_classes, cfg.data.ignore_label, lo.aux_weight, lo.class_weights, lo.ohem,
            lo.ohem_threshold, lo.ohem_min_kept, overrides.get("align_corners", True),
        )
        trained = network
        if is_mscale(network):  # NVIDIA's two-scale training (issue 15)
            from ocr_tf.training_mscale import mscale_training_parts

            trained, loss = mscale_training_parts(network, cfg.data.num_classes, lo, cfg.data.ignore_label)
        trainer = SegmentationTrainer(
            trained, loss, cfg.data.num_classes, cfg.data.ignore_label, align_corners=align_corners(cfg), name="trainer"
        )
        trainer.compile(
            optimizer=build_optimizer(cfg.train), steps_per_execution=cfg.train.steps_per_execution,
            jit_compile=jit_compile,
        )
        h, w = cfg.data.crop_size
        trainer(keras.ops.zeros((1, h, w, 3)))  # create the variables (needed to restore a backup)
        trainer.optimizer.build(trainer.trainable_variables)
    return network, trainer


def sample_images(val_pattern, num_classes, count, ignore_label):
    """A few validation (image, label) pairs as NumPy, for TensorBoard overlays."""
    from ocr_tf.data.pipeline import make_dataset

    if not val_pattern or count < 1:
        return None, None
    ds = make_dataset(val_pattern, num_classes=num_classes, training=False, batch_size=1, ignore_label=ignore_label)
    images, labels = [], []
    for x, y in ds.take(count):
        images.append(x[0].numpy())
        labels.append(y[0].numpy())
    shapes = {i.shape for i in images}
    if len(shapes) > 1:  # keep those of the first size (overlays are written as one batch)
        images, labels = zip(*[(i, label) for i, label in zip(images, labels) if i.shape == images[0].shape])
    import numpy as np

    return np.stack(images), np.stack(labels)


# ------------------------------------------------------------------------------------- evaluation


def evaluate(network, cfg, info):
    """Whole-image evaluation of `network` on the validation set -> miou_from_confusion dict."""
    import keras
    import numpy as np
    import tensorflow as tf
    from tqdm import tqdm

    from ocr_tf.data.pipeline import make_dataset
    from ocr_tf.inference import logits_to_labels
    from ocr_tf.metrics import ConfusionMatrix

    d = cfg.data
    ds = make_dataset(d.val, num_classes=d.num_classes, training=False, batch_size=1, ignore_label=d.ignore_label)
    cm = ConfusionMatrix(d.num_classes, d.ignore_label)

    from ocr_tf.layers.mscale import is_mscale, mscale_predict

    if keras.backend.backend() == "tensorflow":

        @tf.function(reduce_retracing=True)
        def predict(x):
            if is_mscale(network):  # the scale list NVIDIA's training validates with
                return tf.argmax(mscale_predict(network, x, (0.5, 1.0)), axis=-1, output_type=tf.int32)
            return logits_to_labels(network(x, training=False)["logits"], tf.shape(x)[1:3], align_corners(cfg))

    else:  # JAX / PyTorch: the same, eagerly in keras.ops (a tf.function traces TensorFlow only)
        from keras import ops

        from ocr_tf.layers import resize_bilinear

        def predict(x):
            x = ops.convert_to_tensor(x.numpy())
            if is_mscale(network):
                logits = mscale_predict(network, x, (0.5, 1.0))
            else:
                logits = resize_bilinear(network(x, training=False)["logits"], tuple(x.shape[1:3]), align_corners(cfg))
            return ops.convert_to_numpy(ops.argmax(logits, axis=-1))

    for x, y in tqdm(ds, total=count_records(d.val), desc="evaluate", unit="img", leave=False):
        cm.update(y.numpy(), np.asarray(predict(x)))
    return cm.result(list(info.class_names))


# ------------------------------------------------------------------------------------- run


def run(cfg, log=print, new_run=False):
    """Train, evaluate, export as the config says. Returns a summary dict.

    Args:
      cfg: a validated Config.
      log: where progress lines go.
      new_run: start over even if output.dir holds a run (moved aside first, see ocr_tf.runs).
    A finished run in output.dir is not trained again: the summary is then
    {"already_finished": the lines to print, "run_dir": ...}.
    """
    from ocr_tf import runs

    plan = runs.prepare(cfg.output.dir, new_run)
    if plan.action == runs.FINISHED:
        return {"already_finished": runs.describe_finished(cfg.output.dir, plan.state), "run_dir": cfg.output.dir}

    import keras

    from ocr_tf.callbacks import BestCheckpoint, NaNStop, StepBackupAndRestore, TensorBoardExtras
    from ocr_tf.data.pipeline import list_files
    from ocr_tf.data.records import naming_damaged_shards
    from ocr_tf.distribute import get_strategy, is_chief, task_info
    from ocr_tf.temporaries import remove_stale

    t, out = cfg.train, cfg.output
    start = time.time()
    info = resolve_data(cfg)
    data_files = list_files(cfg.data.train) + (list_files(cfg.data.val) if cfg.data.val else [])
    if t.mixed_precision:
        keras.mixed_precision.set_global_policy(f"mixed_{t.mixed_precision}")
    strategy = get_strategy(t.strategy, t.tpu)
    chief = is_chief(strategy)
    keras.utils.set_random_seed(t.seed)
    train_ds, val_ds, val_steps = make_datasets(cfg, info, strategy)
    network, trainer = build_trainer(cfg, strategy)

    run_dir = out.dir
    task_type, task_id = task_info(strategy)
    # Every worker backs up (the save reads replica-synchronised state); only the chief keeps the rest.
    backup_dir = os.path.join(run_dir, "backup" if chief else f"backup-{task_type}-{task_id}")
    ckpt_dir = os.path.join(run_dir, "checkpoints")
    log_dir = os.path.join(run_dir, "logs")
    if chief:
        runs.start(run_dir, plan)  # --new-run: the old run is moved aside only now, all checks passed
        if plan.moved_to:
            log(f"--new-run: moved the previous run to {plan.moved_to}")
        for path in remove_stale(run_dir, recursive=True):
            log(f"Removed a temporary left by a killed process: {path}")
        from ocr_tf.config import dump_config

        dump_config(cfg, os.path.join(run_dir, "config.yaml"))

    backup = StepBackupAndRestore(backup_dir, save_freq=t.backup_every_steps)
    backup.set_model(trainer)
    step = backup.restore()
    if step:
        lr = float(keras.ops.convert_to_numpy(trainer.optimizer.learning_rate))
        log(f"Resumed from {backup_dir} at step {step} of {t.iterations} (learning rate {lr:.6g}).")
    replicas = strategy.num_replicas_in_sync
    log(
        f"Training {cfg.model.name} on {cfg.data.dataset} ({cfg.data.num_classes} classes): "
        f"{replicas} replica(s) with {strategy.__class__.__name__}, global batch {t.batch_size}, "
        f"{t.iterations} steps, sync BN {'on' if replicas > 1 else 'off (1 replica)'}, "
        f"precision {t.mixed_precision or 'float32'}."
    )

    nan_stop = NaNStop(keep_hint=f"The last good backup is in {backup_dir}.")
    callbacks = [nan_stop, backup]
    if chief:
        csv_path = os.path.join(run_dir, "training_log.csv")
        if not step and os.path.exists(csv_path):
            os.remove(csv_path)  # a fresh run in an old folder; a resumed one appends
        with naming_damaged_shards(data_files):
            images, labels = sample_images(cfg.data.val, cfg.data.num_classes, t.tensorboard_images,
                                           cfg.data.ignore_label)
        callbacks += [
            BestCheckpoint(network, ckpt_dir, resume=step > 0, run_id=plan.run_id),
            keras.callbacks.CSVLogger(csv_path, append=True),
            keras.callbacks.TensorBoard(log_dir, update_freq="epoch", write_graph=False),
            TensorBoardExtras(log_dir, network if keras.backend.backend() == "tensorflow" else _numpy_logits(network),
                              images, labels, info.palette, cfg.data.ignore_label, align_corners(cfg)),
        ]
    verbose = t.verbose if chief else 0
    with naming_damaged_shards(data_files):  # "corrupted record at 0" -> which shard
        for initial_epoch, epochs, steps in plan_segments(step, t.iterations, t.steps_per_epoch):
            trainer.fit(
                train_ds, epochs=epochs, initial_epoch=initial_epoch, steps_per_epoch=steps,
                validation_data=val_ds, validation_steps=val_steps, callbacks=callbacks, verbose=verbose,
                shuffle=False,  # the tf.data pipeline shuffles
            )
            if nan_stop.message:
                raise FloatingPointError(nan_stop.message)
    train_seconds = time.time() - start
    summary = {"run_dir": run_dir, "steps": int(trainer.optimizer.iterations.numpy()), "train_seconds": train_seconds}
    if not chief:
        return summary
    if os.path.isdir(backup_dir):  # the schedule is complete: a rerun starts afresh
        shutil.rmtree(backup_dir, ignore_errors=True)

    best = os.path.join(ckpt_dir, "best.weights.h5")
    if os.path.exists(best):
        for problem in runs.verify_best_set(ckpt_dir):
            log(f"warning: {problem}; using the weights file as it is")
        network.load_weights(best)
        with open(os.path.join(ckpt_dir, "best.json")) as f:
            summary["best"] = {k: v for k, v in json.load(f).items() if k not in ("files", "run_id")}
    summary["checkpoint"] = best if os.path.exists(best) else os.path.join(ckpt_dir, "last.weights.h5")
    # The whole Segmenter as one file, so predict / export / evaluate need no model flags.
    final = make_segmenter(float32_network(network, cfg), cfg, info, summary)
    summary["keras_model"] = save_keras_model(final, os.path.join(ckpt_dir, "best.keras"))
    # best.json last: the manifest naming best.weights.h5 and best.keras of this run, one set.
    runs.write_best_manifest(
        ckpt_dir, summary.get("best", {"val_miou": None, "step": summary["steps"], "source": "last weights "
                                       "(no validation data)"}), plan.run_id, ("best.weights.h5", "best.keras"))
    if cfg.data.val:
        with naming_damaged_shards(list_files(cfg.data.val)):
            summary["eval"] = evaluate(network, cfg, info)
        summary["miou"] = summary["eval"]["miou"]
    summary["exports"] = export(final, cfg, info, log)
    if cfg.data.dataset == "demo":
        from ocr_tf.data.datasets.demo import prepare_demo

        summary["demo_images"] = prepare_demo()["images"]  # a few validation PNGs to try predict on
    summary["logs"] = {"tensorboard": log_dir, "csv": os.path.join(run_dir, "training_log.csv")}
    summary["total_seconds"] = time.time() - start
    runs.finish(run_dir, {k: summary[k] for k in ("best", "miou", "checkpoint", "keras_model", "exports", "steps")
                          if k in summary})
    return summary


def _numpy_logits(network):
    """`network` as TensorBoardExtras calls it, returning NumPy logits (JAX / PyTorch): its overlays
    are drawn with TensorFlow ops, which refuse a PyTorch tensor that tracks gradients."""

    def call(images, training=False):
        import keras

        return {"logits": keras.ops.convert_to_numpy(network(images, training=training)["logits"])}

    return call


def align_corners(cfg):
    return bool(cfg.model.overrides.get("align_corners", True))


def make_segmenter(network, cfg, info, summary):
    """The trained network as a Segmenter: classes and palette of the dataset, build arguments
    and where it came from."""
    from ocr_tf.segmenter import Segmenter

    provenance = {"trained_by": "python -m ocr_tf.train", "run_dir": os.path.abspath(summary["run_dir"]),
                  "steps": summary["steps"]}
    if "best" in summary:
        provenance["val_miou"] = summary["best"].get("val_miou")
    return Segmenter(
        network, info.class_names, palette=info.palette, align_corners=align_corners(cfg),
        ignore_label=cfg.data.ignore_label, dataset=info.name, model_name=cfg.model.name,
        model_overrides={k: v for k, v in cfg.model.overrides.items() if k not in ("weights", "synchronized")},
        flip_pairs=info.flip_pairs, provenance=provenance,
    )


def float32_network(network, cfg):
    """`network` itself, or under mixed precision a float32 copy: serving, TFLite and CPU
    inference want float32 graphs."""
    if not cfg.train.mixed_precision:
        return network
    import keras

    from ocr_tf.models import build_model

    keras.mixed_precision.set_global_policy("float32")
    overrides = {k: v for k, v in cfg.model.overrides.items() if k != "weights"}
    f32 = build_model(cfg.model.name, cfg.data.num_classes, **overrides)
    f32.set_weights(network.get_weights())
    return f32


def save_keras_model(network, path):
    """`network.save(path)` through a temporary file in the same folder, renamed when complete."""
    tmp = f"{path[:-len('.keras')]}.tmp-{os.getpid()}.keras"
    network.save(tmp)
    os.replace(tmp, path)
    return path


def export(network, cfg, info, log=print):
    """SavedModel (+ TFLite) of a float32 Segmenter into output.export_dir; returns {kind: path or reason}."""
    out = cfg.output
    if not out.export_dir:
        return {}
    import keras

    if keras.backend.backend() != "tensorflow":  # SavedModel / TFLite are TensorFlow graphs
        keras_model = os.path.join(cfg.output.dir, "checkpoints", "best.keras")
        return {"saved_model": f"skipped: SavedModel/TFLite export needs the TensorFlow backend (this run used {keras.backend.backend()}): "
                               f"KERAS_BACKEND=tensorflow python -m ocr_tf.export --weights {keras_model} "
                               f"--format saved_model --output {os.path.join(out.export_dir, 'saved_model')}"}
    try:
        from ocr_tf.export import export_saved_model, export_tflite
    except ImportError as e:
        return {"saved_model": f"not exported: ocr_tf.export is unavailable ({e})"}
    result = {}
    names = list(info.class_names)
    result["saved_model"] = export_saved_model(network, os.path.join(out.export_dir, "saved_model"), class_names=names)
    if out.tflite:
        h, w = cfg.data.crop_size
        path = os.path.join(out.export_dir, f"{cfg.model.name}_{h}x{w}.tflite")
        result["tflite"] = export_tflite(network, path, input_size=(h, w), class_names=names)
    return result
