"""The stride-1 3x3 and 1x1 convs with rewritten gradients (issue 13, `ocr_tf/layers/conv_grad.py`):
a speed change, so the forward must be Keras' conv bit for bit and the gradients TensorFlow's and a
float64 NumPy reference's; the rule that picks them must pick them only where they measured faster."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from ocr_tf.layers import ConvBN, conv_grad
from ocr_tf.layers.conv_grad import conv1x1_valid, conv3x3, fast_gradients_apply


def rel(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-12)


def numpy_conv3x3_and_grads(x, k, dy):
    """Float64 reference: y = valid correlation, dL/dx and dL/dk for upstream gradient dy."""
    x, k, dy = (np.asarray(v, np.float64) for v in (x, k, dy))
    h, w = x.shape[1] - 2, x.shape[2] - 2
    y = sum(np.einsum("nhwc,co->nhwo", x[:, i : i + h, j : j + w], k[i, j]) for i in range(3) for j in range(3))
    dx = np.zeros_like(x)
    dk = np.zeros_like(k)
    for i in range(3):
        for j in range(3):
            dx[:, i : i + h, j : j + w] += np.einsum("nhwo,co->nhwc", dy, k[i, j])
            dk[i, j] = np.einsum("nhwc,nhwo->co", x[:, i : i + h, j : j + w], dy)
    return y, dx, dk


def ours_and_tensorflows(conv, x, k, dy, padding="VALID"):
    """(output, dL/dx, dL/dk) of `conv` and of TensorFlow's own conv with `padding`, for upstream gradient dy."""
    with tf.GradientTape(persistent=True) as tape:
        tape.watch([x, k])
        outputs = [conv(x, k), tf.nn.convolution(x, k, padding=padding)]
    return [(y, *tape.gradient(y, [x, k], output_gradients=dy)) for y in outputs]


@pytest.mark.parametrize("padding", ["VALID", "SAME"])
def test_conv3x3_forward_is_keras_and_gradients_match_numpy_and_tensorflow(padding):
    rng = np.random.default_rng(0)
    x = tf.constant(rng.normal(size=(2, 13, 17, 5)).astype(np.float32))
    k = tf.constant(rng.normal(size=(3, 3, 5, 7)).astype(np.float32))
    out = (11, 15) if padding == "VALID" else (13, 17)
    dy = tf.constant(rng.normal(size=(2, *out, 7)).astype(np.float32))

    layer = keras.layers.Conv2D(7, 3, padding=padding.lower(), use_bias=False)
    layer.build(x.shape)
    layer.kernel.assign(k)

    conv = lambda x, k: conv3x3(x, k, padding)  # noqa: E731
    (ours, ours_dx, ours_dk), (theirs, tf_dx, tf_dk) = ours_and_tensorflows(conv, x, k, dy, padding)

    np.testing.assert_array_equal(ours.numpy(), layer(x).numpy())  # the same forward op
    # SAME is VALID on x padded by one; its input gradient is the padded one's without the border.
    xp = np.pad(x.numpy(), ((0, 0), (1, 1), (1, 1), (0, 0))) if padding == "SAME" else x.numpy()
    y64, dx64, dk64 = numpy_conv3x3_and_grads(xp, k, dy)
    dx64 = dx64[:, 1:-1, 1:-1] if padding == "SAME" else dx64
    assert rel(ours, y64) < 1e-6
    assert rel(ours_dx, dx64) < 1e-6 and rel(ours_dk, dk64) < 1e-6
    assert rel(ours_dx, tf_dx) < 1e-6 and rel(ours_dk, tf_dk) < 1e-6


def test_conv1x1_valid_forward_is_keras_and_gradients_match_numpy_and_tensorflow():
    rng = np.random.default_rng(5)
    x = tf.constant(rng.normal(size=(2, 6, 9, 5)).astype(np.float32))
    k = tf.constant(rng.normal(size=(1, 1, 5, 3)).astype(np.float32))
    dy = tf.constant(rng.normal(size=(2, 6, 9, 3)).astype(np.float32))
    (ours, ours_dx, ours_dk), (theirs, tf_dx, tf_dk) = ours_and_tensorflows(conv1x1_valid, x, k, dy)
    np.testing.assert_array_equal(ours.numpy(), theirs.numpy())
    x64, k64, dy64 = (np.asarray(v, np.float64) for v in (x, k, dy))
    assert rel(ours_dx, np.einsum("nhwo,co->nhwc", dy64, k64[0, 0])) < 1e-6
    assert rel(ours_dk[0, 0], np.einsum("nhwc,nhwo->co", x64, dy64)) < 1e-6
    assert rel(ours_dx, tf_dx) < 1e-6 and rel(ours_dk, tf_dk) < 1e-6


def built_conv(kernel_size=3, strides=1, dilation_rate=1, shape=(1, 98, 98, 4), padding="valid"):
    conv = keras.layers.Conv2D(4, kernel_size, strides=strides, dilation_rate=dilation_rate, padding=padding)
    conv.build(shape)
    return conv


