"""Building blocks shared by every head and backbone.

* `ConvBN`: conv -> BatchNorm -> optional activation, padded the way PyTorch pads (symmetric),
  BN epsilon 1e-5 / momentum 0.9 (PyTorch's 0.1), so official checkpoints load with exact parity.
* `resize_bilinear` / `ResizeTo`: bilinear resize reproducing PyTorch's `F.interpolate(...,
  mode="bilinear", align_corners=True|False)` exactly on every Keras backend, and lowering to
  TFLite's builtin RESIZE_BILINEAR on TensorFlow.
* `check_label_range`: refuse class ids outside [0, K) (other than the ignore label).

Written in `keras.ops` (TensorFlow, JAX, PyTorch); what only TensorFlow has (the TFLite
builtin resize, graph assertions) is behind a backend check that says so.
"""

import keras
from keras import ops

from ocr_tf.layers.batch_norm import FusedBatchNormalization
from ocr_tf.layers.conv_grad import apply_conv

BN_EPSILON = 1e-5  # PyTorch's default, used by every official checkpoint.
BN_MOMENTUM = 0.9  # Keras convention; equals PyTorch momentum 0.1.


# Stride-1 ConvBNs pad inside the conv ('same'); False (a benchmark's A/B switch, read when a ConvBN
# is built) gives them an explicit ZeroPadding2D and a 'valid' conv as strided ones have.
PAD_INSIDE_CONV = [True]
# True while `ocr_tf.fold_bn.fold_batch_norm` rebuilds a network: every ConvBN then has no
# BatchNorm and a conv bias (the folded inference form), also those that layers create inside.
BUILDING_FOLDED = [False]


def torch_padding(kernel_size, dilation_rate=1):
    """Padding PyTorch uses on each side for a 'same'-style conv: dilation * (k - 1) // 2."""
    return dilation_rate * (kernel_size - 1) // 2


