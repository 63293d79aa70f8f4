"""NVIDIA's two-scale training objective: BCE and RMI equal NVIDIA's `RMILoss` (values stored in
tests/fixtures/nvidia_mscale_tiny.npz by tools/make_nvidia_fixture.py), the weighted sum of the
two-scale loss, and a tiny multi-scale network that trains (loss down, attention learned)."""

import os

import numpy as np
import pytest

from ocr_tf.losses_mscale import MscaleLoss, binary_cross_entropy, rmi_loss
from test_train import demo_cache, tiny_overrides  # noqa: F401 (demo_cache is a fixture)

FIXTURE = os.path.join(os.path.dirname(__file__), "fixtures", "nvidia_mscale_tiny.npz")


@pytest.fixture(scope="module")
def sample():
    with np.load(FIXTURE) as d:
        logits = np.transpose(d["loss_logits"], (0, 2, 3, 1))
        return logits, d["loss_labels"].astype(np.int32), float(d["loss_bce"]), float(d["loss_bce_rmi"])


def test_bce_equals_nvidia(sample):
    logits, labels, bce, _ = sample
    assert (labels == 255).any()  # the ignored pixels are part of the check
    got = float(binary_cross_entropy(labels, logits, 5))
    assert got == pytest.approx(bce, rel=1e-6)


def test_bce_plus_rmi_equals_nvidia(sample):
    logits, labels, _, bce_rmi = sample
    got = float(rmi_loss(labels, logits, 5))
    assert got == pytest.approx(bce_rmi, rel=1e-5)


def test_two_scale_loss_weights_each_term_as_nvidia(sample):
    logits, labels, bce, bce_rmi = sample
    rng = np.random.default_rng(0)
    other = [rng.normal(size=logits.shape).astype(np.float32) for _ in range(3)]
    outputs = {"logits": logits, "aux_logits": other[0], "logits_lo": other[1], "logits_hi": other[2]}
    parts = MscaleLoss(5)(labels, outputs)
    b = [float(binary_cross_entropy(labels, o, 5)) for o in other]
    assert float(parts["main_loss"]) == pytest.approx(bce_rmi, rel=1e-5)
    assert float(parts["aux_loss"]) == pytest.approx(b[0], rel=1e-6)
    assert float(parts["loss"]) == pytest.approx(bce_rmi + 0.4 * b[0] + 0.05 * (b[1] + b[2]), rel=1e-5)
    no_rmi = MscaleLoss(5, rmi=False, scale_weight=0.0)(labels, outputs)
    assert float(no_rmi["loss"]) == pytest.approx(bce + 0.4 * b[0], rel=1e-5)


def test_class_weights_and_ohem_are_refused_not_ignored():
    from ocr_tf.config import LossConfig
    from ocr_tf.training_mscale import mscale_training_parts

    with pytest.raises(ValueError, match="class_weights"):
        mscale_training_parts(None, 3, LossConfig(class_weights=[1.0, 1.0, 1.0]))
    with pytest.raises(ValueError, match="ohem"):
        mscale_training_parts(None, 3, LossConfig(ohem=True))


@pytest.mark.slow  # ~1-2 min of CPU: two scales per step, traced once
def test_tiny_mscale_network_trains_two_scales():
    """A few Adam steps on one batch: the two-scale loss goes down and the attention head learns."""
    import keras

    from ocr_tf.config import LossConfig
    from ocr_tf.models import build_model
    from ocr_tf.training_mscale import mscale_training_parts
    from ocr_tf.training_model import SegmentationTrainer

    keras.utils.set_random_seed(0)
    stage = lambda ch, block="BASIC": {"NUM_MODULES": 1, "NUM_BRANCHES": len(ch), "BLOCK": block,  # noqa: E731
                                       "NUM_BLOCKS": [1] * len(ch), "NUM_CHANNELS": ch, "FUSE_METHOD": "SUM"}
    extra = {"STAGE1": stage([4], "BOTTLENECK"), "STAGE2": stage([4, 8]), "STAGE3": stage([4, 8, 8]),
             "STAGE4": stage([4, 8, 8, 8])}
    net = build_model("hrnet_tiny_mscale_ocr", 3, extra=extra, mid_channels=8, key_channels=4, attn_channels=4)
    model, loss = mscale_training_parts(net, 3, LossConfig())
    trainer = SegmentationTrainer(model, loss, 3)
    trainer.compile(optimizer=keras.optimizers.Adam(0.005))
    rng = np.random.default_rng(0)
    labels = np.repeat(np.repeat(rng.integers(0, 3, size=(2, 4, 6)), 8, axis=1), 8, axis=2).astype(np.int32)
    labels[:, :4] = 255
    images = (np.eye(3)[np.minimum(labels, 2)] * 2 - 1 + 0.1 * rng.normal(size=(*labels.shape, 3))).astype(np.float32)
    attn = np.array(net.get_layer("head").scale_attn.conv2.kernel)
    # One batch, one step per epoch: the history is the training loss (BN in training mode) per step.
    losses = trainer.fit(images, labels, batch_size=2, epochs=12, verbose=0).history["loss"]
    assert np.mean(losses[-3:]) < np.mean(losses[:3]) - 0.1, losses
    assert not np.allclose(attn, np.array(net.get_layer("head").scale_attn.conv2.kernel))  # attention learns


@pytest.mark.slow  # the train command end to end on the demo (~3 min of CPU)
def test_train_command_trains_the_tiny_mscale_model_on_the_demo(tmp_path, demo_cache):
    import csv

    import keras

    from ocr_tf.layers.mscale import is_mscale
    from ocr_tf.cli.train import main

    run_dir = tmp_path / "run"
    extra = ["model.name=hrnet_tiny_mscale_ocr", "model.overrides.attn_channels=4"]
    assert main(tiny_overrides(str(run_dir), iterations=4, steps_per_epoch=2, extra=extra)) == 0
    rows = list(csv.DictReader(open(run_dir / "training_log.csv")))
    assert [int(r["epoch"]) for r in rows] == [0, 1]
    assert all(np.isfinite(float(r["loss"])) and 0.0 <= float(r["val_miou"]) <= 1.0 for r in rows)
    import ocr_tf.layers  # noqa: F401 (registers the layers)

    best = keras.saving.load_model(run_dir / "checkpoints" / "best.keras", compile=False)
    assert is_mscale(best)


def test_cityscapes_config_is_nvidias_recipe():
    from ocr_tf.config import load_config

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    cfg = load_config(os.path.join(root, "configs", "cityscapes", "hrnet_w48_mscale_ocr.yaml"))
    t, d, lo = cfg.train, cfg.data, cfg.loss
    assert cfg.model.name == "hrnet_w48_mscale_ocr" and d.num_classes == 19
    assert d.crop_size == [1024, 2048] and d.scale_range == [0.5, 2.0] and d.flip
    assert (t.batch_size, t.lr, t.momentum, t.weight_decay, t.power) == (8, 0.005, 0.9, 1e-4, 2.0)
    assert t.iterations == 175 * -(-2975 // 8) and t.mixed_precision == "float16"
    assert (lo.aux_weight, lo.mscale_lo_scale, lo.mscale_scale_weight, lo.mscale_rmi) == (0.4, 0.5, 0.05, True)
    assert lo.class_weights is None and not lo.ohem
