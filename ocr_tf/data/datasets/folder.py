"""Your own data: a folder of images, a folder of masks with matching names, a class list.

Layout (`--root`):
  classes.txt                 one class per line (`name` or `name R G B`); line k = train id k
  images/<split>/<name>.<jpg|png|...>   and   masks/<split>/<name>.png
  (or images/<name>.* and masks/<name>.png without split folders: all of it becomes `train`)
Mask pixels hold train ids 0..K-1 or 255 (ignore). `--remap remap.txt` (lines `source target`,
target 255 = ignore) first maps other ids, e.g. 0 = unlabelled -> 255 and 1..K -> 0..K-1; ids not
listed in a remap file are kept as they are.
"""

import os

from ocr_tf.data.datasets.base import IGNORE_LABEL, DatasetInfo, pair_by_stem
from ocr_tf.errors import MissingFileError, UserError

SPLITS = ("train", "val")


def load_info(root, classes=None):
    return DatasetInfo.from_class_file(classes or os.path.join(root, "classes.txt"),
                                       name=os.path.basename(os.path.abspath(root)))


def load_remap(path):
    """`source target` per line -> {source: target}, identity for ids not listed."""
    mapping = {i: i for i in range(256)}
    if not os.path.isfile(path):
        raise MissingFileError(f"--remap file {path} not found: expected lines 'source target' (e.g. '255 1')")
    with open(path) as f:
        for lineno, line in enumerate(f, 1):
            line = line.split("#", 1)[0].strip()
            if not line:
                continue
            parts = line.replace(",", " ").replace(":", " ").split()
            if len(parts) != 2 or not all(p.isdigit() for p in parts):
                raise UserError(f"{path}:{lineno}: expected 'source target', got {line!r}")
            src, dst = int(parts[0]), int(parts[1])
            if src > 255 or dst > 255:
                raise UserError(f"{path}:{lineno}: ids must be 0..255, got {line!r}")
            mapping[src] = dst
    return mapping


def label_map(info, remap=None):
    """Source id -> train id; ids outside the classes stay unmapped (the converter reports them)."""
    mapping = load_remap(remap) if remap else {i: i for i in range(256)}
    return {src: dst for src, dst in mapping.items() if dst < info.num_classes or dst == IGNORE_LABEL}


def available_splits(root):
    """The split folders present under images/, or ('train',) for a flat images/ folder."""
    found = tuple(s for s in SPLITS + ("test",) if os.path.isdir(os.path.join(root, "images", s)))
    return found or ("train",)


def find_pairs(root, split):
    image_dir, mask_dir = os.path.join(root, "images", split), os.path.join(root, "masks", split)
    if not os.path.isdir(image_dir):
        if split != "train" or not os.path.isdir(os.path.join(root, "images")):
            raise MissingFileError(f"folder: {image_dir} not found")
        image_dir, mask_dir = os.path.join(root, "images"), os.path.join(root, "masks")
    pairs = pair_by_stem("folder", image_dir, mask_dir, what="mask")
    if not pairs:
        raise MissingFileError(f"folder: no images in {image_dir}")
    return pairs
