"""The paper's training augmentation, as stateless TF ops (reproducible from a seed per example).

Order as in the official HRNet-OCR code: random scale -> random crop (pad the bottom/right with
image 0 and label ignore when the scaled image is smaller than the crop) -> brightness -> flip.

Scale and crop are fused: only the crop window of the scaled image is computed, by sampling the
source exactly where a full `tf.image.resize` (bilinear, half-pixel centres; nearest for labels)
would, so the result equals resize-then-crop (tested) without resizing a 2048x1024 image to
4096x2048 first. Padding uses raw pixel value 0 (black), before normalisation, like the
reference, which pads the 0-255 image with 0 and normalises afterwards; brightness is applied to
the real pixels only, so the padded area stays exactly 0.
"""

import tensorflow as tf

IGNORE_LABEL = 255


def _uniform(seed, low, high):
    return tf.random.stateless_uniform([], seed, minval=low, maxval=high, dtype=tf.float32)


def _randint(seed, low, high_inclusive):
    """Uniform int32 in [low, high_inclusive]."""
    return tf.random.stateless_uniform([], seed, minval=low, maxval=high_inclusive + 1, dtype=tf.int32)


def scaled_window(image, label, scaled_size, offset, window, ignore_label=IGNORE_LABEL):
    """Rows/cols [offset, offset + window) of image/label resized to `scaled_size`.

    image uint8/float [h,w,3] (bilinear, half-pixel centres, like tf.image.resize), label uint8
    [h,w] (nearest, like tf.image.resize(method='nearest')). Outside the scaled image the window
    is padded: image 0, label `ignore_label`. Returns float32 [wh,ww,3], uint8 [wh,ww] and the
    bool [wh,ww] mask of real (not padded) pixels.
    """
    h, w = tf.shape(image)[0], tf.shape(image)[1]
    big_h, big_w = scaled_size[0], scaled_size[1]
    win_h, win_w = window
    scale_y = tf.cast(h, tf.float32) / tf.cast(big_h, tf.float32)
    scale_x = tf.cast(w, tf.float32) / tf.cast(big_w, tf.float32)
    oy, ox = tf.cast(offset[0], tf.float32), tf.cast(offset[1], tf.float32)

    # Image: crop_and_resize samples a linear grid of source coordinates; choose its box so the
    # grid is (out + 0.5) * scale - 0.5, as in tf.image.resize. Only the source rows/cols the
    # window reads are sliced out, then padded by one replicated pixel so coordinates in
    # [-0.5, 0) and (h-1, h-0.5] read the edge pixel, as tf.image.resize clamps them.
    y_first = (oy + 0.5) * scale_y - 0.5
    x_first = (ox + 0.5) * scale_x - 0.5
    y_last = y_first + (win_h - 1) * scale_y
    x_last = x_first + (win_w - 1) * scale_x
    r0 = tf.clip_by_value(tf.cast(tf.floor(y_first), tf.int32), 0, h - 1)
    c0 = tf.clip_by_value(tf.cast(tf.floor(x_first), tf.int32), 0, w - 1)
    r1 = tf.clip_by_value(tf.cast(tf.math.ceil(y_last), tf.int32), r0, h - 1) + 1
    c1 = tf.clip_by_value(tf.cast(tf.math.ceil(x_last), tf.int32), c0, w - 1) + 1
    source = tf.pad(image[r0:r1, c0:c1], [[1, 1], [1, 1], [0, 0]], mode="SYMMETRIC")
    span_y = tf.cast(r1 - r0 + 1, tf.float32)  # padded slice size - 1
    span_x = tf.cast(c1 - c0 + 1, tf.float32)
    y0 = y_first - tf.cast(r0, tf.float32) + 1.0
    x0 = x_first - tf.cast(c0, tf.float32) + 1.0
    box = tf.stack([y0 / span_y, x0 / span_x, (y0 + y_last - y_first) / span_y,
                    (x0 + x_last - x_first) / span_x])[None]
    out = tf.image.crop_and_resize(tf.cast(source, tf.float32)[None], box, [0], [win_h, win_w],
                                   method="bilinear", extrapolation_value=0.0)[0]

    # Label: nearest neighbour, source index floor((out + 0.5) * scale) clamped to the last row.
    rows = tf.range(win_h, dtype=tf.float32) + oy
    cols = tf.range(win_w, dtype=tf.float32) + ox
    src_rows = tf.minimum(tf.cast(tf.floor((rows + 0.5) * scale_y), tf.int32), h - 1)
    src_cols = tf.minimum(tf.cast(tf.floor((cols + 0.5) * scale_x), tf.int32), w - 1)
    lab = tf.gather(tf.gather(label, src_rows, axis=0), src_cols, axis=1)

    valid_rows = tf.cast(offset[0], tf.int32) + tf.range(win_h) < big_h
    valid_cols = tf.cast(offset[1], tf.int32) + tf.range(win_w) < big_w
    valid = tf.logical_and(valid_rows[:, None], valid_cols[None, :])
    out = tf.where(valid[..., None], out, 0.0)
    lab = tf.where(valid, lab, tf.constant(ignore_label, label.dtype))
    return out, lab, valid