def test_rule_takes_stride1_1x1_convs_and_3x3_convs_on_large_maps_in_training(monkeypatch):
    monkeypatch.setattr(conv_grad, "tensorflow_uses_onednn", lambda: False)
    big = (1, 98, 98, 4)  # 96 x 96 = 9216 output pixels >= MIN_PIXELS
    assert fast_gradients_apply(built_conv(), big, training=True)
    assert not fast_gradients_apply(built_conv(), big, training=False)  # inference: Keras' conv
    assert not fast_gradients_apply(built_conv(), big, training=None)
    assert not fast_gradients_apply(built_conv(strides=2), big, training=True)
    assert not fast_gradients_apply(built_conv(dilation_rate=2), big, training=True)
    assert fast_gradients_apply(built_conv(kernel_size=1), (1, 8, 8, 4), training=True)  # 1x1: any size
    assert not fast_gradients_apply(built_conv(kernel_size=1, strides=2), big, training=True)
    assert not fast_gradients_apply(built_conv(kernel_size=5), big, training=True)
    assert not fast_gradients_apply(built_conv(), (1, 90, 90, 4), training=True)  # 88 x 88 < 8192
    assert not fast_gradients_apply(built_conv(), (1, None, 98, 4), training=True)  # unknown size
    same = built_conv(padding="same")  # the output is the input's size
    assert fast_gradients_apply(same, (1, 96, 96, 4), training=True)
    assert not fast_gradients_apply(same, (1, 90, 90, 4), training=True)
    monkeypatch.setattr(conv_grad, "tensorflow_has_accelerator", lambda: True)
    assert not fast_gradients_apply(built_conv(), big, training=True)  # cuDNN's kernels: not measured
    monkeypatch.setattr(conv_grad, "tensorflow_has_accelerator", lambda: False)
    monkeypatch.setattr(conv_grad, "tensorflow_uses_onednn", lambda: True)
    assert not fast_gradients_apply(built_conv(), big, training=True)  # oneDNN's kernels are fast


def test_onednn_probe_answers_a_bool():
    # The private TensorFlow module it reads must still exist: if it moved, the probe would
    # silently say "oneDNN" and the faster gradients would never run.
    from tensorflow.python.util import _pywrap_util_port

    assert isinstance(_pywrap_util_port.IsMklEnabled(), bool)
    assert conv_grad.tensorflow_uses_onednn() == _pywrap_util_port.IsMklEnabled()


def convbn_step(layer, x):
    """Outputs and gradients of every trainable weight and of the input, as a graph (as fit runs),
    and the op types in that graph."""

    @tf.function(autograph=False)
    def step(x):
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = layer(x, training=True)
            loss = tf.reduce_sum(y * tf.sin(y))
        return y, tape.gradient(loss, [x] + layer.trainable_weights)

    y, grads = step(x)
    ops = {op.type for op in step.get_concrete_function(x).graph.get_operations()}
    return y.numpy(), [g.numpy() for g in grads], ops


@pytest.mark.parametrize("kernel_size,use_bias", [(3, False), (3, True), (1, False)])
def test_convbn_training_step_equals_tensorflow_gradients(kernel_size, use_bias, monkeypatch):
    monkeypatch.setattr(conv_grad, "tensorflow_uses_onednn", lambda: False)
    x = tf.constant(np.random.default_rng(1).normal(size=(2, 96, 96, 6)).astype(np.float32))
    keras.utils.set_random_seed(0)
    layer = ConvBN(5, kernel_size, use_bias=use_bias)
    layer.build(x.shape)
    weights = layer.get_weights()

    y_fast, g_fast, ops_fast = convbn_step(layer, x)
    layer.set_weights(weights)  # the step moved BN's statistics
    conv_grad.ENABLED[0] = False
    try:
        y_tf, g_tf, ops_tf = convbn_step(layer, x)
    finally:
        conv_grad.ENABLED[0] = True

    assert "Conv2DBackpropFilter" in ops_tf and "Conv2DBackpropInput" in ops_tf
    assert "Conv2DBackpropFilter" not in ops_fast and "Conv2DBackpropInput" not in ops_fast
    np.testing.assert_array_equal(y_fast, y_tf)
    assert len(g_fast) == len(g_tf) == (5 if use_bias else 4)  # x, kernel, (bias), gamma, beta
    for a, b in zip(g_fast, g_tf):
        assert rel(a, b) < 1e-5


