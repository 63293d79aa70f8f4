"""NVIDIA's two-scale training objective: BCE and RMI equal NVIDIA's `RMILoss` (values stored in
tests/fixtures/nvidia_mscale_tiny.npz by tools/make_nvidia_fixture.py), the weighted sum of the
two-scale loss, and a tiny multi-scale network that trains (loss down, attention learned)."""

import os

import numpy as np
import pytest

from ocr_tf.losses_mscale import MscaleLoss, binary_cross_entropy, rmi_loss

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


def test_tiny_mscale_network_trains_two_scales(sample):
    """A few SGD steps on one batch: the two-scale loss goes down and the attention head learns."""
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
    trainer.compile(optimizer=keras.optimizers.SGD(0.05, momentum=0.9))
    rng = np.random.default_rng(0)
    labels = np.repeat(np.repeat(rng.integers(0, 3, size=(2, 4, 6)), 8, axis=1), 8, axis=2).astype(np.int32)
    labels[:, :4] = 255
    images = (np.eye(3)[np.minimum(labels, 2)] * 2 - 1 + 0.1 * rng.normal(size=(*labels.shape, 3))).astype(np.float32)
    before = trainer.evaluate(images, labels, verbose=0, return_dict=True)["loss"]
    attn = np.array(net.get_layer("head").scale_attn.conv2.kernel)
    trainer.fit(images, labels, batch_size=2, epochs=8, verbose=0)
    after = trainer.evaluate(images, labels, verbose=0, return_dict=True)["loss"]
    assert after < 0.8 * before, (before, after)
    assert not np.allclose(attn, np.array(net.get_layer("head").scale_attn.conv2.kernel))