def random_scale_crop(image, label, seed, crop_size, scale_range=(0.5, 2.0), base_size=None,
                      ignore_label=IGNORE_LABEL):
    """Random scale in `scale_range` then a random `crop_size` window (padded where too small).

    With `base_size` the scale is relative to an image whose long side is `base_size` (the
    references do this for ADE20K/PASCAL-Context/COCO-Stuff/LIP, whose images vary in size);
    without it, relative to the image itself. Returns float32 image, uint8 label, bool valid mask.
    """
    seeds = tf.random.experimental.stateless_split(seed, 3)
    h, w = tf.shape(image)[0], tf.shape(image)[1]
    scale = _uniform(seeds[0], scale_range[0], scale_range[1])
    if base_size:
        scale = scale * float(base_size) / tf.cast(tf.maximum(h, w), tf.float32)
    big_h = tf.maximum(tf.cast(tf.round(tf.cast(h, tf.float32) * scale), tf.int32), 1)
    big_w = tf.maximum(tf.cast(tf.round(tf.cast(w, tf.float32) * scale), tf.int32), 1)
    crop_h, crop_w = crop_size
    oy = _randint(seeds[1], 0, tf.maximum(big_h - crop_h, 0))
    ox = _randint(seeds[2], 0, tf.maximum(big_w - crop_w, 0))
    return scaled_window(image, label, (big_h, big_w), (oy, ox), (crop_h, crop_w), ignore_label)


def random_brightness(image, seed, max_delta=10, valid=None):
    """With probability 1/2 add one integer in [-max_delta, max_delta] to every channel, clip 0-255.

    `valid` (bool [H,W]) limits the shift to real pixels, leaving padding at 0.
    """
    if not max_delta:
        return image
    seeds = tf.random.experimental.stateless_split(seed, 2)
    apply = _uniform(seeds[0], 0.0, 1.0) < 0.5
    delta = tf.cast(_randint(seeds[1], -int(max_delta), int(max_delta)), tf.float32)
    delta = tf.where(apply, delta, 0.0)
    if valid is not None:
        return tf.clip_by_value(image + delta * tf.cast(valid, tf.float32)[..., None], 0.0, 255.0)
    return tf.clip_by_value(image + delta, 0.0, 255.0)


def flip_table(flip_pairs):
    """uint8 lookup table of 256 swapping each (a, b) pair of train ids."""
    table = list(range(256))
    for a, b in flip_pairs:
        table[a], table[b] = b, a
    return tf.constant(table, tf.uint8)


def random_flip(image, label, seed, flip_pairs=()):
    """With probability 1/2 mirror left-right; labels in `flip_pairs` swap (left arm <-> right arm)."""
    apply = _uniform(seed, 0.0, 1.0) < 0.5

    def flip():
        flipped = tf.reverse(label, [1])
        if flip_pairs:
            flipped = tf.gather(flip_table(flip_pairs), tf.cast(flipped, tf.int32))
        return tf.reverse(image, [1]), flipped

    return tf.cond(apply, flip, lambda: (image, label))


def train_augment(image, label, seed, crop_size, scale_range=(0.5, 2.0), flip=True, brightness=10,
                  flip_pairs=(), base_size=None, ignore_label=IGNORE_LABEL):
    """The whole training augmentation for one example: float32 [ch,cw,3] 0-255, uint8 [ch,cw]."""
    seeds = tf.random.experimental.stateless_split(seed, 3)
    if scale_range is None:
        scale_range = (1.0, 1.0)
    image, label, valid = random_scale_crop(image, label, seeds[0], crop_size, scale_range,
                                            base_size, ignore_label)
    image = random_brightness(image, seeds[1], brightness, valid)
    if flip:
        image, label = random_flip(image, label, seeds[2], flip_pairs)
    image.set_shape([crop_size[0], crop_size[1], 3])
    label.set_shape([crop_size[0], crop_size[1]])
    return image, label
