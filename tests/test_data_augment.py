"""Augmentation: fused scale+crop equals resize-then-crop; image and label stay aligned."""

import numpy as np
import pytest
import tensorflow as tf

from ocr_tf.data import augment

RNG = np.random.default_rng(2)


@pytest.mark.parametrize("h, w, big_h, big_w, oy, ox, ch, cw", [
    (37, 53, 80, 110, 5, 17, 40, 50),    # upscale, window inside
    (37, 53, 20, 30, 0, 0, 25, 40),      # downscale below the crop: padded
    (50, 70, 101, 33, 60, 0, 41, 33),    # mixed, window reaching the bottom
    (16, 16, 16, 16, 2, 3, 8, 8),        # scale 1: a plain crop
])
def test_scaled_window_equals_resize_then_crop(h, w, big_h, big_w, oy, ox, ch, cw):
    image = RNG.integers(0, 256, (h, w, 3)).astype(np.uint8)
    label = RNG.integers(0, 20, (h, w)).astype(np.uint8)
    out, lab, valid = augment.scaled_window(image, label, (big_h, big_w), (oy, ox), (ch, cw))
    ref = np.zeros((max(big_h, oy + ch), max(big_w, ox + cw), 3), np.float32)
    ref[:big_h, :big_w] = tf.image.resize(image.astype(np.float32), (big_h, big_w), "bilinear")
    ref_lab = np.full(ref.shape[:2], 255, np.uint8)
    ref_lab[:big_h, :big_w] = tf.image.resize(label[..., None], (big_h, big_w), "nearest")[..., 0]
    # float32 rounding of the sampling coordinates only (values are 0-255).
    np.testing.assert_allclose(out.numpy(), ref[oy:oy + ch, ox:ox + cw], atol=5e-3)
    np.testing.assert_array_equal(lab.numpy(), ref_lab[oy:oy + ch, ox:ox + cw])
    ref_valid = np.zeros(ref.shape[:2], bool)
    ref_valid[:big_h, :big_w] = True
    np.testing.assert_array_equal(valid.numpy(), ref_valid[oy:oy + ch, ox:ox + cw])


def _ramp_example(h=30, w=40, num_classes=20):
    """Image whose pixels say where they came from: R = 40 + row, G = 40 + col, B = 40; the
    label is a function of (row, col), so it can be recomputed from augmented image pixels."""
    rows, cols = np.mgrid[:h, :w]
    image = np.stack([40 + rows, 40 + cols, np.full_like(rows, 40)], -1).astype(np.uint8)
    label_of = ((rows // 3) * 7 + (cols // 4) * 3) % num_classes
    label_of[::5, ::7] = 255  # some ignore pixels in the source too
    return image, label_of.astype(np.uint8)


SWAP = {14: 15, 15: 14, 16: 17, 17: 16, 18: 19, 19: 18}


@pytest.mark.parametrize("flip_pairs", [(), ((14, 15), (16, 17), (18, 19))])
def test_label_stays_derivable_from_image_after_augmentation(flip_pairs):
    image, label = _ramp_example()
    seen_flip = seen_pad = seen_shift = checked = total = 0
    for k in range(24):
        out, lab = augment.train_augment(image, label, tf.constant([7, k], tf.int64), crop_size=(24, 32),
                                         scale_range=(0.5, 2.0), brightness=10, flip_pairs=flip_pairs)
        out, lab = out.numpy(), lab.numpy()
        padded = (out == 0).all(-1)
        # Padded area: image exactly 0 and label ignore; real pixels are never 0 (ramps start at 30).
        assert (lab[padded] == 255).all()
        real = ~padded
        shift = out[..., 2][real] - 40.0  # brightness moves every channel by the same integer
        assert np.allclose(shift, shift[0], atol=1e-3) and abs(shift[0]) <= 10
        assert abs(shift[0] - round(shift[0])) < 1e-3
        row = out[..., 0] - 40.0 - shift[0]
        col = out[..., 1] - 40.0 - shift[0]
        # Nearest-neighbour label = label of the source pixel nearest to the sampled coordinate;
        # skip exact half-way ties, where float rounding may pick either neighbour.
        frac = np.stack([row % 1.0, col % 1.0])
        clear = real & (np.abs(frac - 0.5) > 1e-3).all(0)
        expected = label[np.clip(np.floor(row + 0.5).astype(int), 0, 29)[clear],
                         np.clip(np.floor(col + 0.5).astype(int), 0, 39)[clear]]
        flipped = out[0, 0, 1] > out[0, -1, 1] if real[0, 0] and real[0, -1] else None
        if flipped is None:  # decide from any row with two real pixels
            r = np.flatnonzero(real.sum(1) > 1)[0]
            cs = np.flatnonzero(real[r])
            flipped = out[r, cs[0], 1] > out[r, cs[-1], 1]
        if flipped and flip_pairs:
            expected = np.array([SWAP.get(int(v), int(v)) for v in expected], np.uint8)
        np.testing.assert_array_equal(lab[clear], expected)
        checked += clear.sum()
        total += real.sum()
        seen_flip += bool(flipped)
        seen_pad += bool(padded.any())
        seen_shift += bool(abs(shift[0]) > 0)
    assert checked > 0.9 * total  # ties (e.g. exactly half-size scales) are rare overall
    # Over 24 draws each random branch was taken at least once.
    assert 0 < seen_flip < 24 and 0 < seen_pad < 24 and 0 < seen_shift < 24


def test_flip_swaps_only_listed_pairs():
    label = np.array([[14, 15, 16, 3], [17, 18, 19, 255]], np.uint8)
    image = np.zeros((2, 4, 3), np.float32)
    for k in range(8):  # find a seed that flips
        _, out = augment.random_flip(image, label, tf.constant([0, k], tf.int64), ((14, 15), (16, 17), (18, 19)))
        if not np.array_equal(out.numpy(), label):
            break
    np.testing.assert_array_equal(out.numpy(), [[3, 17, 14, 15], [255, 18, 19, 16]])


def test_base_size_scales_the_long_side():
    image = np.full((50, 100, 3), 100, np.uint8)
    label = np.zeros((50, 100), np.uint8)
    # scale_range (1, 1) with base_size 60: the image becomes 30x60, padded into a 40x80 crop.
    out, lab, valid = augment.random_scale_crop(image, label, tf.constant([1, 2], tf.int64), (40, 80),
                                                (1.0, 1.0), base_size=60)
    np.testing.assert_array_equal(valid.numpy().sum(0)[:60], np.full(60, 30))
    assert valid.numpy()[:, 60:].sum() == 0 and (lab.numpy()[~valid.numpy()] == 255).all()
