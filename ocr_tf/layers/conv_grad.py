"""A 3x3 stride-1 convolution whose gradients avoid TensorFlow's slow Eigen backprop kernels.

On CPUs where TensorFlow runs convolutions with Eigen (oneDNN off: TensorFlow's default on x86
CPUs without AVX512-VNNI / bf16 / AMX, e.g. the AMD AVX2 box of BENCHMARKS.md), its
`Conv2DBackpropInput` and `Conv2DBackpropFilter` kernels run a 3x3 conv's gradients at a third to
half the speed of its forward once a feature map has more than ~8k pixels: the high-resolution
branches of HRNet (48-64 channels at 1/4 scale) and the 720 -> 512 head conv. The same two
gradients written with faster kernels:

* input gradient: the forward conv of the output gradient with the kernel rotated by 180 degrees
  and its in/out channels swapped ("full" padding), which Eigen's forward kernel runs 1.2-3x
  faster than its backprop-input kernel;
* kernel gradient: for each of the 9 taps (i, j), one matmul of the shifted input window and the
  output gradient over all pixels (K = N*H*W, a shape GEMM runs near peak), 1.1-2x faster than
  Eigen's backprop-filter kernel.

Measured per shape in BENCHMARKS.md (issue 13): a W48 training step at 512 x 1024 on one AMD
AVX2 core takes 0.81x the time. Below 8192 output pixels per image (a tie there), where TensorFlow
uses oneDNN (its backprop kernels are fast, and the rotated forward conv measured 3x slower), and
on GPUs and TPUs, TensorFlow's own gradients stay. The forward is Keras' own conv op, so outputs
are bit-identical; the gradients are the same sums in another order (float32 rounding, tested
against TensorFlow's kernels and a float64 NumPy reference; in bfloat16 they measured closer to
the float64 reference than TensorFlow's own bfloat16 kernels).

Written by hand because no library offers these gradient formulations as a switch; TensorFlow only.
"""

import functools

import keras

# Set to False (a benchmark's A/B switch, tests) to keep TensorFlow's gradients everywhere.
ENABLED = [True]
# Output pixels per image from which the rewritten gradients measured faster (BENCHMARKS.md).
MIN_PIXELS = 8192


@functools.lru_cache(maxsize=None)
def tensorflow_uses_onednn():
    """Whether TensorFlow's oneDNN kernels are on in this process (TF_ENABLE_ONEDNN_OPTS, or
    TensorFlow's default for this CPU). TensorFlow only answers through a private module; if it
    moves, assume oneDNN (the safe answer: TensorFlow's own gradients are kept)."""
    try:
        from tensorflow.python.util import _pywrap_util_port  # private: the runtime's own answer

        return bool(_pywrap_util_port.IsMklEnabled())
    except (ImportError, AttributeError):
        return True


def tensorflow_has_accelerator():
    """Whether TensorFlow places ops on a GPU or TPU here (cuDNN's and XLA's gradient kernels
    are fast there, and the rule was measured on CPUs only)."""
    import tensorflow as tf

    return bool(tf.config.list_logical_devices("GPU") or tf.config.list_logical_devices("TPU"))


def fast_gradients_apply(conv, padded_shape, training):
    """True if `conv` (a Keras Conv2D, 'valid' padding) on an input of static `padded_shape`
    should use `conv3x3_valid`: training on TensorFlow on a CPU with Eigen kernels (no GPU or TPU,
    oneDNN off), a 3x3 stride-1 undilated ungrouped channels-last conv, and at least MIN_PIXELS
    output pixels per image."""
    if not ENABLED[0] or not training or keras.backend.backend() != "tensorflow":
        return False
    if tuple(conv.kernel_size) != (3, 3) or tuple(conv.strides) != (1, 1) or tuple(conv.dilation_rate) != (1, 1):
        return False
    if conv.groups != 1 or conv.padding != "valid" or conv.data_format != "channels_last":
        return False
    h, w = padded_shape[1], padded_shape[2]
    if h is None or w is None or (h - 2) * (w - 2) < MIN_PIXELS:
        return False
    return not tensorflow_uses_onednn() and not tensorflow_has_accelerator()


def conv3x3_valid(x, kernel):
    """`tf.nn.convolution(x, kernel, padding="VALID")` for a 3x3 HWIO `kernel`, with the gradients
    of the module docstring. `x` is NHWC with static H and W (already padded by the caller)."""
    import tensorflow as tf  # TensorFlow only (see fast_gradients_apply)

    @tf.custom_gradient
    def conv(x, kernel):
        y = tf.nn.convolution(x, kernel, strides=1, padding="VALID", data_format="NHWC", dilations=1)

        def grad(dy):
            h, w = dy.shape[1], dy.shape[2]
            # dL/dx = "full" correlation of dy with the kernel rotated by 180 degrees, in<->out.
            rotated = tf.transpose(tf.reverse(kernel, axis=[0, 1]), [0, 1, 3, 2])
            # (Padding first and a VALID conv: Eigen's conv with explicit padding measured slower.)
            dx = tf.nn.convolution(tf.pad(dy, [[0, 0], [2, 2], [2, 2], [0, 0]]), rotated, padding="VALID")
            # dL/dkernel[i, j] = window(x, i, j)^T @ dy over every pixel of the batch.
            c_in, c_out = x.shape[-1], dy.shape[-1]
            dy2 = tf.reshape(dy, [-1, c_out])
            taps = [
                tf.matmul(tf.reshape(x[:, i : i + h, j : j + w, :], [-1, c_in]), dy2, transpose_a=True)
                for i in range(3)
                for j in range(3)
            ]
            dkernel = tf.reshape(tf.stack(taps), [3, 3, c_in, c_out])
            return dx, dkernel

        return y, grad

    return conv(x, kernel)


def apply_conv(conv, x, training):
    """Call the Keras Conv2D layer `conv` on `x`, through `conv3x3_valid` where
    `fast_gradients_apply` says so (same forward op, same bias add as Keras' Conv2D)."""
    if not fast_gradients_apply(conv, x.shape, training):
        return conv(x)
    dtype = conv.compute_dtype  # what Keras' Conv2D computes in (its own dtype policy)
    y = conv3x3_valid(keras.ops.cast(x, dtype), keras.ops.cast(conv.kernel, dtype))
    if conv.use_bias:
        y = keras.ops.add(y, keras.ops.reshape(keras.ops.cast(conv.bias, dtype), (1, 1, 1, -1)))
    return y
