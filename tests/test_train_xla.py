"""Training under XLA (issue 13): the step `fit` runs on GPUs (Keras compiles it with XLA there,
`ocr_tf.train.JIT_COMPILE = "auto"`) computes what the eager/tf.function step computes, and mixed
precision keeps the logits and the loss in float32.

A small network (one ConvBN + the real OCR head) keeps the XLA compile short on a CPU; the loss
(with OHEM), the mIoU metric, the optimizer (SGD + PolyLR) and the trainer are the real ones.
"""

import keras
import numpy as np
import pytest

from ocr_tf import train
from ocr_tf.config import load_config
from ocr_tf.layers.common import ConvBN
from ocr_tf.layers.ocr import OCRHead
from ocr_tf.losses import SegmentationLoss
from ocr_tf.optim import build_optimizer
from ocr_tf.training_model import SegmentationTrainer

K = 3


def small_network(seed):
    keras.utils.set_random_seed(seed)
    image = keras.Input((32, 48, 3))
    feats = ConvBN(8, 3, strides=4, name="stem")(image)
    out = OCRHead(K, mid_channels=8, key_channels=4, dropout=0.0, name="head")(feats)  # no dropout: deterministic
    return keras.Model(image, out)


def batch(seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(2, 32, 48, 3)).astype("float32")
    y = rng.integers(0, K, size=(2, 32, 48)).astype("int32")
    y[:, :4] = 255  # ignored pixels
    return x, y


def one_step(jit_compile, weights=None):
    cfg = load_config(train.DEFAULT_CONFIG, ["train.warmup_steps=0", "train.iterations=10"])
    network = small_network(0)
    if weights is not None:
        network.set_weights(weights)
    loss = SegmentationLoss(K, 255, aux_weight=0.4, ohem=True, ohem_threshold=0.7, ohem_min_kept=200)
    trainer = SegmentationTrainer(network, loss, K, 255)
    trainer.compile(optimizer=build_optimizer(cfg.train), jit_compile=jit_compile)
    x, y = batch()
    logs = [trainer.train_on_batch(x, y, return_dict=True) for _ in range(2)]
    return logs, network.get_weights()


@pytest.mark.slow  # the XLA compile of a train step: ~20 s of CPU
def test_the_training_step_under_xla_equals_the_default_one():
    start = small_network(0).get_weights()
    eager_logs, eager_weights = one_step(False, start)
    xla_logs, xla_weights = one_step(True, start)
    for a, b in zip(eager_logs, xla_logs):
        for key in ("loss", "main_loss", "aux_loss", "miou"):
            assert b[key] == pytest.approx(a[key], rel=1e-5, abs=1e-6), key
    assert eager_logs[1]["loss"] != pytest.approx(eager_logs[0]["loss"], rel=1e-6)  # the step did move
    for a, b in zip(eager_weights, xla_weights):
        np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-5)


def test_train_compiles_with_keras_auto_policy():
    # "auto": XLA where Keras would use it (GPU/TPU), not on CPU-only machines (slower there).
    assert train.JIT_COMPILE == "auto"


def test_mixed_precision_keeps_logits_and_loss_float32():
    x, y = batch()
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        network = small_network(0)
        out = network(x, training=False)
        loss = SegmentationLoss(K, 255)(y, network(x, training=True))
    finally:
        keras.mixed_precision.set_global_policy("float32")
    dtype = keras.backend.standardize_dtype
    assert dtype(out["logits"].dtype) == "float32" and dtype(out["aux_logits"].dtype) == "float32"
    assert dtype(loss["loss"].dtype) == "float32"
    reference = small_network(0)
    want = reference(x, training=False)["logits"].numpy()
    got = out["logits"].numpy()
    # bf16 compute with float32 softmaxes: close to float32 (a bf16 softmax over h*w pixels is not)
    assert np.max(np.abs(got - want)) / np.max(np.abs(want)) < 5e-2
