"""A built-in demo dataset: small procedural street scenes where object context matters.

Eight classes. Two pairs look identical pixel for pixel and differ only by the object they
belong to, which is what OCR's object regions can use and a purely local classifier cannot:
  * "house window" and "car window": the same glass texture (pale blue, dark cross bars), one
    set in a house wall, the other in a car body;
  * "striped disc" and "striped box": the same diagonal stripes, inside a circle or a square.
A 1-pixel outline around discs and boxes and the occasional unlabelled patch are ignore (255).

`prepare_demo()` generates the TFRecords once (in a temporary folder renamed when complete,
with a manifest naming the generator version) under `$OCR_TF_CACHE/demo` or
`~/.cache/ocr_tf/demo`, and reuses them afterwards. Generation takes a few seconds on one core.
"""

import json
import os
import shutil
import tempfile

import numpy as np

from ocr_tf.data.datasets.base import IGNORE_LABEL, DatasetInfo
from ocr_tf.files import cache_root

VERSION = 2  # 2: a few validation images as PNGs, for predict after the quick start
HEIGHT, WIDTH = 96, 128
TRAIN_SIZE, VAL_SIZE = 384, 64
TRAIN_SHARDS, VAL_SHARDS = 4, 2
NUM_PNGS = 4  # validation images also written as PNGs (images/)

CLASS_NAMES = ("background", "ground", "house", "house window", "car", "car window",
               "striped disc", "striped box")
BACKGROUND, GROUND, HOUSE, HOUSE_WINDOW, CAR, CAR_WINDOW, DISC, BOX = range(8)

INFO = DatasetInfo(
    name="demo",
    num_classes=len(CLASS_NAMES),
    class_names=CLASS_NAMES,
    palette=((135, 190, 235), (110, 90, 60), (200, 120, 80), (250, 250, 120), (220, 40, 40),
             (60, 220, 220), (150, 60, 200), (40, 160, 60)),
)

GLASS = np.array([150, 200, 235], np.float32)
STRIPES = (np.array([240, 200, 40], np.float32), np.array([40, 40, 160], np.float32))


def default_cache_dir():
    return os.path.join(cache_root(), "demo")


def _rect(h0, w0, h1, w1):
    """Boolean mask of rows [h0, h1) and columns [w0, w1), clipped to the image."""
    mask = np.zeros((HEIGHT, WIDTH), bool)
    mask[max(h0, 0):max(h1, 0), max(w0, 0):max(w1, 0)] = True
    return mask


def _paint(image, label, mask, color, cls):
    image[mask] = color
    label[mask] = cls