def test_convbn_mixed_bfloat16_step_keeps_dtypes(monkeypatch):
    monkeypatch.setattr(conv_grad, "tensorflow_uses_onednn", lambda: False)
    x = tf.constant(np.random.default_rng(2).normal(size=(1, 96, 96, 4)).astype(np.float32))
    keras.mixed_precision.set_dtype_policy("mixed_bfloat16")  # as train.py sets it: every sub-layer
    try:
        keras.utils.set_random_seed(0)
        layer = ConvBN(4, 3)
        layer.build(x.shape)
        assert layer.conv.compute_dtype == "bfloat16"
        weights = layer.get_weights()
        y_fast, g_fast, ops_fast = convbn_step(layer, x)
        layer.set_weights(weights)
        conv_grad.ENABLED[0] = False
        y_tf, g_tf, _ = convbn_step(layer, x)
    finally:
        conv_grad.ENABLED[0] = True
        keras.mixed_precision.set_dtype_policy("float32")
    assert "Conv2DBackpropFilter" not in ops_fast
    assert y_fast.dtype == y_tf.dtype and [g.dtype for g in g_fast] == [g.dtype for g in g_tf]
    np.testing.assert_array_equal(y_fast, y_tf)  # the forward is Keras' bfloat16 conv
    # (the gradients' accuracy in bfloat16: the next test)


@pytest.mark.parametrize("shape", [(1, 98, 98, 4, 4), (2, 34, 50, 16, 8)])
def test_bfloat16_gradients_are_within_bfloat16_rounding(shape):
    # bfloat16 keeps 8 bits of mantissa (a rounding is up to 2**-8 = 3.9e-3 relative). Against a
    # float64 reference on the same bfloat16 inputs our gradients are within ~1.4 roundings
    # (measured 2.7e-3..5.5e-3); TensorFlow's own bfloat16 backprop kernels measured 8e-3..5e-2.
    n, h, w, c, o = shape
    rng = np.random.default_rng(4)
    x = tf.cast(rng.normal(size=(n, h, w, c)), tf.bfloat16)
    k = tf.cast(rng.normal(size=(3, 3, c, o)) * 0.1, tf.bfloat16)
    dy = tf.cast(rng.normal(size=(n, h - 2, w - 2, o)), tf.bfloat16)
    with tf.GradientTape() as tape:
        tape.watch([x, k])
        y = conv3x3(x, k)
    dx, dk = tape.gradient(y, [x, k], output_gradients=dy)
    assert dx.dtype == dk.dtype == tf.bfloat16
    as64 = [tf.cast(v, tf.float64).numpy() for v in (x, k, dy, dx, dk)]
    _, dx64, dk64 = numpy_conv3x3_and_grads(*as64[:3])
    assert rel(as64[3], dx64) < 1e-2 and rel(as64[4], dk64) < 1e-2


def test_whole_network_gradients_equal_tensorflow_gradients(monkeypatch):
    """Every stride-1 ConvBN of a tiny HRNet-OCR (stem, bottlenecks, branches, fuse layers, the
    OCR head's 1x1 and 3x3 convs) through the rewritten gradients (MIN_PIXELS lowered so the small
    test image takes them): every weight's gradient of the training loss equals TensorFlow's own."""
    from ocr_tf.fold_bn import conv_bn_layers
    from ocr_tf.losses import SegmentationLoss
    from ocr_tf.models import build_model

    monkeypatch.setattr(conv_grad, "tensorflow_uses_onednn", lambda: False)
    monkeypatch.setattr(conv_grad, "MIN_PIXELS", 1)
    rng = np.random.default_rng(3)
    x = tf.constant(rng.normal(size=(2, 64, 96, 3)).astype(np.float32))
    y = tf.constant(rng.integers(0, 5, size=(2, 64, 96)).astype(np.int32))
    loss_fn = SegmentationLoss(5, 255, aux_weight=0.4)

    def grads():
        # A fresh network each time from one seed: same weights and the same dropout mask (OCR's
        # dropout draws from a seed state that every call advances).
        keras.utils.set_random_seed(0)
        net = build_model("hrnet_tiny_ocr", 5)

        @tf.function(autograph=False)
        def step(x, y):
            with tf.GradientTape() as tape:
                loss = loss_fn(y, net(x, training=True))["loss"]
            return loss, tape.gradient(loss, net.trainable_weights)

        loss, g = step(x, y)
        ops = {op.type for op in step.get_concrete_function(x, y).graph.get_operations()}
        return net, float(loss), [v.numpy() for v in g], ops

    net, loss_fast, g_fast, ops_fast = grads()
    conv_grad.ENABLED[0] = False
    try:
        _, loss_tf, g_tf, _ = grads()
    finally:
        conv_grad.ENABLED[0] = True
    convbns = [layer for layer in conv_bn_layers(net) if layer.strides == 1]
    assert sum(layer.kernel_size == 3 for layer in convbns) > 10 and sum(layer.kernel_size == 1 for layer in convbns) > 5
    assert "Conv2DBackpropFilter" in ops_fast  # stride-2 convs and plain Conv2D layers keep TF's gradients
    assert loss_fast == loss_tf  # the forward is unchanged (no conv of >= 256 channels: no Winograd)
    worst = max(rel(a, b) for a, b in zip(g_fast, g_tf))
    assert worst < 1e-4, worst
