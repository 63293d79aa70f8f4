"""`python -m ocr_tf.train`: the default command's pieces on a tiny budget, resume after
SIGKILL, NaN stop, bad input refused before training, mixed precision, fit planning."""

import csv
import glob
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _stage(ch, block="BASIC"):
    return {"NUM_MODULES": 1, "NUM_BRANCHES": len(ch), "BLOCK": block, "NUM_BLOCKS": [1] * len(ch),
            "NUM_CHANNELS": ch, "FUSE_METHOD": "SUM"}


TINY = {"STAGE1": _stage([4], "BOTTLENECK"), "STAGE2": _stage([4, 8]), "STAGE3": _stage([4, 8, 8]),
        "STAGE4": _stage([4, 8, 8, 8])}


def tiny_overrides(run_dir, export_dir="null", iterations=6, steps_per_epoch=3, extra=()):
    """--set arguments turning the demo config into a seconds-long run."""
    return [
        "--set", f"model.overrides.extra={json.dumps(TINY)}", "model.overrides.mid_channels=8",
        "model.overrides.key_channels=4", "data.crop_size=[32, 48]", "data.val_steps=2",
        "train.batch_size=2", f"train.iterations={iterations}", f"train.steps_per_epoch={steps_per_epoch}",
        "train.warmup_steps=0", "train.verbose=2", f"output.dir={run_dir}", f"output.export_dir={export_dir}",
        *extra,
    ]


@pytest.fixture(scope="session")
def demo_cache(tmp_path_factory):
    """The demo dataset generated once for this session, in a temporary cache."""
    cache = str(tmp_path_factory.mktemp("ocr_tf_cache"))
    previous = os.environ.get("OCR_TF_CACHE")
    os.environ["OCR_TF_CACHE"] = cache  # the train command calls prepare_demo() with no folder
    from ocr_tf.data.datasets.demo import prepare_demo

    prepare_demo(os.path.join(cache, "demo"))
    yield cache
    if previous is None:
        os.environ.pop("OCR_TF_CACHE", None)
    else:
        os.environ["OCR_TF_CACHE"] = previous


# ------------------------------------------------------------------------------ planning


def test_plan_segments():
    from ocr_tf.train import plan_segments

    assert plan_segments(0, 10, 4) == [(0, 2, 4), (2, 3, 2)]
    assert plan_segments(0, 8, 4) == [(0, 2, 4)]
    # resumed mid-epoch 1: finish it (3 steps), then the last short epoch
    assert plan_segments(5, 10, 4) == [(1, 2, 3), (2, 3, 2)]
    assert plan_segments(4, 12, 4) == [(1, 3, 4)]
    assert plan_segments(10, 10, 4) == []
    # every plan covers exactly the missing steps, epochs contiguous
    for start in range(0, 23):
        segs = plan_segments(start, 23, 5)
        assert sum((e - i) * s for i, e, s in segs) == 23 - start
        assert all(a[1] == b[0] for a, b in zip(segs, segs[1:]))


# ------------------------------------------------------------------------------ bad input


def test_unknown_key_refused_with_name(capsys):
    from ocr_tf.cli.train import main

    assert main(["--set", "train.lrr=0.1"]) == 2
    err = capsys.readouterr().err
    assert "unknown config key 'train.lrr'" in err and "did you mean 'train.lr'" in err


def test_missing_dataset_and_class_mismatch_refused_before_training(tmp_path, demo_cache):
    from ocr_tf.config import load_config
    from ocr_tf.train import DataError, _check_record_classes, run

    run_dir = tmp_path / "run"
    cfg = load_config(None, ["data.dataset=cityscapes", "data.num_classes=19", f"data.train={tmp_path}/nope-*.tfrecord",
                             f"output.dir={run_dir}"])
    with pytest.raises(DataError, match=r"data\.train: no TFRecord files match .*nope-\*\.tfrecord"):
        run(cfg)
    cfg = load_config(os.path.join(ROOT, "configs", "demo", "default.yaml"), ["data.num_classes=5", f"output.dir={run_dir}"])
    with pytest.raises(DataError, match="data.num_classes is 5 but dataset 'demo' has 8 classes"):
        run(cfg)
    assert not run_dir.exists()  # refused before anything was built or written
    # Records made with another class count (their <split>-info.json says so)
    (tmp_path / "train-00000-of-00001.tfrecord").write_bytes(b"")
    (tmp_path / "train-info.json").write_text(json.dumps({"num_classes": 19, "shards": []}))
    with pytest.raises(DataError, match=r"train-info\.json says the records have 19 classes.*= 8"):
        _check_record_classes("train", [str(tmp_path / "train-00000-of-00001.tfrecord")], 8)


# ------------------------------------------------------------------------------ the default command


