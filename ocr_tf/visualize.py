"""Pictures of predictions: colour masks, overlays and the soft object regions (paper Fig. 5).

All functions take and return NumPy arrays (uint8 RGB images, int label maps); `region_grid`
draws with matplotlib (Agg backend, no display needed) and returns the picture as an array.
"""

import io
import os

import numpy as np

from ocr_tf.preprocessing import IGNORE_LABEL

IGNORE_COLOR = (0, 0, 0)


def palette_array(palette, ignore_label=IGNORE_LABEL):
    """(256, 3) uint8 lookup: class k -> palette[k]; every other value (ignore) -> black."""
    palette = np.asarray(palette, np.uint8)
    if palette.ndim != 2 or palette.shape[1] != 3 or len(palette) > 256:
        raise ValueError(f"palette must be (K <= 256, 3) RGB colours, got shape {palette.shape}.")
    table = np.zeros((256, 3), np.uint8)
    table[: len(palette)] = palette
    if ignore_label < 256:
        table[ignore_label] = IGNORE_COLOR
    return table


def colorize(labels, palette, ignore_label=IGNORE_LABEL):
    """int label map (H, W) -> uint8 RGB (H, W, 3) with the dataset palette (ignore: black)."""
    labels = np.asarray(labels)
    if labels.size and (labels.min() < 0 or labels.max() > 255):
        raise ValueError(f"labels must be in 0..255 to colorize, got {labels.min()}..{labels.max()}.")
    return palette_array(palette, ignore_label)[labels.astype(np.uint8)]


def overlay(image, color_mask, alpha=0.5):
    """Blend an RGB colour mask over an RGB image of the same size: (1 - alpha) image + alpha mask."""
    image = np.asarray(image)
    color_mask = np.asarray(color_mask)
    if image.shape != color_mask.shape or image.ndim != 3 or image.shape[-1] != 3:
        raise ValueError(f"image {image.shape} and colour mask {color_mask.shape} must both be (H, W, 3).")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}.")
    blended = (1.0 - alpha) * image.astype(np.float32) + alpha * color_mask.astype(np.float32)
    return np.clip(np.rint(blended), 0, 255).astype(np.uint8)


def soft_regions(aux_logits):
    """Soft object regions (h, w, K): the aux logits softmaxed over space per class, exactly the
    weights the gather step (eq. 4) uses; each class's map sums to 1."""
    a = np.asarray(aux_logits, np.float64)
    if a.ndim != 3:
        raise ValueError(f"aux_logits must be (h, w, K), got shape {a.shape}.")
    flat = a.reshape(-1, a.shape[-1])
    flat = np.exp(flat - flat.max(axis=0, keepdims=True))
    return (flat / flat.sum(axis=0, keepdims=True)).reshape(a.shape)


def region_grid(aux_logits, class_names, image=None, classes=None, columns=5, tile_inches=2.4, dpi=100):
    """A grid of heat maps of the K soft object regions, titled with the class names.

    aux_logits: (h, w, K) of one image. image: optional uint8 RGB shown first (resized by
    matplotlib to the tile). classes: which class indices to draw (default all K, in order).
    Each heat map is scaled to its own maximum (the region maps sum to 1 over space, so their
    peaks differ by orders of magnitude between large and small objects).
    Returns the rendered PNG as a uint8 RGB array.
    """
    import matplotlib

    matplotlib.use("Agg")  # no display on servers
    import matplotlib.pyplot as plt
    from PIL import Image

    regions = soft_regions(aux_logits)
    k = regions.shape[-1]
    if len(class_names) != k:
        raise ValueError(f"{len(class_names)} class names for {k} soft object regions.")
    classes = list(range(k)) if classes is None else [int(c) for c in classes]
    bad = [c for c in classes if not 0 <= c < k]
    if bad:
        raise ValueError(f"classes {bad} are outside the {k} regions.")
    tiles = ([("image", None)] if image is not None else []) + [(class_names[c], c) for c in classes]
    columns = max(1, min(columns, len(tiles)))
    rows = -(-len(tiles) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(columns * tile_inches, rows * tile_inches), dpi=dpi)
    axes = np.atleast_1d(axes).ravel()
    try:
        for ax in axes:
            ax.axis("off")
        for ax, (title, c) in zip(axes, tiles):
            if c is None:
                ax.imshow(image)
            else:
                ax.imshow(regions[..., c], cmap="jet", vmin=0.0, vmax=regions[..., c].max())
            ax.set_title(title, fontsize=9)
        fig.suptitle("soft object regions", fontsize=10)
        fig.tight_layout()
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png")
    finally:
        plt.close(fig)
    buffer.seek(0)
    return np.array(Image.open(buffer).convert("RGB"))


def save_png(array, path):
    """Write a uint8 array (H, W) or (H, W, 3) as PNG, to a temporary name then renamed."""
    from PIL import Image

    array = np.asarray(array)
    if array.dtype != np.uint8:
        raise ValueError(f"{path}: PNG data must be uint8, got {array.dtype}.")
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        Image.fromarray(array).save(tmp, format="PNG")
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
