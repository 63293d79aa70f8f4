"""Shared blocks: PyTorch-compatible bilinear resize and symmetric padding."""

import numpy as np
import pytest

import keras
import tensorflow as tf

import ocr_reference as ref
from ocr_tf.layers import ConvBN, ResizeTo, resize_bilinear


@pytest.mark.parametrize("align_corners", [True, False])
@pytest.mark.parametrize("src,dst", [((5, 7), (17, 23)), ((16, 24), (64, 96)), ((33, 21), (10, 9)), ((4, 4), (1, 1)), ((9, 13), (9, 13))])
def test_resize_matches_pytorch_semantics(align_corners, src, dst):
    x = np.random.default_rng(0).normal(size=(2, *src, 3))
    got = resize_bilinear(tf.constant(x, tf.float32), dst, align_corners).numpy()
    want = ref.resize_bilinear(x, dst, align_corners)
    assert got.shape == (2, *dst, 3)
    assert np.max(np.abs(got - want)) < 1e-5


def test_align_corners_true_keeps_the_corner_pixels():
    x = np.random.default_rng(1).normal(size=(1, 5, 6, 2)).astype(np.float32)
    y = resize_bilinear(x, (13, 21), True).numpy()
    for i, j in [(0, 0), (0, -1), (-1, 0), (-1, -1)]:
        np.testing.assert_allclose(y[0, i, j], x[0, i, j], rtol=1e-6)
    # align_corners=False samples at half-pixel centres: the same corners (PyTorch clamps), other
    # positions in between.
    z = resize_bilinear(x, (13, 21), False).numpy()
    assert np.max(np.abs(z - y)) > 0.05


def test_resize_keeps_dtype_under_float16():
    x = tf.ones((1, 4, 4, 2), tf.float16)
    assert resize_bilinear(x, (8, 8), True).dtype == tf.float16
    assert resize_bilinear(x, (8, 8), False).dtype == tf.float16


def test_resize_to_layer_follows_the_reference_size_and_round_trips(tmp_path):
    small = keras.Input((None, None, 3))
    big = keras.Input((None, None, 1))
    model = keras.Model([small, big], ResizeTo(align_corners=True, name="up")(small, big))
    x = np.random.default_rng(2).normal(size=(1, 4, 5, 3)).astype(np.float32)
    out = model.predict([x, np.zeros((1, 11, 7, 1), np.float32)], verbose=0)
    np.testing.assert_allclose(out, ref.resize_bilinear(x.astype(np.float64), (11, 7), True), atol=1e-5)
    model.save(tmp_path / "m.keras")
    loaded = keras.models.load_model(tmp_path / "m.keras")
    assert loaded.get_layer("up").align_corners is True


@pytest.mark.parametrize("size", [(8, 10), (9, 11)])
def test_stride2_conv_pads_symmetrically_like_pytorch(size):
    layer = ConvBN(4, 3, strides=2, activation=None)
    x = np.random.default_rng(3).normal(size=(1, *size, 3)).astype(np.float32)
    y = layer(x, training=False).numpy()
    kernel = layer.conv.kernel.numpy().astype(np.float64)
    want = ref.conv(x.astype(np.float64), kernel, stride=2, pad=1) / np.sqrt(1 + 1e-5)  # fresh BN: mean 0, var 1
    assert y.shape == want.shape == (1, (size[0] + 1) // 2, (size[1] + 1) // 2, 4)
    np.testing.assert_allclose(y, want, atol=1e-5)
    # Keras 'same' would pad only bottom/right on even sizes and shift every output.
    same = tf.nn.conv2d(x, kernel.astype(np.float32), 2, "SAME").numpy() / np.sqrt(1 + 1e-5)
    if size[0] % 2 == 0:
        assert not np.allclose(same, want, atol=1e-3)


@pytest.mark.parametrize("dilation", [1, 2])
def test_stride1_conv_pads_inside_the_conv_like_pytorch(dilation):
    # PyTorch's padding=d on each side is Keras' 'same' at stride 1: no ZeroPadding2D, no padded
    # copy; the output equals the float64 conv of the explicitly padded input.
    layer = ConvBN(4, 3, dilation_rate=dilation, activation=None)
    x = np.random.default_rng(4).normal(size=(2, 9, 8, 3)).astype(np.float32)
    y = layer(x, training=False).numpy()
    assert layer.pad is None and layer.conv.padding == "same"
    kernel = layer.conv.kernel.numpy().astype(np.float64)
    if dilation > 1:  # a dilated 3x3 kernel is a 5x5 one with zero taps between
        kernel = np.zeros((5, 5, 3, 4))
        kernel[::2, ::2] = layer.conv.kernel.numpy()
    want = ref.conv(x.astype(np.float64), kernel, stride=1, pad=dilation) / np.sqrt(1 + 1e-5)  # fresh BN
    assert y.shape == want.shape == (2, 9, 8, 4)
    np.testing.assert_allclose(y, want, atol=1e-5)
    assert ConvBN(4, 3, strides=2).pad is not None and ConvBN(4, 1).pad is None


def test_dilated_conv_keeps_size_and_bn_defaults_match_pytorch():
    layer = ConvBN(6, 3, dilation_rate=2, synchronized=True)
    y = layer(np.zeros((2, 7, 9, 5), np.float32))
    assert y.shape == (2, 7, 9, 6)
    assert layer.bn.epsilon == 1e-5 and layer.bn.momentum == 0.9 and layer.bn.synchronized


def test_tensorflow_resize_converts_to_the_tflite_builtin_without_a_deprecation_warning(tmp_path, caplog):
    """On TensorFlow the align_corners=True resize is the raw ResizeBilinear op: TFLite's builtin
    RESIZE_BILINEAR (align_corners kept, PyTorch's values), and no 'resize_bilinear is deprecated'
    warning from the tf.compat.v1 wrapper."""
    from ai_edge_litert.interpreter import Interpreter

    from ocr_tf.tflite_utils import check_builtin_only

    small, big = keras.Input((8, 10, 3), batch_size=1), keras.Input((29, 37, 1), batch_size=1)
    model = keras.Model([small, big], ResizeTo(align_corners=True)(small, big))
    with caplog.at_level("WARNING"):
        flatbuffer = tf.lite.TFLiteConverter.from_keras_model(model).convert()
    assert "deprecated" not in caplog.text
    path = tmp_path / "resize.tflite"
    path.write_bytes(flatbuffer)
    assert check_builtin_only(str(path)) == ["RESIZE_BILINEAR"]
    interpreter = Interpreter(str(path))
    interpreter.allocate_tensors()
    x = np.random.default_rng(4).normal(size=(1, 8, 10, 3)).astype(np.float32)
    for detail in interpreter.get_input_details():
        interpreter.set_tensor(detail["index"], x if detail["shape"][-1] == 3 else np.zeros((1, 29, 37, 1), np.float32))
    interpreter.invoke()
    got = interpreter.get_tensor(interpreter.get_output_details()[0]["index"])
    np.testing.assert_allclose(got, ref.resize_bilinear(x.astype(np.float64), (29, 37), True), atol=1e-5)
