"""COCO-Stuff 164k: 171 classes (80 things + 91 stuff).

Layout (`--root` holds these; the label PNGs are `stuffthingmaps_trainval2017.zip`):
  images/{train2017,val2017}/<id>.jpg
  annotations/{train2017,val2017}/<id>.png   (values 0..181 = COCO category id - 1, 255 unlabeled)
The 182 ids contain 11 never used (COCO's missing thing ids); the used 171 map in order to
train ids 0..170, everything else (the unused ids and 255) to ignore.
Splits are named train and val.
"""

import os

from ocr_tf.data.datasets.base import IGNORE_LABEL, DatasetInfo, pair_by_stem, voc_palette
from ocr_tf.errors import UserError

CLASS_NAMES = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat",
    "traffic light", "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog",
    "horse", "sheep", "cow", "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella",
    "handbag", "tie", "suitcase", "frisbee", "skis", "snowboard", "sports ball", "kite",
    "baseball bat", "baseball glove", "skateboard", "surfboard", "tennis racket", "bottle",
    "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple", "sandwich", "orange",
    "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch", "potted plant",
    "bed", "dining table", "toilet", "tv", "laptop", "mouse", "remote", "keyboard", "cell phone",
    "microwave", "oven", "toaster", "sink", "refrigerator", "book", "clock", "vase", "scissors",
    "teddy bear", "hair drier", "toothbrush",
    "banner", "blanket", "branch", "bridge", "building-other", "bush", "cabinet", "cage",
    "cardboard", "carpet", "ceiling-other", "ceiling-tile", "cloth", "clothes", "clouds", "counter",
    "cupboard", "curtain", "desk-stuff", "dirt", "door-stuff", "fence", "floor-marble",
    "floor-other", "floor-stone", "floor-tile", "floor-wood", "flower", "fog", "food-other",
    "fruit", "furniture-other", "grass", "gravel", "ground-other", "hill", "house", "leaves",
    "light", "mat", "metal", "mirror-stuff", "moss", "mountain", "mud", "napkin", "net", "paper",
    "pavement", "pillow", "plant-other", "plastic", "platform", "playingfield", "railing",
    "railroad", "river", "road", "rock", "roof", "rug", "salad", "sand", "sea", "shelf",
    "sky-other", "skyscraper", "snow", "solid-other", "stairs", "stone", "straw",
    "structural-other", "table", "tent", "textile-other", "towel", "tree", "vegetable",
    "wall-brick", "wall-concrete", "wall-other", "wall-panel", "wall-stone", "wall-tile",
    "wall-wood", "water-other", "waterdrops", "window-blind", "window-other", "wood",
)

INFO = DatasetInfo("coco_stuff", len(CLASS_NAMES), CLASS_NAMES, voc_palette(len(CLASS_NAMES)))

# COCO category ids 12, 26, 29, 30, 45, 66, 68, 69, 71, 83 and 91 have no objects (0-based below).
UNUSED_IDS = (11, 25, 28, 29, 44, 65, 67, 68, 70, 82, 90)
USED_IDS = tuple(i for i in range(182) if i not in UNUSED_IDS)
LABEL_MAP = {**{i: IGNORE_LABEL for i in UNUSED_IDS}, **{src: k for k, src in enumerate(USED_IDS)},
             IGNORE_LABEL: IGNORE_LABEL}
SPLITS = ("train", "val")


def find_pairs(root, split):
    if split not in SPLITS:
        raise UserError(f"coco_stuff: split must be one of {SPLITS}, got {split!r}")
    sub = f"{split}2017"
    return pair_by_stem("coco_stuff", os.path.join(root, "images", sub), os.path.join(root, "annotations", sub))
