"""Pictures of the scale attention of a multi-scale attention network (`python -m ocr_tf.predict
--attention`): how much each scale's prediction is trusted, per pixel."""

import numpy as np


def attention_strip(image, attention, tile_inches=2.8, dpi=100):
    """The image, then one heat map per scale (0 = the merge keeps the higher scales' prediction,
    1 = it takes this scale's), titled "attention x<scale>".

    Args:
        image: uint8 RGB (H, W, 3).
        attention: {scale: (h, w) or (h, w, 1) array in [0, 1]}; drawn over the image's extent.
    Returns the rendered PNG as a uint8 RGB array.
    """
    import matplotlib

    matplotlib.use("Agg")  # no display on servers
    import matplotlib.pyplot as plt
    from PIL import Image

    if not attention:
        raise ValueError("no attention maps to draw: give at least two scales (the top one has none).")
    tiles = [("image", image)] + [(f"attention x{s:g}", np.squeeze(np.asarray(a), -1) if np.ndim(a) == 3 else np.asarray(a))
                                  for s, a in sorted(attention.items())]
    h, w = image.shape[:2]
    aspect = h / w
    fig, axes = plt.subplots(1, len(tiles), figsize=(tile_inches * len(tiles), tile_inches * aspect + 0.4), dpi=dpi)
    for ax, (title, data) in zip(np.atleast_1d(axes), tiles):
        if data.ndim == 3:
            ax.imshow(data)
        else:
            ax.imshow(data, cmap="magma", vmin=0.0, vmax=1.0, extent=(0, w, h, 0))
        ax.set_title(title, fontsize=9)
        ax.axis("off")
    fig.tight_layout()
    fig.canvas.draw()
    rgba = np.asarray(fig.canvas.buffer_rgba())
    plt.close(fig)
    return np.asarray(Image.fromarray(rgba).convert("RGB"))
