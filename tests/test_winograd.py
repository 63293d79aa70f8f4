"""Winograd F(2x2, 3x3) for wide 3x3 convs (issue 13, `ocr_tf/layers/winograd.py`): a speed change
that changes the order of the sums, so it must equal a float64 NumPy conv to float32 rounding, run
only where the rule says, and never reach an exported graph."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from ocr_tf.layers import ConvBN, conv_grad, winograd


def rel(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-12)


def pad1(x):
    """x padded by one zero row and column on each side: SAME is VALID on this."""
    return np.pad(np.asarray(x), ((0, 0), (1, 1), (1, 1), (0, 0)))


def numpy_conv3x3_valid(x, k):
    x, k = np.asarray(x, np.float64), np.asarray(k, np.float64)
    h, w = x.shape[1] - 2, x.shape[2] - 2
    return sum(np.einsum("nhwc,co->nhwo", x[:, i : i + h, j : j + w], k[i, j]) for i in range(3) for j in range(3))


@pytest.fixture
def eigen_cpu(monkeypatch):
    """The rule's machine: TensorFlow with Eigen kernels on a CPU (this box's default)."""
    monkeypatch.setattr(conv_grad, "tensorflow_uses_onednn", lambda: False)
    monkeypatch.setattr(conv_grad, "tensorflow_has_accelerator", lambda: False)


@pytest.fixture
def winograd_calls(monkeypatch):
    calls = []
    original = winograd.conv3x3

    def counted(x, kernel, *args):
        calls.append((tuple(x.shape[1:]), tuple(kernel.shape)))
        return original(x, kernel, *args)

    monkeypatch.setattr(winograd, "conv3x3", counted)
    return calls


@pytest.fixture
def kernel_gradient_calls(monkeypatch):
    calls = []
    original = winograd.kernel_gradient

    def counted(x, dy, *args):
        calls.append(tuple(x.shape[1:]))
        return original(x, dy, *args)

    monkeypatch.setattr(winograd, "kernel_gradient", counted)
    return calls


# The last shape's matmuls get zero columns (256 outputs: winograd.GEMM_PAD), cropped after.
@pytest.mark.parametrize("padding", ["VALID", "SAME"])
@pytest.mark.parametrize("shape", [(2, 12, 16, 6, 7), (1, 13, 9, 3, 5), (3, 7, 8, 4, 4), (1, 3, 3, 2, 3), (1, 6, 5, 256, 256)])
def test_conv3x3_equals_a_float64_conv(shape, padding):
    # Even, odd and 1-pixel outputs (odd sizes are padded to whole 2x2 tiles and cropped).
    n, h, w, c, o = shape
    rng = np.random.default_rng(0)
    x = rng.normal(size=(n, h + 2, w + 2, c)) if padding == "VALID" else rng.normal(size=(n, h, w, c))
    k = rng.normal(size=(3, 3, c, o))
    ours = winograd.conv3x3(tf.constant(x, tf.float32), tf.constant(k, tf.float32), padding).numpy()
    assert ours.shape == (n, h, w, o)
    reference = numpy_conv3x3_valid(x if padding == "VALID" else pad1(x), k)
    eigen = tf.nn.convolution(tf.constant(x, tf.float32), tf.constant(k, tf.float32), padding=padding).numpy()
    # Float32 rounding of a sum of 9 * C products: Eigen's direct conv measured 3e-7 here,
    # Winograd 3e-7..6e-7 (its transforms add a few roundings); an index slip would be O(1).
    assert rel(eigen, reference) < 1e-6
    assert rel(ours, reference) < 2e-6


@pytest.mark.parametrize("padding", ["VALID", "SAME"])
def test_conv3x3_in_a_graph_for_any_image_size(padding):
    # predict's graphs relax to unknown height and width after the first image size.
    rng = np.random.default_rng(6)
    k = rng.normal(size=(3, 3, 4, 5))
    fn = tf.function(lambda x, k: winograd.conv3x3(x, k, padding),
                     input_signature=[tf.TensorSpec([None, None, None, 4]), tf.TensorSpec([3, 3, 4, 5])])
    for h, w in ((10, 12), (9, 13), (1, 2)):
        x = rng.normal(size=(2, h + 2, w + 2, 4)) if padding == "VALID" else rng.normal(size=(2, h, w, 4))
        ours = fn(tf.constant(x, tf.float32), tf.constant(k, tf.float32)).numpy()
        assert ours.shape == (2, h, w, 5)
        assert rel(ours, numpy_conv3x3_valid(x if padding == "VALID" else pad1(x), k)) < 2e-6


@pytest.mark.parametrize("padding", ["VALID", "SAME"])
@pytest.mark.parametrize("shape", [(2, 12, 16, 6, 7), (1, 13, 9, 3, 5), (1, 1, 2, 2, 3), (1, 6, 5, 256, 256)])
def test_kernel_gradient_equals_a_float64_reference(shape, padding):
    n, h, w, c, o = shape
    rng = np.random.default_rng(7)
    x = rng.normal(size=(n, h + 2, w + 2, c)) if padding == "VALID" else rng.normal(size=(n, h, w, c))
    dy = rng.normal(size=(n, h, w, o))
    xp = x if padding == "VALID" else pad1(x)
    reference = np.zeros((3, 3, c, o))
    for i in range(3):
        for j in range(3):
            reference[i, j] = np.einsum("nhwc,nhwo->co", xp[:, i : i + h, j : j + w], dy)
    ours = winograd.kernel_gradient(tf.constant(x, tf.float32), tf.constant(dy, tf.float32), padding).numpy()
    assert ours.shape == (3, 3, c, o)
    assert rel(ours, reference) < 2e-6


def test_kernel_transform_is_g_g_gt():
    g_matrix = np.array([[1, 0, 0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0, 0, 1]])
    k = np.random.default_rng(1).normal(size=(3, 3, 2, 3))
    u = np.stack([t.numpy() for t in winograd.transform_kernel(tf.constant(k))])  # (16, C_in, C_out)
    expected = np.einsum("ai,ijco,bj->abco", g_matrix, k, g_matrix).reshape(16, 2, 3)
    np.testing.assert_allclose(u, expected, rtol=1e-12, atol=1e-12)


def test_wide_conv_of_a_trained_size_is_as_close_to_float64_as_eigen():
    # The widths it runs on (>= 128 channels): the same accuracy class as Eigen's conv.
    rng = np.random.default_rng(2)
    x = rng.normal(size=(1, 18, 34, 160))
    k = rng.normal(size=(3, 3, 160, 128)) / np.sqrt(9 * 160)
    reference = numpy_conv3x3_valid(x, k)
    ours = winograd.conv3x3(tf.constant(x, tf.float32), tf.constant(k, tf.float32))
    eigen = tf.nn.convolution(tf.constant(x, tf.float32), tf.constant(k, tf.float32), padding="VALID")
    assert rel(ours, reference) < 3 * max(rel(eigen, reference), 3e-7)


def compiled_calls(fn, *args):
    """How many calls in `fn`'s graph XLA must compile."""
    graph = fn.get_concrete_function(*args).graph
    return sum(op.node_def.attr["_XlaMustCompile"].b for op in graph.get_operations() if "_XlaMustCompile" in op.node_def.attr)


