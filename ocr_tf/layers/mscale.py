"""Hierarchical multi-scale attention (Tao, Sapra and Catanzaro, 2020), as NVIDIA's
`ocrnet.HRNet_Mscale` computes it (../shared/ANCHORS.md, [NV]).

One network (HRNetV2 + OCR with align_corners=False everywhere) is run at several input scales; a
small attention head on the OCR features predicts, per pixel, how much to trust each scale:

  `ScaleAttentionHead`  conv3x3 -> BN -> ReLU -> conv3x3 -> BN -> ReLU -> conv1x1 -> 1 -> sigmoid
  `MscaleOCRHead`       the [HR] OCR head that also returns that attention (from the 512-channel
                        OCR features after dropout, the ones the classifier sees)
  `build_mscale_ocr`    the network: normalised NHWC image -> {"logits", "aux_logits",
                        "attention"} at stride 4 (each float32)
  `scale_outputs`       NVIDIA's `_fwd`: the network at one input scale, each output resized to
                        that scaled input's size
  `nscale_merge` / `mscale_predict`  inference with any list of scales containing 1.0
  `two_scale_outputs`   training: scales (lo, 1.0), merged, plus the per-scale predictions

Written in keras.ops (every backend). Every resize here is bilinear with half-pixel centres and
no antialiasing, which is PyTorch's `F.interpolate(..., align_corners=False)`; scaled inputs are
(floor(H * s), floor(W * s)) as PyTorch's `scale_factor` with `recompute_scale_factor=True`.
"""

import math

import keras
from keras import ops

from ocr_tf.layers.common import ConvBN, head_output_shapes, resize_bilinear
from ocr_tf.layers.conv_grad import apply_conv
from ocr_tf.layers.ocr import OCRHead

OUTPUT_KEYS = ("logits", "aux_logits", "attention")


@keras.saving.register_keras_serializable(package="ocr_tf")
class ScaleAttentionHead(keras.layers.Layer):
    """Per-pixel attention for one scale: (B, h, w, C) -> (B, h, w, 1) in (0, 1), float32.

    NVIDIA's `make_attn_head` with its defaults (SEGATTN_BOT_CH 256, MSCALE_INNER_3x3, no dropout):
    conv3x3 C->channels (no bias) -> BN -> ReLU -> conv3x3 channels->channels (no bias) -> BN ->
    ReLU -> conv1x1 channels->1 (no bias) -> sigmoid. Sub-layers `conv0`, `conv1` (ConvBN),
    `conv2` (Conv2D), as the checkpoint converter addresses them.
    """

    def __init__(self, channels=256, synchronized=False, **kwargs):
        super().__init__(**kwargs)
        if int(channels) < 1:
            raise ValueError(f"ScaleAttentionHead channels must be >= 1, got {channels}.")
        self.channels = int(channels)
        self.synchronized = bool(synchronized)
        self.conv0 = ConvBN(self.channels, 3, synchronized=self.synchronized, name="conv0")
        self.conv1 = ConvBN(self.channels, 3, synchronized=self.synchronized, name="conv1")
        # The attention multiplies float32 logits: keep it float32 under mixed precision too.
        self.conv2 = keras.layers.Conv2D(1, 1, use_bias=False, dtype="float32", name="conv2")

    def build(self, input_shape):
        self.conv0.build(input_shape)
        self.conv1.build((*input_shape[:3], self.channels))
        self.conv2.build((*input_shape[:3], self.channels))
        self.built = True

    def call(self, x, training=None):
        x = self.conv0(x, training=training)
        x = self.conv1(x, training=training)
        return ops.sigmoid(self.conv2(ops.cast(x, "float32")))

    def compute_output_shape(self, input_shape):
        return (*input_shape[:3], 1)

    def get_config(self):
        config = super().get_config()
        config.update(channels=self.channels, synchronized=self.synchronized)
        return config


@keras.saving.register_keras_serializable(package="ocr_tf")
class MscaleOCRHead(OCRHead):
    """The [HR]-style OCR head (NVIDIA's `OCR_block`) plus `ScaleAttentionHead` on its OCR
    features. `call(features)` -> {"logits", "aux_logits", "attention"} at the features' size.

    `attn_channels`: the attention head's width (NVIDIA: 256). Other arguments as `OCRHead`
    (style "hrnet" only; NVIDIA resizes with align_corners=False).
    """

    def __init__(self, num_classes, attn_channels=256, **kwargs):
        kwargs.setdefault("align_corners", False)
        super().__init__(num_classes, **kwargs)
        if self.style != "hrnet" or self.shared_stem:
            raise ValueError("MscaleOCRHead is NVIDIA's HRNet OCR head: style 'hrnet', no shared stem.")
        self.attn_channels = int(attn_channels)
        self.scale_attn = ScaleAttentionHead(self.attn_channels, synchronized=self.synchronized, name="scale_attn")

    def build(self, features_shape, aux_features_shape=None):
        if aux_features_shape is not None:
            raise ValueError(f"{self.name} takes one input (the HRNet features).")
        super().build(features_shape)
        self.scale_attn.build((*features_shape[:3], self.mid_channels))

    def call(self, features, aux_features=None, training=None):
        # OCRHead.call's steps, keeping the OCR features that the attention head needs.
        aux_logits = apply_conv(self.aux_cls, self.aux_head(features, training=training), training)
        feats = self.conv3x3_ocr(features, training=training)
        regions = self.gather(feats, aux_logits)
        ocr_feats = self.ocr(feats, regions, training=training)
        return {
            "logits": apply_conv(self.cls_head, ocr_feats, training),
            "aux_logits": aux_logits,
            "attention": self.scale_attn(ocr_feats, training=training),
        }

    def compute_output_shape(self, features_shape, aux_features_shape=None):
        shapes = head_output_shapes(self.num_classes, features_shape)
        shapes["attention"] = (*features_shape[:3], 1)
        return shapes

    def get_config(self):
        config = super().get_config()
        config.update(attn_channels=self.attn_channels)
        return config


