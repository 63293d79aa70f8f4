"""`python -m ocr_tf.train` on JAX and on PyTorch: the real command, on the built-in demo with a
tiny budget, in a subprocess with KERAS_BACKEND set. It trains with `fit` from the tf.data
pipeline, validates, evaluates on the whole validation set, writes best.keras (a Segmenter that
this TensorFlow process reloads and runs) and says in one line that the SavedModel/TFLite export
needs the TensorFlow backend."""

import csv
import importlib.util
import json
import math
import os
import subprocess
import sys
import tempfile

import numpy as np
import pytest

from test_train import demo_cache, tiny_overrides  # noqa: F401  (the session's demo dataset fixture)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["jax", "torch"])
def test_train_command_on_the_demo(backend, tmp_path, demo_cache):  # noqa: F811
    if importlib.util.find_spec(backend) is None:
        pytest.skip(f"{backend} is not installed (pip install -e '.[{backend}]')")
    run_dir, export_dir = tmp_path / "run", tmp_path / "export"
    args = tiny_overrides(str(run_dir), str(export_dir), iterations=4, steps_per_epoch=2,
                          extra=["data.val_steps=1", "train.tensorboard_images=1"])
    env = dict(os.environ, KERAS_BACKEND=backend, OCR_TF_CACHE=demo_cache, TF_CPP_MIN_LOG_LEVEL="3")
    if backend == "jax":  # compiling is most of the time here: as in tests/backend (child_env)
        env.update(JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true",
                   JAX_COMPILATION_CACHE_DIR=os.path.join(tempfile.gettempdir(), "ocr_tf_tests_jax_cache"),
                   JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0", JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")
    run = subprocess.run([sys.executable, "-m", "ocr_tf.train", *args], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=900)
    out = run.stdout + run.stderr
    assert run.returncode == 0, out[-6000:]
    assert "Traceback" not in out, out[-6000:]

    # fit's log: every step's loss finite, two validations with an mIoU in [0, 1]
    rows = list(csv.DictReader(open(run_dir / "training_log.csv")))
    assert [int(r["epoch"]) for r in rows] == [0, 1]
    losses = [float(r[k]) for r in rows for k in ("loss", "main_loss", "aux_loss", "val_loss")]
    assert all(math.isfinite(v) and v > 0 for v in losses), rows
    assert all(0.0 <= float(r["val_miou"]) <= 1.0 for r in rows), rows
    best = json.loads((run_dir / "checkpoints" / "best.json").read_text())
    assert best["step"] in (2, 4) and 0.0 <= best["val_miou"] <= 1.0
    # the final whole-set evaluation ran on this backend and was reported
    assert "Validation mIoU" in out and "house window" in out
    # export: one line saying why and what to run instead, no export folder
    assert "SavedModel/TFLite export needs the TensorFlow backend" in out
    assert "KERAS_BACKEND=tensorflow python -m ocr_tf.export --weights" in out
    assert not export_dir.exists()

    # best.keras is a Segmenter that TensorFlow (this process) loads; it equals best.weights.h5
    import keras

    import ocr_tf
    from ocr_tf.config import load_config
    from ocr_tf.models import build_model

    assert keras.backend.backend() == "tensorflow"
    ckpt = run_dir / "checkpoints"
    whole = keras.saving.load_model(ckpt / "best.keras", compile=False)
    assert isinstance(whole, ocr_tf.Segmenter)
    assert whole.model_name == "hrnet_tiny_ocr" and whole.dataset == "demo" and whole.provenance["steps"] == 4
    cfg = load_config(str(run_dir / "config.yaml"))
    net = build_model(cfg.model.name, cfg.data.num_classes, **cfg.model.overrides)
    net.load_weights(ckpt / "best.weights.h5")
    x = np.random.default_rng(0).normal(size=(1, 32, 48, 3)).astype("float32")
    logits = keras.ops.convert_to_numpy(whole(x, training=False)["logits"])
    assert logits.shape == (1, 8, 12, 8) and np.isfinite(logits).all()
    np.testing.assert_array_equal(logits, keras.ops.convert_to_numpy(net(x, training=False)["logits"]))
    labels = whole.predict(np.random.default_rng(1).integers(0, 255, (32, 48, 3), dtype=np.uint8))
    assert np.asarray(labels).shape == (32, 48) and set(np.unique(labels)) <= set(range(8))
