"""PASCAL-Context, 59 classes, from the PNG masks most users have.

Label format: `SegmentationClassContext/<id>.png` single-channel masks with 0 = background and
1..59 the 59 classes in the order below (the masks made by mmsegmentation's / the Detail API's
conversion of `trainval_merged.json`). Convention here, as for the published 59-class results:
0 (background) -> ignore (255), 1..59 -> train ids 0..58.

Layout (`--root` is VOC2010, or VOCdevkit / its parent holding VOCdevkit/VOC2010):
  JPEGImages/<id>.jpg
  SegmentationClassContext/<id>.png
  ImageSets/SegmentationContext/{train,val}.txt
"""

import os

from ocr_tf.data.datasets.base import IGNORE_LABEL, DatasetInfo, voc_palette
from ocr_tf.errors import MissingFileError

CLASS_NAMES = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow", "table",
    "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
    "bag", "bed", "bench", "book", "building", "cabinet", "ceiling", "cloth", "computer", "cup",
    "door", "fence", "floor", "flower", "food", "grass", "ground", "keyboard", "light", "mountain",
    "mouse", "curtain", "platform", "sign", "plate", "road", "rock", "shelves", "sidewalk", "sky",
    "snow", "bedclothes", "track", "tree", "truck", "wall", "water", "window", "wood",
)

INFO = DatasetInfo("pascal_context", len(CLASS_NAMES), CLASS_NAMES, voc_palette(len(CLASS_NAMES)))

LABEL_MAP = {0: IGNORE_LABEL, **{i: i - 1 for i in range(1, 60)}, IGNORE_LABEL: IGNORE_LABEL}
SPLITS = ("train", "val")


def _voc_root(root):
    for candidate in (root, os.path.join(root, "VOC2010"), os.path.join(root, "VOCdevkit", "VOC2010")):
        if os.path.isdir(os.path.join(candidate, "SegmentationClassContext")):
            return candidate
    raise MissingFileError(
        f"pascal_context: no SegmentationClassContext/ under {root} (or VOC2010/, VOCdevkit/VOC2010/)")


def find_pairs(root, split):
    root = _voc_root(root)
    list_file = os.path.join(root, "ImageSets", "SegmentationContext", f"{split}.txt")
    if not os.path.exists(list_file):
        raise MissingFileError(f"pascal_context: split list {list_file} not found")
    with open(list_file) as f:
        ids = [line.strip() for line in f if line.strip()]
    pairs = []
    for stem in ids:
        image = os.path.join(root, "JPEGImages", stem + ".jpg")
        label = os.path.join(root, "SegmentationClassContext", stem + ".png")
        for path in (image, label):
            if not os.path.exists(path):
                raise MissingFileError(f"pascal_context: {path} (listed in {list_file}) not found")
        pairs.append((stem, image, label))
    return pairs
