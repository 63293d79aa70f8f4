"""Test-time inference: whole image or sliding windows, multi-scale, flip; merged as [HR] does.

What `predict_logits` computes, for normalised images x (B, H, W, 3):

  for each scale s: resize x bilinearly (half-pixel, as cv2.INTER_LINEAR) to
      (int(H * s + 0.5), int(W * s + 0.5)) and score it
      * "whole": one pass over the scaled image;
      * "slide": windows of `crop_size` every `stride` (default 2/3 of the crop, [HR]); the
        last window in each direction is moved back to end at the image border (as [HR]'s
        Cityscapes code and mmsegmentation), so windows never need padding unless the image is
        smaller than the crop: then the image is padded bottom/right with black (its
        normalised value, as [HR]) and the padding cut off again. Overlaps are averaged.
    scoring one input: the model's "logits" are resized to the input size (bilinear,
    `align_corners`), and with `flip` averaged with the logits of the mirrored input (mirrored
    back, `flip_pairs` channels swapped, e.g. LIP's left/right arm, leg, shoe), then
    exponentiated: exp(logits) ([HR]; merge="softmax" uses probabilities instead);
  the per-scale maps are resized to (H, W) (bilinear, `align_corners`) and **summed** ([HR]).

The result is non-negative scores (B, H, W, K); its argmax is the prediction. With merge="exp"
and one scale/no flip, log(scores) equals the resized logits.

A multi-scale attention network (`*_mscale_ocr`, given itself rather than wrapped in a function)
merges its scales by NVIDIA's hierarchical attention (`ocr_tf.layers.mscale.mscale_predict`; the
scales must contain 1.0) in place of the sum above; flip averages the merged logits of the image
and its mirror, as NVIDIA's evaluation does.
"""

import numpy as np
import tensorflow as tf

from ocr_tf.layers.common import resize_bilinear
from ocr_tf.layers.mscale import check_scales, is_mscale
from ocr_tf.preprocessing import normalize_image

MODES = ("whole", "slide")
MERGES = ("exp", "softmax")


def _pair(value, name):
    if value is None:
        return None
    if np.isscalar(value):
        value = (value, value)
    value = tuple(int(v) for v in value)
    if len(value) != 2 or min(value) < 1:
        raise ValueError(f"{name} must be a positive int or (height, width), got {value}.")
    return value


def _logits_of(output):
    """The final logits of a model output: a dict with "logits", or a tensor."""
    if isinstance(output, dict):
        if "logits" not in output:
            raise ValueError(f"model output has keys {sorted(output)}; expected a 'logits' entry.")
        output = output["logits"]
    return tf.cast(output, tf.float32)


def window_positions(length, crop, stride):
    """Start offsets of windows of size `crop` every `stride` covering [0, length); the last one
    ends at `length` (moved back). One window at 0 when length <= crop."""
    if length <= crop:
        return [0]
    count = int(np.ceil((length - crop) / stride)) + 1
    return sorted({min(i * stride, length - crop) for i in range(count)})


class _Scorer:
    """Scores one (padded) input: logits resized to the input, flip-averaged, exponentiated.
    With `mscale_scales`, the logits are the hierarchical multi-scale merge of a multi-scale
    attention network (ocr_tf/layers/mscale.py) instead of one pass."""

    def __init__(self, model, num_classes, flip, flip_pairs, align_corners, merge, mscale_scales=None):
        self.model = model
        self.mscale = None
        if mscale_scales is not None:
            from ocr_tf.layers.mscale import mscale_predict

            network = getattr(model, "network", model)
            self.mscale = tf.function(lambda x: mscale_predict(network, x, mscale_scales), reduce_retracing=True)
        self.num_classes = num_classes
        self.flip = flip
        self.align_corners = align_corners
        self.merge = merge
        perm = list(range(num_classes))
        for a, b in flip_pairs:
            if not (0 <= a < num_classes and 0 <= b < num_classes):
                raise ValueError(f"flip pair ({a}, {b}) is outside the {num_classes} classes.")
            perm[a], perm[b] = perm[b], perm[a]
        self.perm = None if perm == list(range(num_classes)) else tf.constant(perm)

    def logits(self, x):
        if self.mscale is not None:  # already at the input size
            return self.mscale(x)
        logits = _logits_of(self.model(x))
        if logits.shape[-1] != self.num_classes:
            raise ValueError(f"model gives {logits.shape[-1]} classes, num_classes is {self.num_classes}.")
        return resize_bilinear(logits, tf.shape(x)[1:3], self.align_corners)

    def __call__(self, x):
        logits = self.logits(x)
        if self.flip:
            flipped = tf.reverse(self.logits(tf.reverse(x, axis=[2])), axis=[2])
            if self.perm is not None:
                flipped = tf.gather(flipped, self.perm, axis=-1)
            logits = 0.5 * (logits + flipped)
        return tf.exp(logits) if self.merge == "exp" else tf.nn.softmax(logits, axis=-1)


