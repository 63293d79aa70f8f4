"""Dataset metadata (`DatasetInfo`) and the pieces every converter shares."""

import dataclasses
import os

import numpy as np
from ocr_tf.errors import MissingFileError, UserError

IGNORE_LABEL = 255
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


def voc_palette(num_classes):
    """The PASCAL VOC bit-interleaved colour map: distinct colours for any number of classes."""
    colors = []
    for i in range(num_classes):
        r = g = b = 0
        c = i + 1  # skip black, which reads as "ignore" in overlays
        for bit in range(8):
            r |= ((c >> 0) & 1) << (7 - bit)
            g |= ((c >> 1) & 1) << (7 - bit)
            b |= ((c >> 2) & 1) << (7 - bit)
            c >>= 3
        colors.append((r, g, b))
    return tuple(colors)


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
    """What the model, losses, metrics and visualisation need to know about a dataset.

    flip_pairs: train-id pairs swapped by a horizontal flip (LIP's left/right parts).
    """

    name: str
    num_classes: int
    class_names: tuple
    palette: tuple
    ignore_label: int = IGNORE_LABEL
    flip_pairs: tuple = ()

    def __post_init__(self):
        if len(self.class_names) != self.num_classes:
            raise UserError(f"{self.name}: {len(self.class_names)} class names for {self.num_classes} classes")
        if len(self.palette) != self.num_classes:
            raise UserError(f"{self.name}: {len(self.palette)} palette colours for {self.num_classes} classes")
        if not 0 < self.num_classes <= 255 or self.num_classes > self.ignore_label:
            raise UserError(f"{self.name}: num_classes must be in 1..{self.ignore_label}, got {self.num_classes}")

    @classmethod
    def from_class_file(cls, path, name=None):
        """A class list file: one class per line, `name` or `name R G B`; `#` starts a comment.

        Line k (counting non-empty lines from 0) is train id k.
        """
        names, colors = [], []
        if not os.path.isfile(path):
            raise MissingFileError(f"class list {path} not found: expected a text file with one class "
                                   "name per line (`name` or `name R G B`)")
        with open(path) as f:
            for lineno, line in enumerate(f, 1):
                line = line.split("#", 1)[0].strip()
                if not line:
                    continue
                parts = line.split()
                if len(parts) >= 4 and all(p.isdigit() for p in parts[-3:]):
                    rgb = tuple(int(p) for p in parts[-3:])
                    if max(rgb) > 255:
                        raise UserError(f"{path}:{lineno}: colour {rgb} is not 0-255")
                    names.append(" ".join(parts[:-3]))
                    colors.append(rgb)
                else:
                    names.append(line)
                    colors.append(None)
        if not names:
            raise UserError(f"{path}: no class names found")
        if len(set(names)) != len(names):
            dup = sorted({n for n in names if names.count(n) > 1})
            raise UserError(f"{path}: duplicate class names {dup}")
        default = voc_palette(len(names))
        palette = tuple(c if c is not None else d for c, d in zip(colors, default))
        return cls(name or os.path.splitext(os.path.basename(path))[0], len(names), tuple(names), palette)


def lookup_table(mapping, default=IGNORE_LABEL):
    """{source id: train id} -> uint8 array of 256 for `table[label]` remapping."""
    table = np.full(256, default, np.uint8)
    for src, dst in mapping.items():
        table[src] = dst
    return table


def list_images(folder):
    """Sorted image files of a folder (not recursive)."""
    if not os.path.isdir(folder):
        raise MissingFileError(f"expected a folder of images at {folder}")
    return sorted(os.path.join(folder, n) for n in os.listdir(folder)
                  if n.lower().endswith(IMAGE_EXTENSIONS))


def pair_by_stem(dataset, image_dir, label_dir, what="annotation"):
    """[(stem, image path, label path)] for every image of `image_dir`, its label being
    `label_dir/<stem>.png`; a missing label is an error naming both files."""
    pairs = []
    for image in list_images(image_dir):
        stem = os.path.splitext(os.path.basename(image))[0]
        label = os.path.join(label_dir, stem + ".png")
        if not os.path.exists(label):
            raise MissingFileError(f"{dataset}: no {what} {label} for image {image}")
        pairs.append((stem, image, label))
    return pairs


def require_dir(path, what):
    if not os.path.isdir(path):
        raise MissingFileError(f"{what}: folder {path} not found")
    return path
