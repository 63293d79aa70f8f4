"""Reading images and label masks: one place that decides what a file's pixels mean.

Used by `ocr_tf.data.convert` (every image and mask is decoded in full before it is stored),
by the data doctor (`ocr_tf.data.check`) and by `ocr_tf.predict`.

* 16-bit images (PNG/TIFF, grey or RGB) are scaled to 8 bits by the range of their bit depth,
  `value // 256`: the mapping `tf.image.convert_image_dtype` and Pillow's own 16-bit RGB reader
  use, the same for every image of a data set (a per-image min..max stretch would give the
  same scene different colours in different files). Nothing is clipped. An image whose 16-bit
  values use only a few low bits (e.g. 12-bit sensor data) therefore comes out dark: the data
  doctor reports it. Other bit depths (32-bit integer, float) are refused with the reason.
* Palette ("P") PNG masks are read as their palette indices: the indices are the class ids,
  the palette only colours them for viewers.
* Truncated or corrupt files raise `ImageReadError` naming the file (Pillow decodes lazily, so
  opening is not enough: we decode every pixel).
* Colour-coded RGB masks raise `ColourMaskError` listing the colours found, unless a colour
  table (class colours given in classes.txt as `name R G B`) maps each colour to its class.
"""

import collections
import io

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from ocr_tf.errors import UserError

SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")


# An image ready for a record: the bytes to store, (width, height), bits per channel of the file,
# and for 16-bit files the brightest 8-bit value after scaling (the data doctor flags dark ones).
Encoded = collections.namedtuple("Encoded", "data size bit_depth peak")


class ImageReadError(UserError):
    """An image or mask file that cannot be decoded (truncated, corrupt, not an image)."""


class ColourMaskError(UserError):
    """A mask stored as colours instead of class ids; `colours` holds [(rgb, pixel count)]."""

    def __init__(self, message, colours=()):
        super().__init__(message)
        self.colours = list(colours)


def sniff_format(data):
    """'png' or 'jpeg' from the first bytes of an encoded image, else None."""
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return "png"
    if data[:3] == b"\xff\xd8\xff":
        return "jpeg"
    return None


def encode_png(array):
    """uint8 HxW or HxWx3 array -> PNG bytes (fast compression: decode speed does not depend on it)."""
    buf = io.BytesIO()
    Image.fromarray(np.asarray(array, np.uint8)).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def decode_bytes(data, path, what):
    """A PIL image with every pixel decoded.

    Args:
      data: the encoded file's bytes.
      path: the file (or record) named in the error.
      what: 'image', 'mask' or 'label', for the error.
    Raises ImageReadError naming `path` when the bytes are not an image or are cut short.
    """
    try:
        image = Image.open(io.BytesIO(data))
        image.load()
        return image
    except UnidentifiedImageError:
        raise ImageReadError(f"cannot read {what} {path}: not an image (expected PNG, JPEG, BMP, TIFF "
                             "or WebP)") from None
    except (OSError, SyntaxError, ValueError) as e:  # Pillow's kinds for a short or corrupt file
        reason = str(e) or e.__class__.__name__
        hint = "truncated or corrupt" if "truncat" in reason.lower() or "broken" in reason.lower() else "corrupt"
        raise ImageReadError(f"cannot read {what} {path}: {hint} ({reason}); re-copy or re-export "
                             "the file") from None


def _read_bytes(path, what):
    try:
        with open(path, "rb") as f:
            return f.read()
    except FileNotFoundError:
        from ocr_tf.errors import MissingFileError

        raise MissingFileError(f"{what} {path} does not exist") from None
    except IsADirectoryError:
        raise ImageReadError(f"{what} {path} is a folder, expected an image file") from None


def png_bit_depth(data):
    """Bits per channel of PNG bytes (IHDR), or None if `data` is not a PNG."""
    if data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 24:
        return data[24]
    return None