def _pad_to(x, size, value):
    """Pad NHWC `x` bottom/right to at least `size` with the per-channel `value`."""
    pad_h = max(size[0] - x.shape[1], 0)
    pad_w = max(size[1] - x.shape[2], 0)
    if not pad_h and not pad_w:
        return x
    padded = tf.pad(x - value, [[0, 0], [0, pad_h], [0, pad_w], [0, 0]])
    return padded + value


def _slide(score, x, crop, stride, num_classes):
    h, w = x.shape[1], x.shape[2]
    black = normalize_image(tf.zeros([3], tf.uint8))  # what [HR] pads with
    x = _pad_to(x, crop, black)
    ph, pw = x.shape[1], x.shape[2]
    # Accumulate in host memory: a full-size device tensor per window would not fit at
    # Cityscapes multi-scale sizes.
    total = np.zeros([x.shape[0], ph, pw, num_classes], np.float32)
    count = np.zeros([ph, pw], np.float32)
    for top in window_positions(ph, crop[0], stride[0]):
        for left in window_positions(pw, crop[1], stride[1]):
            bottom, right = min(top + crop[0], ph), min(left + crop[1], pw)
            total[:, top:bottom, left:right] += score(x[:, top:bottom, left:right]).numpy()
            count[top:bottom, left:right] += 1
    total /= count[None, :, :, None]
    return tf.constant(total[:, :h, :w])


def predict_logits(
    model,
    image,
    *,
    num_classes,
    mode="whole",
    crop_size=None,
    stride=None,
    scales=(1.0,),
    flip=False,
    flip_pairs=(),
    align_corners=True,
    merge="exp",
):
    """Merged class scores (B, H, W, K) float32 at the image size (see the module docstring).

    model: a Keras model or any callable mapping normalised float32 images (B, h, w, 3) to
        logits (B, h', w', K) or a dict with "logits" (a `tf.function` of it is faster).
    image: normalised float32 image(s), (H, W, 3) or (B, H, W, 3); a 3-D input gives 3-D output.
    mode: "whole" or "slide" (needs `crop_size`; `stride` defaults to 2/3 of it).
    scales: image scale factors; flip: also score the mirrored image; flip_pairs: class index
        pairs swapped in the mirrored prediction.
    merge: "exp" (exp(logits), [HR]) or "softmax" (probabilities).
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}.")
    if merge not in MERGES:
        raise ValueError(f"merge must be one of {MERGES}, got {merge!r}.")
    num_classes = int(num_classes)
    crop = _pair(crop_size, "crop_size")
    if mode == "slide":
        if crop is None:
            raise ValueError("mode='slide' needs crop_size.")
        stride = _pair(stride, "stride") or (max(crop[0] * 2 // 3, 1), max(crop[1] * 2 // 3, 1))
    scales = tuple(float(s) for s in scales)
    if not scales or min(scales) <= 0:
        raise ValueError(f"scales must be positive numbers, got {scales}.")

    x = tf.convert_to_tensor(image, tf.float32)
    single = x.shape.rank == 3
    if single:
        x = x[None]
    if x.shape.rank != 4 or x.shape[-1] != 3:
        raise ValueError(f"image must be (H, W, 3) or (B, H, W, 3), got shape {tuple(x.shape)}.")
    height, width = x.shape[1], x.shape[2]
    mscale_scales = None
    if is_mscale(model):  # NVIDIA's hierarchical merge replaces the sum over scales (issue 15)
        mscale_scales, scales = tuple(check_scales(scales)), (1.0,)
    score = _Scorer(model, num_classes, flip, flip_pairs, align_corners, merge, mscale_scales)

    total = None
    for s in scales:
        size = (int(height * s + 0.5), int(width * s + 0.5))
        xs = x if size == (height, width) else resize_bilinear(x, size, align_corners=False)
        scores = score(xs) if mode == "whole" else _slide(score, xs, crop, stride, num_classes)
        if size != (height, width):
            scores = resize_bilinear(scores, (height, width), align_corners)
        total = scores if total is None else total + scores
    return total[0] if single else total


def compiled_runner(network):
    """`network(x, training=False)` as a `tf.function` that retraces only on new ranks/dtypes; a
    multi-scale attention network is returned as is (`predict_logits` compiles its merge)."""
    if is_mscale(network):
        return network
    return tf.function(lambda x: network(x, training=False), reduce_retracing=True)


def logits_to_labels(logits, size, align_corners):
    """The one "resize, then argmax": logits (B, h, w, K) -> int32 labels (B, H, W) at `size`
    (bilinear, `align_corners` as the model was trained; `tf.math.argmax`, which unlike
    `keras.ops.argmax` quantizes in TFLite)."""
    logits = resize_bilinear(tf.cast(logits, tf.float32), size, align_corners)
    return tf.math.argmax(logits, axis=-1, output_type=tf.int32)


def predict_labels(model, image, **kwargs):
    """argmax of `predict_logits` as int32 labels (B, H, W) or (H, W)."""
    return tf.math.argmax(predict_logits(model, image, **kwargs), axis=-1, output_type=tf.int32)
