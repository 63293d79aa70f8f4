"""How `ConvBN` runs its stride-1 convs on CPUs where TensorFlow uses Eigen: faster gradients in
training, and Winograd F(2x2, 3x3) (`winograd.py`) for 3x3 convs of >= 128 channels.

On CPUs where TensorFlow runs convolutions with Eigen (oneDNN off: TensorFlow's default on x86
CPUs without AVX512-VNNI / bf16 / AMX, e.g. the AMD AVX2 box of BENCHMARKS.md), its
`Conv2DBackpropInput` and `Conv2DBackpropFilter` kernels run a conv's gradients at a third to half
the speed of its forward: a 3x3 conv's once a feature map has more than ~8k pixels (the
high-resolution branches of HRNet, 48-64 channels at 1/4 scale, and the 720 -> 512 head conv), a
1x1 conv's at every size measured. The same gradients written with faster kernels:

* 3x3, input gradient: the forward conv of the output gradient with the kernel rotated by 180
  degrees and its in/out channels swapped ("full" padding), which Eigen's forward kernel runs
  1.2-3x faster than its backprop-input kernel;
* 3x3, kernel gradient: for each kernel row i, one matmul of the input's rows i..i+H and the output
  gradient placed at the three column offsets side by side (K = N*H*(W+2), a shape GEMM runs near
  its peak), 1.1-2.2x faster than Eigen's backprop-filter kernel;
* 1x1: both gradients are one matmul each (dy @ W^T and x^T @ dy), 1.0-2.2x faster than Eigen's
  kernels and bit-identical to them.

Measured per shape in BENCHMARKS.md (issue 13). TensorFlow's own gradients stay for 3x3 convs
below 8192 output pixels per image (a tie there), for strided or dilated convs, where TensorFlow
uses oneDNN (its backprop kernels are fast, and the rotated forward conv measured 3x slower), and
on GPUs and TPUs. Where Winograd does not apply the forward is Keras' own conv op, so outputs are
bit-identical; the 3x3 gradients are the same sums in another order (float32 rounding, tested
against TensorFlow's kernels and a float64 NumPy reference; in bfloat16 they measured closer to
the float64 reference than TensorFlow's own bfloat16 kernels).

Written by hand because no library offers these gradient formulations as a switch; TensorFlow only.
"""

import contextlib
import functools

import keras

from ocr_tf.layers import winograd

# Set to False (a benchmark's A/B switch, tests) to keep Keras' conv op and TF's gradients everywhere.
ENABLED = [True]
# Output pixels per image from which the rewritten 3x3 gradients measured faster (BENCHMARKS.md).
MIN_PIXELS = 8192
# In training, Winograd (forward, input and kernel gradients) from this many channels in and out.
WINOGRAD_TRAINING_CHANNELS = 256
_KERAS_CONV_OPS = [0]  # > 0 inside `keras_conv_ops()`


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


@functools.lru_cache(maxsize=None)  # devices are fixed once TensorFlow has started; asked per ConvBN trace
def tensorflow_has_accelerator():
    """Whether TensorFlow places ops on a GPU or TPU here (cuDNN's and XLA's gradient kernels
    are fast there, and the rule was measured on CPUs only)."""
    import tensorflow as tf

    return bool(tf.config.list_logical_devices("GPU") or tf.config.list_logical_devices("TPU"))


@contextlib.contextmanager
def keras_conv_ops():
    """Within this block every `ConvBN` traces Keras' own conv op with TensorFlow's gradients.
    Exports use it: a SavedModel, TFLite or ONNX file runs on other machines and runtimes, whose
    conv kernels are their own (Winograd written as matmuls would only slow them down)."""
    _KERAS_CONV_OPS[0] += 1
    try:
        yield
    finally:
        _KERAS_CONV_OPS[0] -= 1


def _eigen_cpu_conv(conv):
    """The checks both routes share: on, not exporting, TensorFlow backend on a CPU with Eigen
    kernels (no GPU or TPU, oneDNN off), a stride-1 undilated ungrouped channels-last conv."""
    if not ENABLED[0] or _KERAS_CONV_OPS[0] or keras.backend.backend() != "tensorflow":
        return False
    if tuple(conv.strides) != (1, 1) or tuple(conv.dilation_rate) != (1, 1) or conv.groups != 1:
        return False
    if conv.padding not in ("valid", "same") or conv.data_format != "channels_last":
        return False
    return not tensorflow_uses_onednn() and not tensorflow_has_accelerator()


