"""BatchNorm folded into the preceding convolution, for inference graphs and exports (issue 13).

At inference a BatchNorm is a per-channel affine map, y = gamma * (x - mean) / sqrt(var + eps) +
beta, so conv -> BN equals one conv with kernel * s and bias (b - mean) * s + beta, where
s = gamma / sqrt(var + eps). `fold_batch_norm(model)` returns a copy of a network in which every
`ConvBN` (every conv-BN pair of the HRNet and ResNet backbones and of the heads) is such a conv:
one op (TensorFlow fuses conv + bias + ReLU into one kernel on CPU) instead of conv, four
element-wise BN ops and the ReLU. Keras has no folding of its own (the TFLite converter folds
while converting; SavedModels and `tf.function`s keep the BN), hence this module.

The copy is for inference and export only: it has no BatchNorm to train, and `.keras` files of it
do not reload (layers rebuild their inner ConvBNs with BatchNorm); save the original.
Layers that are not `ConvBN` (keras.applications' MobileNetV2 blocks) are copied unchanged.
"""

import keras
import numpy as np

from ocr_tf.layers import common
from ocr_tf.layers.common import ConvBN


def conv_bn_layers(layer):
    """Every `ConvBN` inside `layer` (itself included), in a fixed order, each once."""
    found, seen, stack = [], set(), [layer]
    while stack:
        obj = stack.pop()
        if id(obj) in seen:
            continue
        seen.add(id(obj))
        if isinstance(obj, ConvBN):
            found.append(obj)
            continue
        if isinstance(obj, keras.layers.Layer):
            stack.extend(reversed(list(vars(obj).values())))
        elif isinstance(obj, (list, tuple)):
            stack.extend(reversed(list(obj)))
        elif isinstance(obj, dict):
            stack.extend(reversed(list(obj.values())))
    return found


def folded_kernel_and_bias(conv_bn):
    """(kernel, bias) of the conv equal to `conv_bn`'s conv followed by its BatchNorm at
    inference, computed in float64 and returned as float32 NumPy arrays."""
    bn, conv = conv_bn.bn, conv_bn.conv
    kernel = np.asarray(keras.ops.convert_to_numpy(conv.kernel), np.float64)
    out = kernel.shape[-1]
    bias = np.asarray(keras.ops.convert_to_numpy(conv.bias), np.float64) if conv.use_bias else np.zeros(out)
    value = lambda v, default: np.asarray(keras.ops.convert_to_numpy(v), np.float64) if v is not None else default  # noqa: E731
    gamma = value(bn.gamma, np.ones(out)) if bn.scale else np.ones(out)
    beta = value(bn.beta, np.zeros(out)) if bn.center else np.zeros(out)
    mean = value(bn.moving_mean, None)
    var = value(bn.moving_variance, None)
    s = gamma / np.sqrt(var + bn.epsilon)
    return (kernel * s).astype(np.float32), ((bias - mean) * s + beta).astype(np.float32)


def is_foldable(model):
    """Whether `fold_batch_norm` takes `model`: a functional (or Sequential) Keras model, which
    rebuilds from its config."""
    return isinstance(model, keras.Model) and type(model).__name__ in ("Functional", "Sequential")


def fold_batch_norm(model):
    """A copy of the functional `model` with each `ConvBN`'s BatchNorm folded into its conv.

    Args:
        model: a built functional `keras.Model` (what `ocr_tf.models.build_model` returns, or a
            loaded `.keras` file of one).
    Returns:
        A new `keras.Model` with the same inputs and outputs, equal to `model(x, training=False)`
        up to float32 rounding.
    """
    if not is_foldable(model):
        raise TypeError(f"fold_batch_norm needs a functional keras.Model, got {type(model).__name__}.")
    common.BUILDING_FOLDED[0] = True
    try:
        folded = model.__class__.from_config(model.get_config())
    finally:
        common.BUILDING_FOLDED[0] = False
    source = {v.path: v for v in model.weights}
    originals = {cb.conv.kernel.path: cb for cb in conv_bn_layers(model) if cb.bn is not None}
    done = set()
    for cb in conv_bn_layers(folded):
        original = originals.get(cb.conv.kernel.path)
        if original is None:
            continue
        kernel, bias = folded_kernel_and_bias(original)
        cb.conv.kernel.assign(kernel)
        cb.conv.bias.assign(bias)
        done.update((cb.conv.kernel.path, cb.conv.bias.path))
    for v in folded.weights:
        if v.path in done:
            continue
        if v.path not in source:
            raise ValueError(f"fold_batch_norm: the rebuilt model has a weight {v.path!r} the original lacks.")
        v.assign(source[v.path])
    return folded