@pytest.mark.parametrize("width", [16, 15])  # even, and odd: padded to whole tiles inside XLA too
def test_input_transform_of_a_static_size_compiles_with_xla_bit_identical(width):
    rng = np.random.default_rng(5)
    c = winograd.XLA_MIN_CHANNELS
    x = tf.constant(rng.normal(size=(2, 6, width, c)), tf.float32)
    k = tf.constant(rng.normal(size=(3, 3, c, 8)) / np.sqrt(9 * c), tf.float32)
    compiled = tf.function(lambda x: winograd._input_tiles(x)[0])
    op_by_op = tf.function(lambda x: winograd._input_tiles_ops(x)[0])
    assert compiled_calls(compiled, x) == 1 and compiled_calls(op_by_op, x) == 0
    for a, b in zip(compiled(x), op_by_op(x)):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    assert compiled_calls(tf.function(winograd.conv3x3), x, k) == 1
    assert compiled_calls(tf.function(winograd.kernel_gradient), x, tf.zeros((2, 4, width - 2, 8))) == 1
    assert rel(winograd.conv3x3(x, k), numpy_conv3x3_valid(x.numpy(), k.numpy())) < 2e-6
    # SAME: the zero border padded inside the compiled transform, also bit-identical
    same = tf.function(lambda x: winograd._input_tiles(x, "SAME")[0])
    assert compiled_calls(same, x) == 1
    for a, b in zip(same(x), tf.function(lambda x: winograd._input_tiles_ops(x, "SAME")[0])(x)):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    assert rel(winograd.conv3x3(x, k, "SAME"), numpy_conv3x3_valid(pad1(x.numpy()), k.numpy())) < 2e-6
    # Any image size (a compile per size would stall predict) and fewer channels: op by op.
    dynamic = tf.function(winograd.conv3x3, input_signature=[tf.TensorSpec([None, None, None, c]), tf.TensorSpec(k.shape)])
    assert compiled_calls(dynamic) == 0
    assert compiled_calls(tf.function(winograd.conv3x3), x[..., : c - 1], k[:, :, : c - 1]) == 0
    winograd.XLA[0] = False  # the benchmarks' A/B switch
    try:
        assert compiled_calls(tf.function(winograd.conv3x3), x, k) == 0
    finally:
        winograd.XLA[0] = True