def _output_hw(conv, input_shape):
    """(height, width) of a stride-1 `conv`'s output for an NHWC `input_shape` (None if unknown)."""
    crop = [k - 1 if conv.padding == "valid" else 0 for k in conv.kernel_size]
    return tuple(None if n is None else n - c for n, c in zip(input_shape[1:3], crop))


def fast_gradients_apply(conv, input_shape, training):
    """True if `conv` (a Keras Conv2D, 'valid' or 'same' padding) on an input of static
    `input_shape` should run through `conv1x1_valid` / `conv3x3`: training on TensorFlow on a CPU
    with Eigen kernels (no GPU or TPU, oneDNN off), a stride-1 undilated ungrouped channels-last
    conv, 1x1, or 3x3 with at least MIN_PIXELS output pixels per image."""
    if not training or not _eigen_cpu_conv(conv):
        return False
    if tuple(conv.kernel_size) == (3, 3):
        h, w = _output_hw(conv, input_shape)
        return h is not None and w is not None and h * w >= MIN_PIXELS
    return tuple(conv.kernel_size) == (1, 1)


def winograd_applies(conv, input_shape, training):
    """True if the 3x3 `conv` on an input of `input_shape` (height and width static or None)
    should run as Winograd F(2x2, 3x3) (`winograd.conv3x3`): the checks of `fast_gradients_apply`,
    float32, and channels and map size where it measured faster (`winograd.applies`). In training
    only inside the faster gradients (>= MIN_PIXELS) and from WINOGRAD_TRAINING_CHANNELS channels,
    its gradients through the same tiles (`conv3x3(..., use_winograd=True)`). (Narrower
    convs and smaller maps measured 0.42-0.99x TensorFlow's forward + backward per conv, but the
    whole W48 step at 512 x 1024 0.99x, with a first step (tracing) 2.2x longer: not taken. Their
    whole-network gradients against a float64 step: BENCHMARKS.md, not settled.)"""
    if tuple(conv.kernel_size) != (3, 3) or not _eigen_cpu_conv(conv):
        return False
    if not winograd.applies(conv.kernel.shape, _output_hw(conv, input_shape), conv.compute_dtype):
        return False
    if training:
        return fast_gradients_apply(conv, input_shape, training) and min(conv.kernel.shape[2:]) >= WINOGRAD_TRAINING_CHANNELS
    return True


def conv1x1_valid(x, kernel):
    """`tf.nn.convolution(x, kernel, padding="VALID")` for a 1x1 HWIO `kernel`, whose gradients are
    one matmul each (the module docstring). `x` is NHWC."""
    import tensorflow as tf  # TensorFlow only (see fast_gradients_apply)

    @tf.custom_gradient
    def conv(x, kernel):
        y = tf.nn.convolution(x, kernel, strides=1, padding="VALID", data_format="NHWC", dilations=1)

        def grad(dy):
            c_in, c_out = kernel.shape[2], kernel.shape[3]
            dy2 = tf.reshape(dy, [-1, c_out])
            dx = tf.reshape(tf.matmul(dy2, tf.reshape(kernel, [c_in, c_out]), transpose_b=True), tf.shape(x))
            dkernel = tf.reshape(tf.matmul(tf.reshape(x, [-1, c_in]), dy2, transpose_a=True), [1, 1, c_in, c_out])
            return dx, dkernel

        return y, grad

    return conv(x, kernel)


