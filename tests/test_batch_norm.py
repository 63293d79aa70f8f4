"""BatchNorm on TensorFlow's fused kernel (issue 13): a speed change, so it is checked against
Keras' own code path and a float64 NumPy reference (PyTorch's BatchNorm2d semantics)."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from ocr_tf.layers import ConvBN, batch_norm
from ocr_tf.layers.batch_norm import FusedBatchNormalization

EPS, MOMENTUM = 1e-5, 0.9


@pytest.fixture
def keras_code_path():
    """Run Keras' own BatchNormalization code inside the test."""
    batch_norm.USE_FUSED[0] = False
    yield
    batch_norm.USE_FUSED[0] = True


def rel(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-12)


def make_bn(x_shape, seed=0):
    rng = np.random.default_rng(seed)
    bn = FusedBatchNormalization(epsilon=EPS, momentum=MOMENTUM)
    bn.build(x_shape)
    c = x_shape[-1]
    bn.set_weights([rng.uniform(0.5, 2, c), rng.normal(size=c), rng.normal(size=c), rng.uniform(0.5, 3, c)])
    return bn


def run_training_step(bn, x):
    x = tf.constant(x)
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = bn(x, training=True)
        loss = tf.reduce_sum(y * tf.sin(y))  # a non-trivial upstream gradient
    grads = tape.gradient(loss, [x, bn.gamma, bn.beta])
    return y.numpy(), [g.numpy() for g in grads]


def test_fused_training_step_matches_numpy_and_keras(request):
    x = np.random.default_rng(1).normal(2.0, 3.0, size=(2, 9, 11, 5)).astype(np.float32)
    bn = make_bn(x.shape)
    gamma, beta, mean0, var0 = [w.astype(np.float64) for w in bn.get_weights()]
    y, grads = run_training_step(bn, x)

    # Normalise with the biased batch variance and move the statistics with it, as Keras does on
    # every backend (the fused op's unbiased variance is scaled back).
    x64 = x.astype(np.float64)
    mu, var = x64.mean((0, 1, 2)), x64.var((0, 1, 2))
    assert rel(y, (x64 - mu) / np.sqrt(var + EPS) * gamma + beta) < 1e-5
    assert rel(bn.moving_mean.numpy(), MOMENTUM * mean0 + (1 - MOMENTUM) * mu) < 1e-6
    assert rel(bn.moving_variance.numpy(), MOMENTUM * var0 + (1 - MOMENTUM) * var) < 1e-6

    request.getfixturevalue("keras_code_path")
    reference = make_bn(x.shape)
    y_keras, grads_keras = run_training_step(reference, x)
    assert rel(bn.moving_variance.numpy(), reference.moving_variance.numpy()) < 1e-6
    assert rel(y, y_keras) < 1e-5
    for got, want in zip(grads, grads_keras):
        assert rel(got, want) < 1e-5


def test_fused_inference_uses_the_moving_statistics():
    x = np.random.default_rng(2).normal(size=(3, 4, 6, 7)).astype(np.float32)
    bn = make_bn(x.shape, seed=3)
    gamma, beta, mean, var = [w.astype(np.float64) for w in bn.get_weights()]
    y = bn(tf.constant(x), training=False).numpy()
    assert rel(y, (x - mean) / np.sqrt(var + EPS) * gamma + beta) < 1e-5
    np.testing.assert_array_equal(bn.moving_mean.numpy(), mean.astype(np.float32))  # not moved


def test_fused_takes_bfloat16_activations_and_returns_bfloat16():
    x = np.random.default_rng(4).normal(size=(2, 5, 5, 4)).astype(np.float32)
    bn = FusedBatchNormalization(epsilon=EPS, dtype="mixed_bfloat16")
    y16 = bn(tf.cast(x, tf.bfloat16), training=True)
    assert y16.dtype == tf.bfloat16
    x64 = x.astype(np.float64)
    want = (x64 - x64.mean((0, 1, 2))) / np.sqrt(x64.var((0, 1, 2)) + EPS)
    assert np.max(np.abs(tf.cast(y16, tf.float32).numpy() - want)) < 0.05  # bfloat16 has 8 bits of mantissa
    assert bn.moving_mean.dtype == "float32"


def test_synchronized_and_frozen_batch_norm_keep_keras_semantics():
    x = np.random.default_rng(5).normal(size=(2, 4, 4, 3)).astype(np.float32)
    frozen = make_bn(x.shape)
    frozen.trainable = False  # fine-tuning with frozen statistics: moving stats even in training
    gamma, beta, mean, var = [w.astype(np.float64) for w in frozen.get_weights()]
    y = frozen(tf.constant(x), training=True).numpy()
    assert rel(y, (x - mean) / np.sqrt(var + EPS) * gamma + beta) < 1e-5
    assert not batch_norm._fused_applies(FusedBatchNormalization(synchronized=True), tf.zeros((1, 2, 2, 3)), None, True)
    assert batch_norm._fused_applies(FusedBatchNormalization(), tf.zeros((1, 2, 2, 3)), None, True)
    assert not batch_norm._fused_applies(FusedBatchNormalization(), tf.zeros((1, 2, 2, 3)), None, False)


def test_config_round_trip_is_the_keras_layer():
    bn = FusedBatchNormalization(epsilon=EPS, momentum=MOMENTUM, name="bn")
    clone = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(bn))
    assert type(clone) is FusedBatchNormalization and clone.epsilon == EPS and clone.momentum == MOMENTUM
    assert isinstance(clone, keras.layers.BatchNormalization)  # what the converter and fold_bn look for


def test_convbn_uses_the_fused_kernel_and_matches_keras_in_both_modes(request):
    rng = np.random.default_rng(6)
    x = rng.normal(size=(2, 13, 10, 6)).astype(np.float32)
    block = ConvBN(8, kernel_size=3, strides=2)
    block.build(x.shape)
    block.bn.set_weights([rng.uniform(0.5, 2, 8), rng.normal(size=8), rng.normal(size=8), rng.uniform(0.2, 3, 8)])
    weights = block.get_weights()
    graph = tf.function(lambda t: block(t, training=True)).get_concrete_function(tf.TensorSpec(x.shape))
    assert "FusedBatchNormV3" in {op.type for op in graph.graph.get_operations()}
    inferred = block(tf.constant(x), training=False).numpy()
    trained = block(tf.constant(x), training=True).numpy()

    request.getfixturevalue("keras_code_path")
    reference = ConvBN.from_config(block.get_config())
    reference.build(x.shape)
    reference.set_weights(weights)
    assert rel(inferred, reference(tf.constant(x), training=False)) < 1e-5
    assert rel(trained, reference(tf.constant(x), training=True)) < 1e-5
    assert rel(inferred, trained) > 1e-2  # the two modes differ: the checks above could not pass by accident