def build_mscale_ocr(
    num_classes,
    extra="w48",
    input_shape=(None, None, 3),
    mid_channels=512,
    key_channels=256,
    attn_channels=256,
    dropout=0.05,
    synchronized=False,
    align_corners=False,
    weights=None,
    name="hrnet_w48_mscale_ocr",
):
    """NVIDIA's HRNet_Mscale network as a functional `keras.Model`: normalised float32 NHWC image
    -> {"logits", "aux_logits", "attention"} (float32) at stride 4.

    Args:
        num_classes: number of classes K.
        extra: HRNet stage config (a key of `HRNET_CONFIGS` or the official dict form).
        input_shape: (H, W, 3), None for any size.
        mid_channels, key_channels: OCR widths (NVIDIA: 512, 256).
        attn_channels: the attention head's width (NVIDIA: 256).
        dropout: the OCR module's channel dropout (0.05).
        synchronized: BatchNorm statistics over all replicas.
        align_corners: resize mode inside the network (NVIDIA: False; True only to experiment).
        weights: a local backbone weight file (`load_backbone_weights`), or None.
        name: the model's name.
    """
    from ocr_tf.backbones import hrnet_backbone, load_backbone_weights  # (backbones import layers)

    backbone = hrnet_backbone(extra, input_shape, align_corners, synchronized)
    if weights is not None:
        load_backbone_weights(backbone, weights)
    inputs = keras.Input(input_shape, name="image")
    head = MscaleOCRHead(
        num_classes, attn_channels=attn_channels, mid_channels=mid_channels, key_channels=key_channels,
        dropout=dropout, align_corners=align_corners, synchronized=synchronized, name="head",
    )
    out = head(backbone(inputs))
    outputs = {k: keras.layers.Identity(name=k, dtype="float32")(out[k]) for k in OUTPUT_KEYS}
    return keras.Model(inputs, outputs, name=name)


def attention_head_params(in_channels, attn_channels):
    """Trainable parameters of `ScaleAttentionHead` (PyTorch's count: BN gamma and beta, no
    running statistics): two 3x3 convs, two BNs, one 1x1 conv to one channel."""
    c = attn_channels
    return 9 * in_channels * c + 2 * c + 9 * c * c + 2 * c + c


def is_mscale(network):
    """Whether `network` (or a Segmenter's `.network`) is a multi-scale attention network, i.e.
    its outputs include "attention" (so it survives saving and loading)."""
    network = getattr(network, "network", network)
    outputs = getattr(network, "output", None)
    return isinstance(outputs, dict) and "attention" in outputs


# ------------------------------------------------------------------------------ scales and merge


def _static(values):
    return all(isinstance(v, int) for v in values)


def _resize(x, size):
    """Bilinear, half-pixel centres, no antialiasing (PyTorch align_corners=False); identity at
    equal size (also the result of the resize itself, so skipping it changes nothing)."""
    if not _static(size):
        # keras.ops.image.resize needs Python-int sizes; sizes known only when a graph runs (any
        # image size in one tf.function) go through the shared TF resize with the same semantics.
        return resize_bilinear(x, ops.stack(size), align_corners=False)
    if tuple(x.shape[1:3]) == tuple(size):
        return x
    return ops.image.resize(x, tuple(size), interpolation="bilinear", antialias=False)


def _hw(x):
    shape = ops.shape(x)
    return shape[1], shape[2]


def scaled_size(height, width, scale):
    """(floor(H * s), floor(W * s)), PyTorch's size for `scale_factor=s` with recompute (in
    float64, as Python computes it; also for sizes only known when the graph runs)."""
    if _static((height, width)):
        return int(math.floor(height * scale)), int(math.floor(width * scale))
    return tuple(ops.cast(ops.floor(ops.cast(v, "float64") * scale), "int32") for v in (height, width))


def check_scales(scales):
    """Sorted high -> low floats; 1.0 must be present (the target scale, as NVIDIA asserts)."""
    scales = sorted((float(s) for s in scales), reverse=True)
    if not scales or min(scales) <= 0:
        raise ValueError(f"scales must be positive numbers, got {scales}.")
    if 1.0 not in scales:
        raise ValueError(f"hierarchical multi-scale inference needs 1.0 among the scales, got {scales}.")
    if len(set(scales)) != len(scales):
        raise ValueError(f"scales must not repeat, got {scales}.")
    return scales