def bit_depth(image, data=b""):
    """8 or 16 (bits per channel) for a decoded PIL image; 32 for 32-bit int/float modes."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N"):
        return 16
    if png_bit_depth(data) == 16:  # 16-bit RGB(A) PNGs open as 8-bit "RGB" (high bytes)
        return 16
    if image.mode == "I":
        if image.format == "PNG":  # Pillow's PNG reader only gives "I" for 16-bit grey
            return 16
        return 32
    if image.mode == "F":
        return 32
    return 8


def to_rgb8(image, path, data):
    """uint8 HxWx3 of a decoded PIL image; 16-bit scaled by value // 256 (see module doc).

    Args:
      image: from `decode_bytes`.
      path: the file (or record) named in errors.
      data: its encoded bytes (a 16-bit RGB PNG is told from its header).
    """
    if image.mode in SIXTEEN_BIT_MODES:
        array = np.asarray(image)
        if image.mode == "I" and bit_depth(image, data) == 32:
            lo, hi = int(array.min(initial=0)), int(array.max(initial=0))
            if lo < 0 or hi > 65535:
                raise ImageReadError(
                    f"image {path} holds 32-bit integers ({lo}..{hi}); save it as 8- or 16-bit PNG/JPEG")
        grey = (array.astype(np.uint32) // 256).astype(np.uint8)
        return np.repeat(grey[..., None], 3, axis=-1)
    if image.mode == "F":
        raise ImageReadError(f"image {path} holds 32-bit floats; save it as an 8- or 16-bit PNG/JPEG "
                             "(we cannot know which values mean black and white)")
    return np.asarray(image.convert("RGB"))


def read_image(path, exif=True):
    """uint8 RGB (H, W, 3) of an image file, decoded in full.

    Args:
      path: image file (PNG, JPEG, BMP, TIFF, WebP; 8 or 16 bits per channel).
      exif: apply the EXIF orientation (what a photo viewer shows). Conversion passes False:
        masks carry no EXIF, so rotating the image alone would misalign the pair.
    Raises ImageReadError naming the file when it is not an image or is truncated/corrupt.
    """
    data = _read_bytes(path, "image")
    image = decode_bytes(data, path, "image")
    if exif:
        image = ImageOps.exif_transpose(image)
    return to_rgb8(image, path, data)


def encoded_image(path):
    """`Encoded(data, size, bit_depth, peak)` of an image file, decoded in full first.

    The file's own bytes when it is an 8-bit PNG or JPEG in RGB or grey (exact pixels, no
    re-encoding); otherwise a PNG of `read_image(path, exif=False)` (16-bit scaled to 8-bit,
    palette/RGBA/CMYK to RGB).
    """
    data = _read_bytes(path, "image")
    image = decode_bytes(data, path, "image")
    depth = bit_depth(image, data)
    if sniff_format(data) is not None and image.mode in ("RGB", "L") and depth == 8:
        return Encoded(data, image.size, depth, None)
    rgb = to_rgb8(image, path, data)
    return Encoded(encode_png(rgb), image.size, depth, int(rgb.max(initial=0)) if depth == 16 else None)


def colour_counts(rgb, limit=None):
    """[(r, g, b), pixel count] of an HxWx3 uint8 array, most frequent first."""
    packed = (rgb[..., 0].astype(np.uint32) << 16) | (rgb[..., 1].astype(np.uint32) << 8) | rgb[..., 2]
    values, counts = np.unique(packed.ravel(), return_counts=True)
    order = np.argsort(-counts, kind="stable")[:limit]
    return [((int(v >> 16) & 255, int(v >> 8) & 255, int(v) & 255), int(c))
            for v, c in zip(values[order], counts[order])]


def describe_colours(colours, total, limit=8):
    """'(128, 64, 128) 41.0%, (0, 0, 0) 20.5%, ...' for an error message."""
    text = ", ".join(f"{rgb} {100 * c / max(total, 1):.1f}%" for rgb, c in colours[:limit])
    return text + (f", ... ({len(colours)} colours)" if len(colours) > limit else "")


def read_mask(path, colour_table=None):
    """Class ids (uint8 HxW) of a mask file, decoded in full; not yet remapped.

    Args:
      path: mask file: single-channel ids (L, palette P (the indices), 1-bit, 16-bit holding
        ids <= 255), or RGB whose three channels are equal (grey saved as RGB).
      colour_table: optional {(r, g, b): class id} (classes.txt colours); an RGB colour mask
        is then mapped through it, and a colour it lacks is an error naming the colour.
    Raises ImageReadError (unreadable/truncated, ids above 255) or ColourMaskError (colours
    instead of ids, with the colours found).
    """
    data = _read_bytes(path, "mask")
    image = decode_bytes(data, path, "mask")
    if image.mode in ("L", "P", "1"):
        return np.asarray(image, dtype=np.uint8) if image.mode != "1" else np.asarray(image).astype(np.uint8)
    if image.mode in SIXTEEN_BIT_MODES:
        array = np.asarray(image)
        if array.min(initial=0) < 0 or array.max(initial=0) > 255:
            raise ImageReadError(f"mask {path} has ids up to {int(array.max())} (16-bit); expected ids 0..255 "
                                 "(class ids < the number of classes, 255 = ignore)")
        return array.astype(np.uint8)
    if image.mode in ("LA", "PA"):
        return np.asarray(image)[..., 0].astype(np.uint8)
    if image.mode in ("RGB", "RGBA"):
        rgb = np.asarray(image)[..., :3]
        if (rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 1] == rgb[..., 2]).all():
            return rgb[..., 0].copy()
        colours = colour_counts(rgb)
        if colour_table:
            return _map_colours(rgb, colours, colour_table, path)
        raise ColourMaskError(
            f"mask {path} is colour-coded (RGB), not class ids; colours found: "
            f"{describe_colours(colours, rgb.shape[0] * rgb.shape[1])}. Give each class its colour in "
            "classes.txt ('name R G B' per line) so conversion maps colours to ids, or save masks "
            "as single-channel ids", colours)
    raise ImageReadError(f"mask {path} is mode {image.mode}; expected single-channel class ids (8-bit grey or "
                         "palette PNG)")


def _map_colours(rgb, colours, colour_table, path):
    unknown = [(c, n) for c, n in colours if c not in colour_table]
    if unknown:
        raise ColourMaskError(
            f"mask {path} has colours not in the class list: "
            f"{describe_colours(unknown, rgb.shape[0] * rgb.shape[1])}; add them to classes.txt "
            "('name R G B') or repaint them", unknown)
    packed = (rgb[..., 0].astype(np.uint32) << 16) | (rgb[..., 1].astype(np.uint32) << 8) | rgb[..., 2]
    keys = np.array([(r << 16) | (g << 8) | b for (r, g, b) in colour_table], np.uint32)
    ids = np.array(list(colour_table.values()), np.uint8)
    order = np.argsort(keys)
    return ids[order][np.searchsorted(keys[order], packed)]