@pytest.mark.slow
def test_default_command_pieces_on_a_tiny_budget(tmp_path, demo_cache, capsys):
    from ocr_tf.cli.train import main

    run_dir, export_dir = tmp_path / "run", tmp_path / "export"
    assert main(tiny_overrides(str(run_dir), str(export_dir))) == 0
    out = capsys.readouterr().out
    ckpt = run_dir / "checkpoints"
    best = json.loads((ckpt / "best.json").read_text())
    assert best["step"] in (3, 6) and 0.0 <= best["val_miou"] <= 1.0
    assert (ckpt / "best.weights.h5").exists() and (ckpt / "last.weights.h5").exists()
    # best.keras is the best network whole: it loads without model flags and equals the weights.
    import keras
    import numpy as np

    from ocr_tf.config import load_config
    from ocr_tf.models import build_model

    import ocr_tf

    whole = keras.saving.load_model(ckpt / "best.keras", compile=False)
    # best.keras is a Segmenter: it knows its classes, palette and how it was built.
    assert isinstance(whole, ocr_tf.Segmenter)
    assert whole.class_names == list(cfg_classes()) and whole.dataset == "demo"
    assert whole.model_name == "hrnet_tiny_ocr" and whole.provenance["steps"] == 6
    cfg = load_config(str(run_dir / "config.yaml"))
    net = build_model(cfg.model.name, cfg.data.num_classes, **cfg.model.overrides)
    net.load_weights(ckpt / "best.weights.h5")
    x = np.random.default_rng(0).normal(size=(1, 32, 48, 3)).astype("float32")
    np.testing.assert_array_equal(whole(x, training=False)["logits"], net(x, training=False)["logits"])
    assert "Model (.keras):" in out
    assert "python -m ocr_tf.predict" in out and os.path.isdir(whole_demo_images())
    assert not (run_dir / "backup").exists()  # schedule complete: backup removed
    assert not glob.glob(str(run_dir / "**" / "*.tmp*"), recursive=True)  # atomic writes only
    rows = list(csv.DictReader(open(run_dir / "training_log.csv")))
    assert [int(r["epoch"]) for r in rows] == [0, 1]
    assert {"loss", "main_loss", "aux_loss", "miou", "val_miou", "val_loss"} <= set(rows[0])
    # TensorBoard: Keras' scalars and our learning rate + overlay images
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir / "logs" / "extras"), size_guidance={"tensors": 0})
    acc.Reload()
    tags = acc.Tags()["tensors"]
    assert "learning_rate" in tags and any("prediction" in t for t in tags)
    import tensorflow as tf

    lrs = [float(tf.make_ndarray(e.tensor_proto)) for e in acc.Tensors("learning_rate")]
    assert lrs == pytest.approx([_lr(3, 6), 0.0], abs=1e-7)  # poly decay, logged after each epoch
    assert glob.glob(str(run_dir / "logs" / "train" / "events.*"))
    # Final evaluation on the whole validation set, and the exports
    assert "Validation mIoU" in out and "house window" in out
    saved = export_dir / "saved_model" / "1" / "saved_model.pb"
    assert saved.exists() and str(export_dir / "saved_model" / "1") in out
    tflite = glob.glob(str(export_dir / "*.tflite"))
    assert len(tflite) == 1 and tflite[0] in out
    assert str(ckpt / "best.weights.h5") in out and f"tensorboard --logdir {run_dir / 'logs'}" in out


# ------------------------------------------------------------------------------ resume after SIGKILL


def _lr(step, iterations, base=0.05):
    return base * (1 - step / iterations) ** 0.9


