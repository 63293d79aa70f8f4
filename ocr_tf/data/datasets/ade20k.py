"""ADE20K (SceneParsing / ADEChallengeData2016): 150 classes; label 0 ("other") -> ignore, 1..150 -> 0..149.

Layout (`--root` is ADEChallengeData2016 or the folder holding it):
  images/{training,validation}/ADE_*.jpg
  annotations/{training,validation}/ADE_*.png
Splits are named train and val.
"""

import os

from ocr_tf.data.datasets.base import IGNORE_LABEL, DatasetInfo, pair_by_stem, voc_palette
from ocr_tf.errors import UserError

CLASS_NAMES = (
    "wall", "building", "sky", "floor", "tree", "ceiling", "road", "bed", "windowpane", "grass",
    "cabinet", "sidewalk", "person", "earth", "door", "table", "mountain", "plant", "curtain",
    "chair", "car", "water", "painting", "sofa", "shelf", "house", "sea", "mirror", "rug", "field",
    "armchair", "seat", "fence", "desk", "rock", "wardrobe", "lamp", "bathtub", "railing",
    "cushion", "base", "box", "column", "signboard", "chest of drawers", "counter", "sand", "sink",
    "skyscraper", "fireplace", "refrigerator", "grandstand", "path", "stairs", "runway", "case",
    "pool table", "pillow", "screen door", "stairway", "river", "bridge", "bookcase", "blind",
    "coffee table", "toilet", "flower", "book", "hill", "bench", "countertop", "stove", "palm",
    "kitchen island", "computer", "swivel chair", "boat", "bar", "arcade machine", "hovel", "bus",
    "towel", "light", "truck", "tower", "chandelier", "awning", "streetlight", "booth",
    "television receiver", "airplane", "dirt track", "apparel", "pole", "land", "bannister",
    "escalator", "ottoman", "bottle", "buffet", "poster", "stage", "van", "ship", "fountain",
    "conveyer belt", "canopy", "washer", "plaything", "swimming pool", "stool", "barrel", "basket",
    "waterfall", "tent", "bag", "minibike", "cradle", "oven", "ball", "food", "step", "tank",
    "trade name", "microwave", "pot", "animal", "bicycle", "lake", "dishwasher", "screen",
    "blanket", "sculpture", "hood", "sconce", "vase", "traffic light", "tray", "ashcan", "fan",
    "pier", "crt screen", "plate", "monitor", "bulletin board", "shower", "radiator", "glass",
    "clock", "flag",
)

INFO = DatasetInfo("ade20k", len(CLASS_NAMES), CLASS_NAMES, voc_palette(len(CLASS_NAMES)))

LABEL_MAP = {0: IGNORE_LABEL, **{i: i - 1 for i in range(1, 151)}, IGNORE_LABEL: IGNORE_LABEL}
SPLITS = ("train", "val")
_FOLDERS = {"train": "training", "val": "validation"}


def find_pairs(root, split):
    if os.path.isdir(os.path.join(root, "ADEChallengeData2016")):
        root = os.path.join(root, "ADEChallengeData2016")
    if split not in _FOLDERS:
        raise UserError(f"ade20k: split must be one of {sorted(_FOLDERS)}, got {split!r}")
    sub = _FOLDERS[split]
    return pair_by_stem("ade20k", os.path.join(root, "images", sub), os.path.join(root, "annotations", sub))
