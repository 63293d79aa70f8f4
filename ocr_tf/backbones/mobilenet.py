"""MobileNetV2 (keras.applications, width multiplier `alpha`) with output stride 8, 16 or 32.

The network is keras.applications' own graph, re-cloned with the stride-2 depthwise convs past the
output stride turned to stride 1 and the following depthwise convs dilated (the DeepLab recipe:
the layer that loses its stride keeps the current rate, the layers after it get rate x 2).
Stride-2 depthwise convs pad TF-'same' (ceil(H/2) at any size, as for the known even sizes
keras.applications pads for). Kernel shapes and layer names are unchanged, so keras.applications' ImageNet `.h5` loads by name.
Only plain conv / depthwise conv / ReLU6 / add ops: TFLite builtins.

Input: our ImageNet-normalised RGB; a per-channel affine (`Rescaling` "imagenet_to_unit") maps it to
the [-1, 1] range keras.applications' MobileNetV2 expects. Output: `out_relu` (1280 * max(1, alpha)
channels) at 1/output_stride of the input (ceil for odd sizes).
"""

import keras

from ocr_tf.preprocessing import IMAGENET_MEAN, IMAGENET_STD

# Depthwise convs that have stride 2 in MobileNetV2, with the stride reached after them.
STRIDED_BLOCKS = {"block_1": 4, "block_3": 8, "block_6": 16, "block_13": 32}


def _block_of(layer_name):
    """'block_12_depthwise' -> 12; the first block ('expanded_conv_*') -> 0; others -> None."""
    if layer_name.startswith("expanded_conv_"):
        return 0
    if layer_name.startswith("block_"):
        return int(layer_name.split("_")[1])
    return None


def _dilation_plan(output_stride):
    """{block index: (strides, dilation)} for each depthwise conv; OS 32 is the plain network."""
    plan, rate = {}, 1
    for block in range(17):
        target = STRIDED_BLOCKS.get(f"block_{block}")  # the stride this block reaches, if it strides
        if target is not None and target > output_stride:
            plan[block] = (1, rate)  # past the output stride: keep the size, dilate what follows
            rate *= 2
        else:
            plan[block] = (2 if target is not None else 1, rate)
    return plan


def mobilenet_backbone(
    input_shape=(None, None, 3),
    output_stride=8,
    alpha=1.0,
    synchronized=False,
    name="backbone",
):
    """MobileNetV2 features as a functional model (B, H, W, 3) -> (B, H/OS, W/OS, C)."""
    if output_stride not in (8, 16, 32):
        raise ValueError(f"MobileNetV2 output_stride must be 8, 16 or 32, got {output_stride}.")
    if not alpha > 0:
        raise ValueError(f"MobileNetV2 alpha must be > 0, got {alpha}.")
    base = keras.applications.MobileNetV2(
        input_shape=tuple(input_shape), alpha=float(alpha), include_top=False, weights=None
    )
    plan = _dilation_plan(output_stride)

    def clone(layer):
        config = layer.get_config()
        block = _block_of(layer.name)
        if isinstance(layer, keras.layers.BatchNormalization):
            config["synchronized"] = bool(synchronized)
        elif block is not None and layer.name.endswith("_depthwise"):
            strides, rate = plan[block]
            config["strides"] = (strides, strides)
            config["dilation_rate"] = (rate, rate)
            # TF 'same': stride 1 pads `rate` on each side; stride 2 gives ceil(H / 2) at any size
            # (keras.applications' explicit pad assumes even sizes when they are unknown).
            config["padding"] = "same"
        elif block is not None and layer.name.endswith("_pad"):
            config["padding"] = ((0, 0), (0, 0))  # the depthwise conv pads itself now
        return layer.__class__.from_config(config)

    # normalised RGB -> [-1, 1]: x * 2 std + (2 mean - 1), per channel, inserted before Conv1
    to_unit = keras.layers.Rescaling(
        scale=[2.0 * s for s in IMAGENET_STD], offset=[2.0 * m - 1.0 for m in IMAGENET_MEAN], name="imagenet_to_unit"
    )

    def call(layer, *args, **kwargs):
        if layer.name == "Conv1":
            return layer(to_unit(args[0]), *args[1:], **kwargs)
        return layer(*args, **kwargs)

    body = keras.models.clone_model(base, clone_function=clone, call_function=call)
    return keras.Model(body.inputs[0], body.outputs[0], name=name)