def _window(image, label, rng, top, left, cls):
    """Glass pane with a dark cross: the texture shared by house and car windows."""
    h, w = rng.integers(7, 11), rng.integers(8, 13)
    pane = _rect(top, left, top + h, left + w)
    _paint(image, label, pane, GLASS, cls)
    bars = _rect(top + h // 2, left, top + h // 2 + 1, left + w) | _rect(top, left + w // 2, top + h, left + w // 2 + 1)
    image[bars & pane] = (60, 60, 70)
    return h, w


def _house(image, label, rng, ground_row):
    w, h = rng.integers(30, 50), rng.integers(30, 48)
    left = rng.integers(-5, WIDTH - w + 5)
    top = ground_row - h
    wall = _rect(top, left, ground_row, left + w)
    color = rng.uniform(120, 230, 3)
    _paint(image, label, wall, color, HOUSE)
    # Brick rows: the wall's own texture, unlike the glass.
    rows = np.arange(HEIGHT)[:, None] % 6 == 0
    image[wall & rows] = color * 0.7
    for row in range(top + 4, ground_row - 10, 14):
        for col in range(left + 3, left + w - 10, 16):
            _window(image, label, rng, row, col, HOUSE_WINDOW)


def _car(image, label, rng, ground_row):
    w, h = rng.integers(36, 52), rng.integers(18, 24)
    left = rng.integers(-5, WIDTH - w + 5)
    top = ground_row - h - 3
    body = _rect(top + h // 3, left, top + h, left + w) | _rect(top, left + w // 5, top + h // 3 + 1, left + 4 * w // 5)
    _paint(image, label, body, rng.uniform(40, 255, 3), CAR)
    yy, xx = np.mgrid[:HEIGHT, :WIDTH]
    for cx in (left + w // 5, left + 4 * w // 5):  # wheels belong to the car
        wheel = (yy - (top + h)) ** 2 + (xx - cx) ** 2 <= 16
        _paint(image, label, wheel, (25, 25, 25), CAR)
    _window(image, label, rng, top + 1, left + w // 5 + 2, CAR_WINDOW)
    _window(image, label, rng, top + 1, left + w // 2 + 1, CAR_WINDOW)


def _striped_shape(image, label, rng, cls):
    """A disc or a box filled with the same diagonal stripes, outlined with ignore."""
    size = rng.integers(14, 26)
    cy, cx = rng.integers(size // 2, HEIGHT - size // 2), rng.integers(size // 2, WIDTH - size // 2)
    yy, xx = np.mgrid[:HEIGHT, :WIDTH]
    if cls == DISC:
        dist = np.sqrt((yy - cy) ** 2 + (xx - cx) ** 2)
        inside, outline = dist <= size / 2, np.abs(dist - size / 2 - 0.5) < 1.0
    else:
        dist = np.maximum(np.abs(yy - cy), np.abs(xx - cx))
        inside, outline = dist <= size // 2, dist == size // 2 + 1
    stripes = ((yy + xx) // 3) % 2 == 0
    image[inside & stripes], image[inside & ~stripes] = STRIPES
    label[inside] = cls
    label[outline & ~inside] = IGNORE_LABEL


def make_scene(rng):
    """One (uint8 image [96,128,3], uint8 label [96,128]) scene."""
    image = np.empty((HEIGHT, WIDTH, 3), np.float32)
    label = np.full((HEIGHT, WIDTH), BACKGROUND, np.uint8)
    image[:] = rng.uniform(90, 200, 3)  # sky tint varies per scene
    ground_row = int(rng.integers(60, 80))
    _paint(image, label, _rect(ground_row, 0, HEIGHT, WIDTH), rng.uniform(60, 130, 3), GROUND)
    for _ in range(rng.integers(0, 3)):
        _house(image, label, rng, ground_row)
    for _ in range(rng.integers(0, 3)):
        _car(image, label, rng, int(rng.integers(ground_row + 10, HEIGHT + 1)))
    for _ in range(rng.integers(0, 3)):
        _striped_shape(image, label, rng, DISC if rng.random() < 0.5 else BOX)
    if rng.random() < 0.15:  # an unlabelled patch
        top, left = rng.integers(0, HEIGHT - 10), rng.integers(0, WIDTH - 10)
        label[_rect(top, left, top + rng.integers(4, 10), left + rng.integers(4, 10))] = IGNORE_LABEL
    image += rng.normal(0.0, 6.0, image.shape)
    return np.clip(np.round(image), 0, 255).astype(np.uint8), label


def _manifest_ok(folder, seed):
    try:
        with open(os.path.join(folder, "manifest.json")) as f:
            manifest = json.load(f)
    except (OSError, ValueError):
        return None
    if manifest.get("version") != VERSION or manifest.get("seed") != seed:
        return None
    if not all(os.path.exists(os.path.join(folder, name)) for name in manifest.get("files", [])):
        return None
    return manifest


def _generate(folder, seed):
    from ocr_tf.data.records import ShardedWriter  # TF only when generating

    rng = np.random.default_rng(seed)
    files = []
    for split, count, shards in (("train", TRAIN_SIZE, TRAIN_SHARDS), ("val", VAL_SIZE, VAL_SHARDS)):
        with ShardedWriter(folder, split, shards, INFO.num_classes, INFO.class_names) as writer:
            for i in range(count):
                image, label = make_scene(rng)
                writer.add(image, label, source_id=f"demo-{split}-{i:04d}")
                if split == "val" and i < NUM_PNGS:
                    files.append(_write_png(folder, f"demo-val-{i:04d}.png", image))
        files += [os.path.basename(p) for p in writer.final_paths] + [f"{split}-info.json"]
    manifest = {"version": VERSION, "seed": seed, "train_size": TRAIN_SIZE, "val_size": VAL_SIZE,
                "height": HEIGHT, "width": WIDTH, "class_names": list(CLASS_NAMES), "files": files}
    with open(os.path.join(folder, "manifest.json"), "w") as f:
        json.dump(manifest, f, indent=1)
    return manifest


def _write_png(folder, name, image):
    from PIL import Image

    os.makedirs(os.path.join(folder, "images"), exist_ok=True)
    Image.fromarray(image).save(os.path.join(folder, "images", name))
    return os.path.join("images", name)


def prepare_demo(cache_dir=None, seed=0):
    """Generate (first time) or reuse the demo TFRecords; returns globs and sizes.

    Returns dict(train=<glob>, val=<glob>, images=<folder of a few validation PNGs>, num_classes,
    class_names, train_size, val_size).
    """
    cache_dir = cache_dir or default_cache_dir()
    folder = os.path.join(cache_dir, f"v{VERSION}-seed{seed}")
    manifest = _manifest_ok(folder, seed)
    if manifest is None:
        os.makedirs(cache_dir, exist_ok=True)
        tmp = tempfile.mkdtemp(prefix=".tmp-demo-", dir=cache_dir)
        try:
            manifest = _generate(tmp, seed)
            if os.path.exists(folder):  # incomplete or stale: replace it
                shutil.rmtree(folder, ignore_errors=True)
            try:
                os.rename(tmp, folder)
            except OSError:  # another process finished first: use theirs if it is complete
                if _manifest_ok(folder, seed) is None:
                    raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return {
        "train": os.path.join(folder, "train-*.tfrecord"),
        "val": os.path.join(folder, "val-*.tfrecord"),
        "images": os.path.join(folder, "images"),
        "num_classes": INFO.num_classes,
        "class_names": INFO.class_names,
        "train_size": manifest["train_size"],
        "val_size": manifest["val_size"],
    }
