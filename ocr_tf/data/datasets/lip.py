"""LIP (Look Into Person, single-person parsing): 20 classes, label PNGs hold 0..19 (0 = background).

Layout (`--root` holds these, as in the official TrainVal release):
  TrainVal_images/{train_images,val_images}/<id>.jpg
  TrainVal_parsing_annotations/{train_segmentations,val_segmentations}/<id>.png
A horizontal flip swaps the left/right parts (arm, leg, shoe): `INFO.flip_pairs`.
"""

import os

from ocr_tf.data.datasets.base import IGNORE_LABEL, DatasetInfo, pair_by_stem, voc_palette
from ocr_tf.errors import UserError

CLASS_NAMES = (
    "background", "hat", "hair", "glove", "sunglasses", "upper-clothes", "dress", "coat", "socks",
    "pants", "jumpsuits", "scarf", "skirt", "face", "left-arm", "right-arm", "left-leg",
    "right-leg", "left-shoe", "right-shoe",
)

INFO = DatasetInfo("lip", len(CLASS_NAMES), CLASS_NAMES, voc_palette(len(CLASS_NAMES)),
                   flip_pairs=((14, 15), (16, 17), (18, 19)))

LABEL_MAP = {**{i: i for i in range(20)}, IGNORE_LABEL: IGNORE_LABEL}
SPLITS = ("train", "val")


def find_pairs(root, split):
    if split not in SPLITS:
        raise UserError(f"lip: split must be one of {SPLITS}, got {split!r}")
    image_dir = os.path.join(root, "TrainVal_images", f"{split}_images")
    label_dir = os.path.join(root, "TrainVal_parsing_annotations", f"{split}_segmentations")
    return pair_by_stem("lip", image_dir, label_dir)
