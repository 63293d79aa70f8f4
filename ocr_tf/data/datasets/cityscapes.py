"""Cityscapes: 19 classes; labelIds -> trainIds from cityscapesscripts' official `labels` table.

Layout (`--root` is the folder holding these):
  leftImg8bit/{train,val,test,train_extra}/<city>/<name>_leftImg8bit.png
  gtFine/{train,val,test}/<city>/<name>_gtFine_labelIds.png
  gtCoarse/{train,train_extra,val}/<city>/<name>_gtCoarse_labelIds.png   (with --coarse)
The test split's public labels are placeholders, so test images are written without labels.
"""

import glob
import os

import numpy as np
from cityscapesscripts.helpers.labels import labels as _LABELS

from ocr_tf.data.datasets.base import IGNORE_LABEL, DatasetInfo
from ocr_tf.errors import MissingFileError

_TRAIN = sorted((l for l in _LABELS if 0 <= l.trainId < IGNORE_LABEL), key=lambda l: l.trainId)

INFO = DatasetInfo(
    name="cityscapes",
    num_classes=len(_TRAIN),
    class_names=tuple(l.name for l in _TRAIN),
    palette=tuple(tuple(l.color) for l in _TRAIN),
)

# labelId -> trainId for every labelId cityscapesscripts defines (ignored classes -> 255).
LABEL_MAP = {l.id: (l.trainId if 0 <= l.trainId < IGNORE_LABEL else IGNORE_LABEL)
             for l in _LABELS if 0 <= l.id < 256}
LABEL_MAP[IGNORE_LABEL] = IGNORE_LABEL

label_id_to_train_id = np.full(256, IGNORE_LABEL, np.uint8)
for _id, _train in LABEL_MAP.items():
    label_id_to_train_id[_id] = _train

# trainId -> labelId, for writing predictions in the official labelIds format (ignore -> 0).
train_id_to_label_id = np.zeros(256, np.uint8)
for _l in _TRAIN:
    train_id_to_label_id[_l.trainId] = _l.id

SPLITS = ("train", "val")


def find_pairs(root, split, coarse=False):
    """[(source_id, image_path, label_path or None)] for one split, sorted."""
    image_dir = os.path.join(root, "leftImg8bit", split)
    if not os.path.isdir(image_dir):
        raise MissingFileError(f"cityscapes: {image_dir} not found (expected leftImg8bit/{split}/<city>/)")
    kind = "gtCoarse" if coarse else "gtFine"
    pairs = []
    for image in sorted(glob.glob(os.path.join(image_dir, "*", "*_leftImg8bit.png"))):
        city = os.path.basename(os.path.dirname(image))
        stem = os.path.basename(image)[: -len("_leftImg8bit.png")]
        label = None
        if split != "test":
            label = os.path.join(root, kind, split, city, f"{stem}_{kind}_labelIds.png")
            if not os.path.exists(label):
                raise MissingFileError(f"cityscapes: no label {label} for image {image}")
        pairs.append((stem, image, label))
    return pairs
