"""The OCR training loss against NumPy float64 references: CE ignoring 255 after an
align_corners=True resize, class weights as PyTorch's weighted mean, 0.4 x aux, OHEM selection."""

import numpy as np
import pytest
import tensorflow as tf

from ocr_tf.losses import SegmentationLoss, cross_entropy, ohem_cross_entropy
from tests.ocr_reference import resize_bilinear as np_resize

K = 5


def np_pixel_ce(labels, logits):
    """Per-pixel CE (float64) at label size, labels with 255 replaced by 0, plus the valid mask."""
    z = logits - logits.max(-1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(-1, keepdims=True))
    valid = labels != 255
    safe = np.where(valid, labels, 0)
    ce = -np.take_along_axis(logp, safe[..., None], -1)[..., 0]
    prob = np.exp(np.take_along_axis(logp, safe[..., None], -1)[..., 0])
    return ce, valid, safe, prob


def np_ce(labels, logits, weights=None):
    ce, valid, safe, _ = np_pixel_ce(labels, logits)
    w = np.ones(K) if weights is None else np.asarray(weights, np.float64)
    pw = w[safe] * valid
    return (ce * pw).sum() / pw.sum()


def np_ohem(labels, logits, thresh, min_kept, weights=None):
    """[HR] OhemCrossEntropy, step by step."""
    ce, valid, safe, prob = np_pixel_ce(labels, logits)
    w = np.ones(K) if weights is None else np.asarray(weights, np.float64)
    losses = (ce * w[safe])[valid]
    p = prob[valid]
    order = np.argsort(p, kind="stable")
    p_sorted = p[order]
    min_value = p_sorted[min(min_kept, p_sorted.size - 1)]
    threshold = max(min_value, thresh)
    kept = losses[order][p_sorted < threshold]
    return kept.mean(), kept.size


@pytest.fixture
def batch():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, K, (2, 13, 17))
    labels[rng.random(labels.shape) < 0.2] = 255
    logits = rng.normal(size=(2, 4, 5, K)) * 3  # feature resolution, ~1/4 of the labels
    return labels.astype(np.int32), logits.astype(np.float32)


def test_cross_entropy_ignores_255_after_align_corners_resize(batch):
    labels, logits = batch
    ref = np_ce(labels, np_resize(logits.astype(np.float64), labels.shape[1:], True))
    got = float(cross_entropy(tf.constant(labels), tf.constant(logits)))
    np.testing.assert_allclose(got, ref, rtol=1e-5)
    # Changing the logits under ignored pixels only (same size) changes nothing.
    full = np_resize(logits.astype(np.float64), labels.shape[1:], True).astype(np.float32)
    noisy = full + (labels == 255)[..., None] * 50.0
    np.testing.assert_allclose(float(cross_entropy(labels, noisy)), float(cross_entropy(labels, full)), rtol=1e-6)
    # With align_corners=False the value differs (the resize is really the align_corners one).
    other = float(cross_entropy(labels, logits, align_corners=False))
    assert abs(other - ref) > 1e-4


def test_class_weights_are_a_weighted_mean(batch):
    labels, logits = batch
    weights = [0.5, 1.0, 2.0, 0.8373, 1.1529]
    up = np_resize(logits.astype(np.float64), labels.shape[1:], True)
    got = float(cross_entropy(labels, logits, class_weights=weights))
    np.testing.assert_allclose(got, np_ce(labels, up, weights), rtol=1e-5)
    assert abs(got - np_ce(labels, up)) > 1e-3


def test_all_ignored_gives_zero_not_nan():
    labels = np.full((1, 4, 4), 255, np.int32)
    logits = np.zeros((1, 4, 4, K), np.float32)
    assert float(cross_entropy(labels, logits)) == 0.0
    assert float(ohem_cross_entropy(labels, logits, threshold=0.7, min_kept=3)) == 0.0


@pytest.mark.parametrize("thresh,min_kept", [(0.7, 10), (0.3, 10), (0.9, 100000), (0.05, 50)])
def test_ohem_selection_matches_reference(batch, thresh, min_kept):
    labels, logits = batch
    up = np_resize(logits.astype(np.float64), labels.shape[1:], True)
    ref, n_kept = np_ohem(labels, up, thresh, min_kept)
    got = float(ohem_cross_entropy(labels, logits, threshold=thresh, min_kept=min_kept))
    np.testing.assert_allclose(got, ref, rtol=1e-5)
    n_valid = int((labels != 255).sum())
    # The cases cover both regimes: threshold-bound and min_kept-bound selections.
    assert 0 < n_kept <= n_valid