def scale_outputs(network, images, scale, training=False):
    """NVIDIA's `_fwd` at one scale: resize `images` (B, H, W, 3) to the scaled size, run the
    network, resize logits, aux logits and attention to that scaled size. Returns the dict."""
    height, width = _hw(images)
    size = scaled_size(height, width, scale)
    x = images if scale == 1.0 else _resize(images, size)
    out = network(x, training=training)
    return {k: _resize(ops.cast(out[k], "float32"), size) for k in OUTPUT_KEYS}


def nscale_merge(outputs):
    """Hierarchical merge of per-scale outputs {scale: {"logits", "aux_logits", "attention"}}
    (each at its scaled input's size), scales high -> low, as NVIDIA's `nscale_forward`:

      the highest scale starts `pred`;
      s >= 1:  pred = a_s * p_s + (1 - a_s) * down(pred)
      s < 1:   pred = up(a_s * p_s) + (1 - up(a_s)) * pred   (the product at low resolution)

    Returns {"logits", "aux_logits"} at the size of scale 1.0's output.
    """
    merged = None
    for s in check_scales(outputs):
        out = outputs[s]
        a = out["attention"]
        if merged is None:
            merged = {k: out[k] for k in ("logits", "aux_logits")}
        elif s >= 1.0:
            size = _hw(a)
            merged = {k: a * out[k] + (1.0 - a) * _resize(merged[k], size) for k in merged}
        else:
            size = _hw(merged["logits"])
            up_a = _resize(a, size)
            merged = {k: _resize(a * out[k], size) + (1.0 - up_a) * merged[k] for k in merged}
    return merged


def mscale_predict(network, images, scales=(0.5, 1.0, 2.0), return_attention=False):
    """Multi-scale logits (B, H, W, K) float32 at the input size by the hierarchical merge.

    Args:
        network: a network from `build_mscale_ocr` (or a Segmenter holding one).
        images: normalised float32 images (B, H, W, 3).
        scales: any scales containing 1.0 (e.g. NVIDIA's Cityscapes evaluation: 0.5, 1.0, 2.0).
        return_attention: also return {scale: attention (B, h_s, w_s, 1)} (the top scale's is
            computed but unused by the merge, as in NVIDIA's code).
    Returns logits, or (logits, attention dict).
    """
    network = getattr(network, "network", network)
    images = ops.cast(ops.convert_to_tensor(images), "float32")
    outputs = {s: scale_outputs(network, images, s) for s in check_scales(scales)}
    logits = nscale_merge(outputs)["logits"]
    if return_attention:
        return logits, {s: out["attention"] for s, out in outputs.items()}
    return logits


def two_scale_outputs(network, images, lo_scale=0.5, training=True):
    """NVIDIA's `two_scale_forward` for training: scales `lo_scale` and 1.0, merged as
    pred = up(a_lo * p_lo) + (1 - up(a_lo)) * p_1x (aux the same). All at the input size:
    {"logits", "aux_logits"} merged, "logits_lo" = up(p_lo), "logits_hi" = p_1x,
    "attention" = up(a_lo)."""
    lo = scale_outputs(network, images, float(lo_scale), training=training)
    hi = scale_outputs(network, images, 1.0, training=training)
    merged = nscale_merge({float(lo_scale): lo, 1.0: hi})
    size = _hw(hi["logits"])
    merged["logits_lo"] = _resize(lo["logits"], size)
    merged["logits_hi"] = hi["logits"]
    merged["attention"] = _resize(lo["attention"], size)
    return merged


@keras.saving.register_keras_serializable(package="ocr_tf")
class FixedScalesNetwork(keras.Model):
    """A multi-scale network with its scale list fixed, for export: `call(images)` ->
    {"logits": `mscale_predict(network, images, scales)`, "aux_logits": the merged aux logits},
    both at the input size. `ocr_tf.export.export_saved_model(FixedScalesNetwork(net, (0.5, 1.0,
    2.0)), ...)` then serves the hierarchical merge (its resize to the input size is the identity).

    Args:
        network: a `build_mscale_ocr` network.
        scales: the scales to merge (must contain 1.0).
    """

    def __init__(self, network, scales=(0.5, 1.0, 2.0), **kwargs):
        super().__init__(**kwargs)
        self.network = getattr(network, "network", network)
        self.scales = tuple(check_scales(scales))
        self.built = self.network.built  # no variables of its own: ready to export as it is

    def call(self, images, training=False):
        images = ops.cast(images, "float32")
        outputs = {s: scale_outputs(self.network, images, s) for s in self.scales}
        return nscale_merge(outputs)

    def get_config(self):
        config = super().get_config()
        config.update(network=keras.saving.serialize_keras_object(self.network), scales=list(self.scales))
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["network"] = keras.saving.deserialize_keras_object(config["network"])
        return cls(**config)