def test_applies_only_where_it_measured_faster():
    assert winograd.applies((3, 3, 128, 128), (16, 16), "float32")
    assert winograd.applies((3, 3, 720, 512), (64, 128), "float32")
    assert not winograd.applies((3, 3, 127, 512), (64, 128), "float32")  # too few channels in
    assert not winograd.applies((3, 3, 512, 96), (64, 128), "float32")  # ... or out
    assert not winograd.applies((3, 3, 512, 512), (15, 16), "float32")  # map below MIN_PIXELS
    assert winograd.applies((3, 3, 512, 512), (None, None), "float32")  # images of any size
    assert not winograd.applies((3, 3, 512, 512), (64, 64), "bfloat16")
    assert not winograd.applies((1, 1, 512, 512), (64, 64), "float32")
    winograd.ENABLED[0] = False  # the benchmarks' A/B switch
    try:
        assert not winograd.applies((3, 3, 720, 512), (64, 128), "float32")
    finally:
        winograd.ENABLED[0] = True


def convbn_inference(layer, x):
    fn = tf.function(lambda x: layer(x, training=False))
    ops = {op.type for op in fn.get_concrete_function(x).graph.get_operations()}
    return fn(x).numpy(), ops


@pytest.mark.parametrize("use_bias", [False, True])
def test_convbn_inference_runs_winograd_and_equals_keras(use_bias, eigen_cpu, winograd_calls):
    x = tf.constant(np.random.default_rng(3).normal(size=(2, 16, 20, 128)).astype(np.float32))
    keras.utils.set_random_seed(0)
    layer = ConvBN(130, 3, use_bias=use_bias)
    layer.build(x.shape)
    rng = np.random.default_rng(4)  # non-trivial BatchNorm statistics
    layer.bn.set_weights([rng.uniform(0.5, 2, 130), rng.normal(size=130), rng.normal(size=130), rng.uniform(0.5, 2, 130)])

    ours, ops = convbn_inference(layer, x)
    assert winograd_calls == [((16, 20, 128), (3, 3, 128, 130))]  # SAME: the input unpadded
    assert "MatMul" in ops and "Conv2D" not in ops
    conv_grad.ENABLED[0] = False
    try:
        keras_out, keras_ops = convbn_inference(layer, x)
    finally:
        conv_grad.ENABLED[0] = True
    assert "Conv2D" in keras_ops
    assert rel(ours, keras_out) < 1e-5


def test_predict_runner_keeps_winograd_for_new_image_sizes(eigen_cpu, winograd_calls):
    from ocr_tf.inference import compiled_runner

    inputs = keras.Input((None, None, 128))
    model = keras.Model(inputs, {"logits": ConvBN(128, 3)(inputs)})
    runner = compiled_runner(model)
    for h, w in ((16, 20), (17, 23), (30, 18)):  # the second size retraces with unknown sizes
        x = tf.constant(np.random.default_rng(h).normal(size=(1, h, w, 128)).astype(np.float32))
        ours = runner(x)["logits"].numpy()
        conv_grad.ENABLED[0] = False
        try:
            keras_out = model(x, training=False)["logits"].numpy()
        finally:
            conv_grad.ENABLED[0] = True
        assert rel(ours, keras_out) < 1e-5
    assert [shape[:2] for shape, _ in winograd_calls] == [(16, 20), (None, None)]


def test_narrow_convbn_keeps_keras_conv(eigen_cpu, winograd_calls):
    x = tf.zeros((1, 16, 16, 64))
    layer = ConvBN(128, 3)
    layer.build(x.shape)
    _, ops = convbn_inference(layer, x)
    assert winograd_calls == [] and "Conv2D" in ops