@pytest.mark.slow
def test_resume_after_sigkill_continues_step_and_lr(tmp_path, demo_cache):
    run_dir = tmp_path / "run"
    iterations = 40
    args = [sys.executable, "-m", "ocr_tf.train", *tiny_overrides(str(run_dir), iterations=iterations,
                                                                steps_per_epoch=10,
                                                                extra=["train.backup_every_steps=2", "data.val_steps=1"])]
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", OCR_TF_CACHE=demo_cache)
    meta = run_dir / "backup" / "training_metadata.json"
    proc = subprocess.Popen(args, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    saved = 0
    try:
        deadline = time.time() + 300
        while time.time() < deadline and proc.poll() is None:
            if meta.exists():
                saved = json.loads(meta.read_text())["step"]
                if saved >= 14:  # mid-epoch 1
                    break
            time.sleep(0.05)
        assert proc.poll() is None, f"run ended before it could be killed:\n{proc.stdout.read()[-3000:]}"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
    killed_at = json.loads(meta.read_text())["step"]  # the last complete backup
    assert 14 <= killed_at < iterations
    first_rows = list(csv.DictReader(open(run_dir / "training_log.csv")))

    again = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    line = next(l for l in again.stdout.splitlines() if l.startswith("Resumed from"))
    step = int(line.split(" at step ")[1].split()[0])
    lr = float(line.split("learning rate ")[1].rstrip(")."))
    assert step == killed_at  # the step counter continues; it does not restart from zero
    assert lr == pytest.approx(_lr(step, iterations), rel=1e-5)  # and so does the LR schedule
    rows = list(csv.DictReader(open(run_dir / "training_log.csv")))
    epochs = [int(r["epoch"]) for r in rows]
    # epoch 0 logged before the kill; the resumed run finishes epoch `step // 10` and goes on
    assert epochs[: len(first_rows)] == [int(r["epoch"]) for r in first_rows]
    assert epochs[len(first_rows):] == list(range(step // 10, iterations // 10))
    assert "Done: 40 steps" in again.stdout  # the optimizer ends at the schedule's last step


# ------------------------------------------------------------------------------ NaN stop


def test_nan_loss_stops_and_keeps_last_good_backup(tmp_path):
    import keras
    import tensorflow as tf

    from ocr_tf.callbacks import BestCheckpoint, NaNStop, StepBackupAndRestore
    from ocr_tf.losses import SegmentationLoss
    from ocr_tf.models import build_model
    from ocr_tf.optim import SGD
    from ocr_tf.training_model import SegmentationTrainer

    net = build_model("hrnet_w48_ocr", 3, extra=TINY, mid_channels=8, key_channels=4)
    trainer = SegmentationTrainer(net, SegmentationLoss(3), 3)
    trainer.compile(optimizer=SGD(0.01))
    rng = np.random.default_rng(0)
    x = rng.normal(size=(8, 16, 16, 3)).astype(np.float32)
    x[6] = np.nan  # the 4th batch of 2
    y = rng.integers(0, 3, (8, 16, 16)).astype(np.int32)
    nan_stop = NaNStop(keep_hint="(hint)")
    backup = StepBackupAndRestore(str(tmp_path / "backup"), save_freq=1)
    best = BestCheckpoint(net, str(tmp_path / "ckpt"))
    trainer.fit(tf.data.Dataset.from_tensor_slices((x, y)).batch(2), epochs=1, verbose=0,
                callbacks=[nan_stop, backup, best])
    assert nan_stop.message.startswith("training loss became nan at step 4; stopped")
    meta = json.loads((tmp_path / "backup" / "training_metadata.json").read_text())
    assert meta["step"] == 3  # the last good step
    assert not (tmp_path / "ckpt" / "last.weights.h5").exists()  # nothing written after the NaN
    fresh = SegmentationTrainer(build_model("hrnet_w48_ocr", 3, extra=TINY, mid_channels=8, key_channels=4),
                                SegmentationLoss(3), 3)
    fresh.compile(optimizer=SGD(0.01))
    fresh(keras.ops.zeros((1, 16, 16, 3)))
    restore = StepBackupAndRestore(str(tmp_path / "backup"))
    restore.set_model(fresh)
    assert restore.restore() == 3
    assert all(np.isfinite(w).all() for w in fresh.get_weights())


# ------------------------------------------------------------------------------ mixed precision


@pytest.mark.parametrize("policy", ["mixed_bfloat16", "mixed_float16"])
def test_mixed_precision_keeps_logits_and_loss_float32(policy):
    import keras
    import tensorflow as tf

    from ocr_tf.losses import SegmentationLoss
    from ocr_tf.models import build_model
    from ocr_tf.optim import SGD
    from ocr_tf.training_model import SegmentationTrainer

    keras.mixed_precision.set_global_policy(policy)
    try:
        net = build_model("hrnet_w48_ocr", 3, extra=TINY, mid_channels=8, key_channels=4)
        trainer = SegmentationTrainer(net, SegmentationLoss(3), 3)
        trainer.compile(optimizer=SGD(0.01))
        x = np.random.default_rng(0).normal(size=(2, 16, 16, 3)).astype(np.float32)
        y = np.zeros((2, 16, 16), np.int32)
        out = net(x, training=False)
        assert out["logits"].dtype == tf.float32 and out["aux_logits"].dtype == tf.float32
        hist = trainer.fit(x, y, batch_size=2, epochs=1, verbose=0)
        assert np.isfinite(hist.history["loss"][0])
        assert net.get_layer("head").compute_dtype == policy.split("_")[1]
        assert all(v.dtype == "float32" for v in net.trainable_variables)  # float32 master weights
        scaled = isinstance(trainer.optimizer, keras.optimizers.LossScaleOptimizer)
        assert scaled == (policy == "mixed_float16")  # loss scaling only where float16 needs it
    finally:
        keras.mixed_precision.set_global_policy("float32")


def test_best_checkpoint_bar_only_carries_over_on_resume(tmp_path):
    from ocr_tf.callbacks import BestCheckpoint

    (tmp_path / "best.json").write_text(json.dumps({"val_miou": 0.7, "epoch": 3, "step": 300}))
    assert BestCheckpoint(None, str(tmp_path), resume=True).best == 0.7
    # a fresh run in an old folder must not keep (and later export) the old run's weights
    assert BestCheckpoint(None, str(tmp_path), resume=False).best == -float("inf")


def cfg_classes():
    from ocr_tf.data.datasets.demo import CLASS_NAMES

    return CLASS_NAMES


def whole_demo_images():
    from ocr_tf.data.datasets.demo import prepare_demo

    return prepare_demo()["images"]