def test_ohem_min_kept_regime_keeps_exactly_min_kept(batch):
    labels, logits = batch
    up = np_resize(logits.astype(np.float64), labels.shape[1:], True)
    # A tiny threshold: the min_kept-th smallest probability decides; exactly min_kept pixels kept.
    ref, n_kept = np_ohem(labels, up, 1e-6, 37)
    assert n_kept == 37
    got = float(ohem_cross_entropy(labels, logits, threshold=1e-6, min_kept=37))
    np.testing.assert_allclose(got, ref, rtol=1e-5)
    # Plain CE averages every valid pixel: OHEM (hardest pixels) is strictly larger.
    assert got > np_ce(labels, up)


def test_ohem_with_class_weights(batch):
    labels, logits = batch
    weights = [2.0, 0.5, 1.0, 1.5, 0.25]
    up = np_resize(logits.astype(np.float64), labels.shape[1:], True)
    ref, _ = np_ohem(labels, up, 0.7, 20, weights)
    got = float(ohem_cross_entropy(labels, logits, threshold=0.7, min_kept=20, class_weights=weights))
    np.testing.assert_allclose(got, ref, rtol=1e-5)


def test_segmentation_loss_combines_main_and_aux(batch):
    labels, logits = batch
    aux = logits[:, ::-1] * 0.5
    up = lambda x: np_resize(x.astype(np.float64), labels.shape[1:], True)  # noqa: E731
    loss = SegmentationLoss(K)
    parts = {k: float(v) for k, v in loss(labels, {"logits": logits, "aux_logits": aux}).items()}
    np.testing.assert_allclose(parts["main_loss"], np_ce(labels, up(logits)), rtol=1e-5)
    np.testing.assert_allclose(parts["aux_loss"], np_ce(labels, up(aux)), rtol=1e-5)
    np.testing.assert_allclose(parts["loss"], parts["main_loss"] + 0.4 * parts["aux_loss"], rtol=1e-6)
    # OHEM applies to the final logits only; the aux term stays plain CE.
    ohem = SegmentationLoss(K, ohem=True, ohem_threshold=0.7, ohem_min_kept=20)
    oparts = {k: float(v) for k, v in ohem(labels, {"logits": logits, "aux_logits": aux}).items()}
    np.testing.assert_allclose(oparts["main_loss"], np_ohem(labels, up(logits), 0.7, 20)[0], rtol=1e-5)
    np.testing.assert_allclose(oparts["aux_loss"], parts["aux_loss"], rtol=1e-6)


def test_gradient_matches_reference_direction(batch):
    """d(CE)/d(logits) at label size is (softmax - onehot) * w / sum(w) on valid pixels, 0 elsewhere."""
    labels, logits = batch
    full = tf.Variable(np_resize(logits.astype(np.float64), labels.shape[1:], True).astype(np.float32))
    weights = [0.5, 1.0, 2.0, 1.0, 1.5]
    with tf.GradientTape() as tape:
        loss = cross_entropy(labels, full, class_weights=weights)
    grad = tape.gradient(loss, full).numpy()
    f = full.numpy().astype(np.float64)
    p = np.exp(f - f.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    valid = labels != 255
    safe = np.where(valid, labels, 0)
    pw = np.asarray(weights)[safe] * valid
    ref = (p - np.eye(K)[safe]) * (pw / pw.sum())[..., None]
    np.testing.assert_allclose(grad, ref, atol=1e-7)


def test_bad_class_weights_length():
    with pytest.raises(ValueError, match="class_weights has 3 entries for 5 classes"):
        SegmentationLoss(K, class_weights=[1, 2, 3])


def test_ohem_compiles_under_xla_and_equals_eager(batch):
    # Keras compiles train steps with XLA on GPUs: the OHEM selection must keep static shapes.
    labels, logits = batch
    eager = ohem_cross_entropy(labels, logits, threshold=0.7, min_kept=40)
    compiled = tf.function(lambda l, x: ohem_cross_entropy(l, x, threshold=0.7, min_kept=40), jit_compile=True)
    np.testing.assert_allclose(float(compiled(labels, logits)), float(eager), rtol=1e-6)