@keras.saving.register_keras_serializable(package="ocr_tf")
class ConvBN(keras.layers.Layer):
    """Conv2D -> BatchNormalization -> activation (None to skip), as `nn.Sequential(conv, bn, relu)`.

    Padding is symmetric on every side (`dilation * (k - 1) // 2`), as PyTorch does: for stride 1
    that is Keras' 'same' (inside the conv op: no padded copy, none kept for the backward pass,
    one op in exports); strided convs get an explicit `ZeroPadding2D` first, since Keras 'same'
    pads asymmetrically for stride 2 on even sizes and would break checkpoint parity.
    `synchronized=True` makes BatchNorm reduce its statistics over all replicas.
    Sub-layers are `conv`, `bn` (and `act`), which the checkpoint converter addresses.
    `batch_norm=False`: no `bn`, a conv with bias (the BatchNorm-folded inference form that
    `ocr_tf.fold_bn.fold_batch_norm` builds).
    """

    def __init__(
        self,
        filters,
        kernel_size=1,
        strides=1,
        dilation_rate=1,
        use_bias=False,
        activation="relu",
        synchronized=False,
        bn_epsilon=BN_EPSILON,
        bn_momentum=BN_MOMENTUM,
        kernel_initializer="he_normal",
        batch_norm=True,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.batch_norm = bool(batch_norm) and not BUILDING_FOLDED[0]
        if not self.batch_norm:
            use_bias = True  # the folded BatchNorm's shift
        if filters < 1:
            raise ValueError(f"ConvBN filters must be >= 1, got {filters}.")
        self.filters = int(filters)
        self.kernel_size = int(kernel_size)
        self.strides = int(strides)
        self.dilation_rate = int(dilation_rate)
        self.use_bias = bool(use_bias)
        self.activation = activation
        self.synchronized = bool(synchronized)
        self.bn_epsilon = float(bn_epsilon)
        self.bn_momentum = float(bn_momentum)
        self.kernel_initializer = keras.initializers.get(kernel_initializer)

        pad = torch_padding(self.kernel_size, self.dilation_rate)
        same = PAD_INSIDE_CONV[0] and pad and self.strides == 1 and self.kernel_size % 2 == 1  # d * (k - 1) / 2 a side
        self.pad = keras.layers.ZeroPadding2D(pad, name="pad") if pad and not same else None
        self.conv = keras.layers.Conv2D(
            self.filters,
            self.kernel_size,
            strides=self.strides,
            dilation_rate=self.dilation_rate,
            padding="same" if same else "valid",
            use_bias=self.use_bias,
            kernel_initializer=self.kernel_initializer,
            name="conv",
        )
        self.bn = None
        if self.batch_norm:
            self.bn = FusedBatchNormalization(
                epsilon=self.bn_epsilon,
                momentum=self.bn_momentum,
                synchronized=self.synchronized,
                name="bn",
            )
        self.act = keras.layers.Activation(activation, name="act") if activation else None

    def build(self, input_shape):
        shape = input_shape
        if self.pad is not None:
            self.pad.build(shape)
            shape = self.pad.compute_output_shape(shape)
        self.conv.build(shape)
        shape = self.conv.compute_output_shape(shape)
        if self.bn is not None:
            self.bn.build(shape)
        self.built = True

    def call(self, x, training=None):
        if self.pad is not None:
            x = self.pad(x)
        x = apply_conv(self.conv, x, training)  # self.conv(x); faster gradients or Winograd where measured
        if self.bn is not None:
            x = self.bn(x, training=training)
        if self.act is not None:
            x = self.act(x)
        return x

    def compute_output_shape(self, input_shape):
        shape = input_shape
        if self.pad is not None:
            shape = self.pad.compute_output_shape(shape)
        return self.conv.compute_output_shape(shape)

    def get_config(self):
        config = super().get_config()
        config.update(
            filters=self.filters,
            kernel_size=self.kernel_size,
            strides=self.strides,
            dilation_rate=self.dilation_rate,
            use_bias=self.use_bias,
            activation=self.activation,
            synchronized=self.synchronized,
            bn_epsilon=self.bn_epsilon,
            bn_momentum=self.bn_momentum,
            kernel_initializer=keras.initializers.serialize(self.kernel_initializer),
            batch_norm=self.batch_norm,
        )
        return config


def _source_index_and_weight(out_size, in_size, align_corners):
    """For each output row: the two source rows (i0, i1) and the weight of i1, PyTorch's rule.

    align_corners=True samples at dst * (in - 1) / (out - 1) (0 when out == 1); False at
    (dst + 0.5) * in / out - 0.5, clamped at 0 as PyTorch does. Sizes may be symbolic (TF graph).
    """
    dst = ops.cast(ops.arange(out_size), "float32")
    n_in = ops.cast(in_size, "float32")
    n_out = ops.cast(out_size, "float32")
    if align_corners:
        src = dst * ((n_in - 1.0) / ops.maximum(n_out - 1.0, 1.0))
    else:
        src = ops.maximum((dst + 0.5) * (n_in / n_out) - 0.5, 0.0)
    i0 = ops.minimum(ops.cast(ops.floor(src), "int32"), ops.cast(in_size, "int32") - 1)
    i1 = ops.minimum(i0 + 1, ops.cast(in_size, "int32") - 1)
    return i0, i1, src - ops.cast(i0, "float32")


def _lerp_axis(x, out_size, axis, align_corners):
    """Linear interpolation of `x` along `axis` to `out_size` samples (gather two, blend)."""
    i0, i1, weight = _source_index_and_weight(out_size, ops.shape(x)[axis], align_corners)
    shape = [1] * len(x.shape)
    shape[axis] = -1
    weight = ops.reshape(weight, shape)
    a, b = ops.take(x, i0, axis=axis), ops.take(x, i1, axis=axis)
    return a + (b - a) * weight


def resize_bilinear(x, size, align_corners=True):
    """Bilinear resize of NHWC `x` to `size` (h, w), identical to PyTorch's
    `F.interpolate(x, size, mode="bilinear", align_corners=align_corners)`.

    keras.ops.image.resize has no align_corners, so on JAX and PyTorch the resize is written
    out here: separable, each axis gathers the two neighbouring rows/columns and blends them
    (exact, differentiable, O(output)), in float32.
    On TensorFlow the TF ops are kept, because they are what the TFLite converter turns into
    its builtin RESIZE_BILINEAR (a gather-based resize would export as GATHER + arithmetic):
    align_corners=True is the raw op `ResizeBilinear(align_corners=True, half_pixel_centers=False)`
    (the op behind the deprecated `tf.compat.v1.image.resize_bilinear`, without its warning);
    align_corners=False is `tf.image.resize(..., "bilinear", antialias=False)` (half-pixel
    centres, PyTorch's rule). The result keeps `x`'s dtype.
    """
    dtype = x.dtype
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf  # TensorFlow by nature: the TFLite builtin op

        size = tf.stack([tf.cast(s, tf.int32) for s in size]) if isinstance(size, (tuple, list)) else size
        x32 = tf.cast(x, tf.float32)
        if align_corners:
            y = tf.raw_ops.ResizeBilinear(images=x32, size=size, align_corners=True, half_pixel_centers=False)
        else:
            y = tf.image.resize(x32, size, method="bilinear", antialias=False)
        return tf.cast(y, dtype)
    y = ops.cast(x, "float32")
    y = _lerp_axis(y, size[0], 1, align_corners)
    y = _lerp_axis(y, size[1], 2, align_corners)
    return ops.cast(y, dtype)


def check_label_range(labels, num_classes, ignore_label):
    """Refuse labels outside [0, K) other than `ignore_label` (they would silently drop pixels).

    TensorFlow: an in-graph assertion (InvalidArgumentError when it runs; XLA drops assertions).
    JAX / PyTorch: checked on concrete values (ValueError); inside a JAX trace the values are
    unknown and, as under XLA, nothing can be asserted.
    """
    message = f"labels must be in [0, {num_classes}) or the ignore label {ignore_label}"
    labels = ops.convert_to_tensor(labels)
    valid = ops.logical_or(
        ops.equal(labels, ignore_label), ops.logical_and(labels >= 0, labels < num_classes)
    )
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf  # TensorFlow by nature: a graph-mode assertion

        tf.debugging.assert_equal(tf.reduce_all(valid), True, message=message)
        return
    try:
        ok = bool(ops.convert_to_numpy(ops.all(valid)))
    except Exception:  # a JAX tracer: no concrete values to check
        return
    if not ok:
        raise ValueError(message)


@keras.saving.register_keras_serializable(package="ocr_tf")
class ResizeTo(keras.layers.Layer):
    """Resize `x` bilinearly to the spatial size of `reference` (NHWC), PyTorch-compatible.

    `call(x, reference)`: only `reference`'s height and width are used, so the layer works with
    unknown (None) spatial sizes.
    """

    def __init__(self, align_corners=True, **kwargs):
        super().__init__(**kwargs)
        self.align_corners = bool(align_corners)

    def call(self, x, reference):
        return resize_bilinear(x, ops.shape(reference)[1:3], self.align_corners)

    def compute_output_shape(self, x_shape, reference_shape):
        return (x_shape[0], reference_shape[1], reference_shape[2], x_shape[3])

    def get_config(self):
        config = super().get_config()
        config.update(align_corners=self.align_corners)
        return config


def head_output_shapes(num_classes, features_shape, aux_features_shape=None):
    """Output shapes of every segmentation head: {"logits", "aux_logits"}, each (B, h, w, K) at
    the resolution of the features they come from (aux from `aux_features` when given)."""
    aux_shape = features_shape if aux_features_shape is None else aux_features_shape
    return {
        "logits": (*features_shape[:3], num_classes),
        "aux_logits": (*aux_shape[:3], num_classes),
    }