def test_onednn_and_accelerators_keep_keras_conv(monkeypatch, winograd_calls):
    x = tf.zeros((1, 16, 16, 128))
    layer = ConvBN(128, 3)
    layer.build(x.shape)
    for onednn, accelerator in ((True, False), (False, True)):
        monkeypatch.setattr(conv_grad, "tensorflow_uses_onednn", lambda: onednn)
        monkeypatch.setattr(conv_grad, "tensorflow_has_accelerator", lambda: accelerator)
        _, ops = convbn_inference(layer, x)
        assert "Conv2D" in ops
    assert winograd_calls == []


@pytest.mark.parametrize("shape", [(1, 92, 92, 256), (2, 64, 130, 256)])
def test_convbn_training_step_runs_winograd_with_equal_gradients(shape, eigen_cpu, winograd_calls, kernel_gradient_calls):
    # >= 256 channels and >= 8192 pixels: the forward, the input gradient and the kernel gradient
    # through Winograd tiles, equal to TensorFlow's own step to float32 rounding.
    n, h, w, c = shape
    x = tf.constant(np.random.default_rng(5).normal(size=shape).astype(np.float32))
    keras.utils.set_random_seed(0)
    layer = ConvBN(c, 3)
    layer.build(x.shape)
    weights = layer.get_weights()

    def step():
        @tf.function
        def run(x):
            with tf.GradientTape() as tape:
                tape.watch(x)
                y = layer(x, training=True)
                loss = tf.reduce_sum(y * tf.sin(y))  # a non-uniform upstream gradient
            return y, tape.gradient(loss, [x, *layer.trainable_weights])

        y, grads = run(x)
        ops = {op.type for op in run.get_concrete_function(x).graph.get_operations()}
        return y.numpy(), [g.numpy() for g in grads], ops

    y_ours, g_ours, ops_ours = step()
    # conv3x3 twice (the forward, and the input gradient with the rotated kernel), then the kernel
    # gradient; all SAME, on the unpadded input and output gradient.
    assert winograd_calls == [((h, w, c), (3, 3, c, c)), ((h, w, c), (3, 3, c, c))]
    assert kernel_gradient_calls == [(h, w, c)]
    layer.set_weights(weights)
    conv_grad.ENABLED[0] = False
    try:
        y_tf, g_tf, ops_tf = step()
    finally:
        conv_grad.ENABLED[0] = True
    assert not {"Conv2D", "Conv2DBackpropInput", "Conv2DBackpropFilter"} & ops_ours and "Conv2D" in ops_tf
    assert rel(y_ours, y_tf) < 1e-5
    assert len(g_ours) == len(g_tf) == 4  # x, kernel, gamma, beta
    for a, b in zip(g_ours, g_tf):
        assert rel(a, b) < 1e-4


@pytest.mark.parametrize("shape", [(1, 92, 92, 128), (2, 18, 22, 512)])
def test_training_keeps_keras_forward_below_256_channels_or_8192_pixels(shape, eigen_cpu, winograd_calls):
    x = tf.zeros(shape)
    layer = ConvBN(shape[-1], 3)
    layer.build(x.shape)
    with tf.GradientTape() as tape:
        y = layer(x, training=True)
    tape.gradient(y, layer.trainable_weights)
    assert winograd_calls == []


def test_exports_trace_the_standard_conv(eigen_cpu, winograd_calls):
    from ocr_tf.export import make_inference_fn

    inputs = keras.Input((32, 32, 3))
    features = ConvBN(128, 3, strides=2)(inputs)
    features = ConvBN(128, 3)(features)
    logits = keras.layers.Conv2D(4, 1)(features)
    model = keras.Model(inputs, {"logits": logits})
    infer = tf.function(make_inference_fn(model))
    ops = {op.type for op in infer.get_concrete_function(tf.TensorSpec([1, 32, 32, 3], tf.uint8)).graph.get_operations()}
    assert winograd_calls == [] and "MatMul" not in ops and "Conv2D" in ops
    model(tf.zeros((1, 32, 32, 3)))  # outside the export the same model runs Winograd
    assert len(winograd_calls) == 1
    with conv_grad.keras_conv_ops(), conv_grad.keras_conv_ops():  # nests
        pass
    assert conv_grad._KERAS_CONV_OPS[0] == 0