def conv3x3(x, kernel, padding="VALID", use_winograd=False):
    """`tf.nn.convolution(x, kernel, padding=padding)` for a 3x3 HWIO `kernel`, with the gradients
    of the module docstring. `x` is NHWC with static H and W unless `use_winograd`; `padding`
    "VALID" (`x` padded by the caller) or "SAME" (one zero row and column on each side, inside the
    op: no padded copy of `x` is kept for the backward pass).
    `use_winograd`: the forward and the input gradient (a forward conv too) as Winograd
    F(2x2, 3x3) (`winograd.conv3x3`) instead of TensorFlow's conv op, and the kernel gradient
    through the same tiles (`winograd.kernel_gradient`) instead of the row matmuls."""
    import tensorflow as tf  # TensorFlow only (see fast_gradients_apply)

    if padding not in ("VALID", "SAME"):
        raise ValueError(f"padding must be 'VALID' or 'SAME', got {padding!r}.")

    def forward(x, kernel, padding):
        if use_winograd:
            return winograd.conv3x3(x, kernel, padding)
        return tf.nn.convolution(x, kernel, strides=1, padding=padding, data_format="NHWC", dilations=1)

    @tf.custom_gradient
    def conv(x, kernel):
        y = forward(x, kernel, padding)

        def grad(dy):
            w = dy.shape[2]
            # dL/dx = "full" correlation of dy with the kernel rotated by 180 degrees, in<->out,
            # cropped to x: for SAME that is the SAME conv of dy, for VALID the VALID conv of dy
            # padded by 2 (Eigen's conv with explicit padding measured slower than a pad first).
            rotated = tf.transpose(tf.reverse(kernel, axis=[0, 1]), [0, 1, 3, 2])
            if padding == "SAME":
                dx = forward(dy, rotated, "SAME")
            else:
                dx = forward(tf.pad(dy, [[0, 0], [2, 2], [2, 2], [0, 0]]), rotated, "VALID")
            if use_winograd:  # the adjoint of the Winograd forward, through the same tiles
                return dx, winograd.kernel_gradient(x, dy, padding)
            # The padded input, only for as long as the kernel gradient needs it.
            xp = tf.pad(x, [[0, 0], [1, 1], [1, 1], [0, 0]]) if padding == "SAME" else x
            # dL/dkernel[i, j] = sum over pixels of x[h + i, w + j]^T dy[h, w]. With dy placed at
            # column offset j of a padded-size copy (d_j: zeros in the last 2 rows and around the
            # columns), that is x_i^T @ d_j over every padded pixel, x_i = x shifted up by i rows.
            # The three d_j side by side make it 3 matmuls, x_i^T @ [d_0 d_1 d_2] -> (c_in, 3 * c_out),
            # each a large-K GEMM (measured faster than 9 window matmuls and than Eigen's kernel).
            # Flattened to (pixels, channels), x_i is a slice of rows starting i image rows later: a
            # view, not a copy (TensorFlow slices the first dimension in place when aligned); the
            # slices end 2 image rows early, where the last image's d_j is zero anyway. Rows that
            # run into the next image of the batch meet d_j's zero rows.
            c_in, c_out = x.shape[-1], dy.shape[-1]
            wp = w + 2  # padded width: the flattened offset of one image row
            shifted = tf.concat([tf.pad(dy, [[0, 0], [0, 2], [j, 2 - j], [0, 0]]) for j in range(3)], axis=-1)
            shifted = tf.reshape(shifted, [-1, 3 * c_out])
            flat = tf.reshape(xp, [-1, c_in])
            length = tf.shape(flat)[0] - 2 * wp
            rows = [tf.matmul(flat[i * wp : i * wp + length], shifted[:length], transpose_a=True) for i in range(3)]
            dkernel = tf.transpose(tf.reshape(tf.stack(rows), [3, c_in, 3, c_out]), [0, 2, 1, 3])
            return dx, dkernel

        return y, grad

    return conv(x, kernel)


def apply_conv(conv, x, training):
    """Call the Keras Conv2D layer `conv` on `x`; where measured faster on this machine, through
    `conv1x1_valid` / `conv3x3` in training (`fast_gradients_apply`) and as Winograd
    (`winograd_applies`), with the same bias add as Keras' Conv2D."""
    use_winograd = winograd_applies(conv, x.shape, training)
    fast_gradients = fast_gradients_apply(conv, x.shape, training)
    if not (use_winograd or fast_gradients):
        return conv(x)
    dtype = conv.compute_dtype  # what Keras' Conv2D computes in (its own dtype policy)
    x, kernel = keras.ops.cast(x, dtype), keras.ops.cast(conv.kernel, dtype)
    padding = conv.padding.upper()
    if use_winograd:
        y = conv3x3(x, kernel, padding, use_winograd=True) if training else winograd.conv3x3(x, kernel, padding)
    elif tuple(conv.kernel_size) == (1, 1):
        y = conv1x1_valid(x, kernel)  # 'same' and 'valid' are one thing for a 1x1 conv
    else:
        y = conv3x3(x, kernel, padding)
    if conv.use_bias:
        y = keras.ops.add(y, keras.ops.reshape(keras.ops.cast(conv.bias, dtype), (1, 1, 1, -1)))
    return y
