"""Whole / sliding-window / multi-scale / flip inference against direct model calls."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from ocr_tf.inference import predict_labels, predict_logits, window_positions
from ocr_tf.layers import OCRHead, resize_bilinear

K = 4


def tiny_ocr_model(k=K, seed=0):
    """A strided conv + the OCR head: non-local (every output pixel sees the whole input)."""
    keras.utils.set_random_seed(seed)
    inp = keras.Input((None, None, 3))
    feats = keras.layers.Conv2D(8, 3, strides=2, padding="same", activation="relu")(inp)
    out = OCRHead(k, mid_channels=8, key_channels=4, name="head")(feats)
    return keras.Model(inp, out)


def pointwise_model(k=K, seed=1):
    """1x1 convs only: each pixel's logits depend on that pixel alone (translation-, crop- and
    flip-equivariant)."""
    keras.utils.set_random_seed(seed)
    inp = keras.Input((None, None, 3))
    x = keras.layers.Conv2D(8, 1, activation="relu")(inp)
    return keras.Model(inp, {"logits": keras.layers.Conv2D(k, 1)(x)})


def pooled_model(k=K, seed=2):
    """1x1 conv, 2x2 average pool, then align_corners upsampling inside predict_logits: flip-
    equivariant on even widths, with logits at half resolution like the real models."""
    keras.utils.set_random_seed(seed)
    inp = keras.Input((None, None, 3))
    x = keras.layers.Conv2D(k, 1)(inp)
    return keras.Model(inp, {"logits": keras.layers.AveragePooling2D(2)(x)})


def image(shape=(2, 12, 16, 3), seed=0):
    return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


def resized_logits(model, x, size):
    return resize_bilinear(model(x)["logits"], size, align_corners=True).numpy()


def test_window_positions_end_at_the_border():
    assert window_positions(10, 4, 3) == [0, 3, 6]
    assert window_positions(10, 4, 4) == [0, 4, 6]  # last one moved back to end at 10
    assert window_positions(3, 4, 2) == [0]
    assert window_positions(8, 8, 5) == [0]


def test_whole_single_scale_is_exp_of_resized_logits():
    model, x = tiny_ocr_model(), image()
    out = predict_logits(model, x, num_classes=K).numpy()
    np.testing.assert_allclose(out, np.exp(resized_logits(model, x, (12, 16))), rtol=1e-5)
    assert out.shape == (2, 12, 16, K)
    single = predict_logits(model, x[0], num_classes=K, scales=[1.0]).numpy()  # 3-D in, 3-D out
    np.testing.assert_allclose(single, out[0], rtol=1e-5)


def test_slide_with_crop_equal_to_image_equals_whole():
    model, x = tiny_ocr_model(), image()
    whole = predict_logits(model, x, num_classes=K, mode="whole")
    slide = predict_logits(model, x, num_classes=K, mode="slide", crop_size=(12, 16), stride=5)
    np.testing.assert_allclose(slide.numpy(), whole.numpy(), rtol=1e-5)


@pytest.mark.parametrize("crop,stride", [((5, 7), (3, 4)), ((8, 20), None), ((16, 16), (4, 4))])
def test_overlapping_and_padded_windows_of_a_pointwise_model_equal_whole(crop, stride):
    # Overlaps are averaged and padding is cut off, so a model whose pixels are independent
    # gives exactly the whole-image result; a wrong offset, count or crop would not.
    model, x = pointwise_model(), image()
    whole = predict_logits(model, x, num_classes=K)
    slide = predict_logits(model, x, num_classes=K, mode="slide", crop_size=crop, stride=stride)
    np.testing.assert_allclose(slide.numpy(), whole.numpy(), rtol=1e-5)


def test_slide_averages_overlapping_windows_of_a_non_local_model():
    model, x = tiny_ocr_model(), image((1, 8, 10, 3))
    out = predict_logits(model, x, num_classes=K, mode="slide", crop_size=(8, 6), stride=(8, 4)).numpy()
    left = np.exp(resized_logits(model, x[:, :, 0:6], (8, 6)))  # windows at columns 0 and 4
    right = np.exp(resized_logits(model, x[:, :, 4:10], (8, 6)))
    expected = np.zeros_like(out)
    expected[:, :, 0:4] = left[:, :, 0:4]
    expected[:, :, 4:6] = 0.5 * (left[:, :, 4:6] + right[:, :, 0:2])
    expected[:, :, 6:10] = right[:, :, 2:6]
    np.testing.assert_allclose(out, expected, rtol=1e-5)


def test_flip_of_a_flip_equivariant_model_changes_nothing():
    model, x = pooled_model(), image()
    plain = predict_logits(model, x, num_classes=K)
    flipped = predict_logits(model, x, num_classes=K, flip=True)
    np.testing.assert_allclose(flipped.numpy(), plain.numpy(), rtol=1e-5)


def test_flip_averages_logits_and_swaps_pairs():
    model, x = tiny_ocr_model(), image()
    out = predict_logits(model, x, num_classes=K, flip=True, flip_pairs=[(1, 3)]).numpy()
    direct = resized_logits(model, x, (12, 16))
    mirrored = resized_logits(model, x[:, :, ::-1], (12, 16))[:, :, ::-1][..., [0, 3, 2, 1]]
    np.testing.assert_allclose(out, np.exp(0.5 * (direct + mirrored)), rtol=1e-5)
    assert not np.allclose(direct, mirrored, rtol=1e-3)  # the model is not flip-equivariant


def test_multi_scale_sums_exp_scores_resized_to_the_image():
    model, x = tiny_ocr_model(), image()
    one = predict_logits(model, x, num_classes=K, scales=[1.0])
    np.testing.assert_allclose(one.numpy(), predict_logits(model, x, num_classes=K).numpy(), rtol=1e-6)
    out = predict_logits(model, x, num_classes=K, scales=[0.5, 1.0]).numpy()
    half = resize_bilinear(x, (6, 8), align_corners=False)  # cv2.INTER_LINEAR-style image resize
    half_scores = np.exp(resized_logits(model, half, (6, 8)))
    expected = resize_bilinear(half_scores, (12, 16), align_corners=True).numpy() + np.exp(
        resized_logits(model, x, (12, 16))
    )
    np.testing.assert_allclose(out, expected, rtol=1e-5)


def test_softmax_merge_and_labels():
    model, x = tiny_ocr_model(), image()
    probs = predict_logits(model, x, num_classes=K, scales=[0.75, 1.25], merge="softmax").numpy()
    np.testing.assert_allclose(probs.sum(-1), 2.0, rtol=1e-5)  # two scales of probabilities
    labels = predict_labels(model, x, num_classes=K).numpy()
    np.testing.assert_array_equal(labels, resized_logits(model, x, (12, 16)).argmax(-1))


def test_bad_arguments_are_named():
    model, x = tiny_ocr_model(), image()
    with pytest.raises(ValueError, match="crop_size"):
        predict_logits(model, x, num_classes=K, mode="slide")
    with pytest.raises(ValueError, match="num_classes is 5"):
        predict_logits(model, x, num_classes=5)
    with pytest.raises(ValueError, match=r"flip pair \(1, 9\)"):
        predict_logits(model, x, num_classes=K, flip=True, flip_pairs=[(1, 9)])
    with pytest.raises(ValueError, match="mode must be one of"):
        predict_logits(model, x, num_classes=K, mode="tiles")
