"""Dilated ResNet-50/101 (output stride 8 or 16), the paper's "simple baseline" backbone ([OS]).

The body is keras.applications' ResNet v1 layer for layer (names, kernel shapes, conv biases,
BN epsilon 1.001e-5), so its ImageNet `.h5` weights load by name; stages 4/5 (`conv4_*`,
`conv5_*`) trade their stride 2 for dilation 2/4 (OS 8) or stage 5 for dilation 2 (OS 16): the
kernels keep their shapes, only the sampling grid changes. Every block of a dilated stage uses the
stage's dilation (mmsegmentation's choice).

stem="keras": keras.applications' 7x7 stem. The model takes our ImageNet-normalised RGB input and
converts it to the caffe-style BGR input those weights were trained on (`CaffeInput`).
stem="deep": the [OS] "deep base" stem (three 3x3 ConvBN, 3->64 s2, 64->64, 64->128) + max-pool,
taking the normalised input as is. The max-pool is 3x3 s2 with 1 pixel of padding in floor mode
(the keras stem's); PyTorch's ceil mode in [OS] gives one more row/column on even sizes only.

Outputs: [stage 3 (`conv4_block{N}_out`, 1024 ch), stage 4 (`conv5_block3_out`, 2048 ch)],
both at 1/output_stride of the input (ceil for odd sizes).
"""

import keras
from keras import ops

from ocr_tf.layers.common import ConvBN
from ocr_tf.preprocessing import IMAGENET_MEAN, IMAGENET_STD

DEPTHS = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3)}
STEMS = ("keras", "deep")
KERAS_BN_EPSILON = 1.001e-5  # keras.applications' value; its weights were trained with it
CAFFE_BGR_MEAN = (103.939, 116.779, 123.68)


@keras.saving.register_keras_serializable(package="ocr_tf")
class CaffeInput(keras.layers.Layer):
    """ImageNet mean/std-normalised RGB -> keras.applications ResNet input (BGR, 0-255, mean-subtracted)."""

    def call(self, x):
        std = ops.convert_to_tensor(IMAGENET_STD, x.dtype)
        mean = ops.convert_to_tensor(IMAGENET_MEAN, x.dtype)
        rgb255 = (x * std + mean) * 255.0
        bgr255 = ops.flip(rgb255, axis=-1)  # [..., ::-1]: PyTorch tensors take no negative steps
        return bgr255 - ops.convert_to_tensor(CAFFE_BGR_MEAN, x.dtype)


def _bottleneck(x, filters, strides, dilation, shortcut, name, synchronized):
    """keras.applications' ResNet v1 `block1` (stride on the first 1x1 conv), with a dilation."""

    def bn(y, suffix):
        return keras.layers.BatchNormalization(
            epsilon=KERAS_BN_EPSILON, synchronized=synchronized, name=f"{name}_{suffix}_bn"
        )(y)

    if shortcut:
        s = keras.layers.Conv2D(4 * filters, 1, strides=strides, name=f"{name}_0_conv")(x)
        s = bn(s, "0")
    else:
        s = x
    y = keras.layers.Conv2D(filters, 1, strides=strides, name=f"{name}_1_conv")(x)
    y = keras.layers.Activation("relu", name=f"{name}_1_relu")(bn(y, "1"))
    # stride 1 here, so 'same' pads symmetrically (dilation on each side), as PyTorch does
    y = keras.layers.Conv2D(filters, 3, padding="same", dilation_rate=dilation, name=f"{name}_2_conv")(y)
    y = keras.layers.Activation("relu", name=f"{name}_2_relu")(bn(y, "2"))
    y = keras.layers.Conv2D(4 * filters, 1, name=f"{name}_3_conv")(y)
    y = bn(y, "3")
    y = keras.layers.Add(name=f"{name}_add")([s, y])
    return keras.layers.Activation("relu", name=f"{name}_out")(y)


def resnet_backbone(
    depth=101,
    input_shape=(None, None, 3),
    output_stride=8,
    stem="keras",
    synchronized=False,
    name="backbone",
):
    """Dilated ResNet-`depth` as a functional model -> [stage 3, stage 4] features."""
    if depth not in DEPTHS:
        raise ValueError(f"ResNet depth must be one of {sorted(DEPTHS)}, got {depth}.")
    if output_stride not in (8, 16):
        raise ValueError(f"ResNet output_stride must be 8 or 16, got {output_stride}.")
    if stem not in STEMS:
        raise ValueError(f"ResNet stem must be one of {STEMS}, got {stem!r}.")
    sync = bool(synchronized)

    inputs = keras.Input(input_shape, name="image")
    if stem == "keras":
        x = CaffeInput(name="caffe_input")(inputs)
        x = keras.layers.ZeroPadding2D(3, name="conv1_pad")(x)
        x = keras.layers.Conv2D(64, 7, strides=2, name="conv1_conv")(x)
        x = keras.layers.BatchNormalization(epsilon=KERAS_BN_EPSILON, synchronized=sync, name="conv1_bn")(x)
        x = keras.layers.Activation("relu", name="conv1_relu")(x)
    else:
        x = ConvBN(64, 3, strides=2, synchronized=sync, name="stem_conv1")(inputs)
        x = ConvBN(64, 3, synchronized=sync, name="stem_conv2")(x)
        x = ConvBN(128, 3, synchronized=sync, name="stem_conv3")(x)
    x = keras.layers.ZeroPadding2D(1, name="pool1_pad")(x)
    x = keras.layers.MaxPooling2D(3, strides=2, name="pool1_pool")(x)

    # (filters, stride, dilation) of conv2..conv5
    d4, d5 = (2, 4) if output_stride == 8 else (1, 2)
    stages = [(64, 1, 1), (128, 2, 1), (256, 1 if d4 > 1 else 2, d4), (512, 1, d5)]
    outputs = []
    for index, (blocks, (filters, strides, dilation)) in enumerate(zip(DEPTHS[depth], stages), start=2):
        for b in range(1, blocks + 1):
            x = _bottleneck(
                x, filters, strides if b == 1 else 1, dilation, b == 1, f"conv{index}_block{b}", sync
            )
        if index >= 4:
            outputs.append(x)
    return keras.Model(inputs, outputs, name=name)
