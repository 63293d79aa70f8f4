"""Segment images and write pictures people can look at (the command: `ocr_tf.cli.predict`).

  python -m ocr_tf.predict photos/ street.jpg 'more/*.png' --weights model.keras \\
      --output predictions [--regions] [--scales 0.75,1,1.25 --flip]
  python -m ocr_tf.predict photos/ --weights saved_models/hrnet_w48_ocr/1

The class names and palette are the model's own (a .keras Segmenter, a preset, or the metadata
an exported SavedModel carries); `--dataset` replaces them and says so.

Inputs: image files, folders (their files, not recursive) and globs. A file that is not an image
is reported by name and skipped. The model is a `.keras` file, a `.weights.h5` file for
`--model`, or an exported SavedModel (its version folder, or the folder holding numbered
versions: the newest is used); a SavedModel runs as exported (whole image, one scale).

For each image `<stem>` (EXIF orientation applied), in `--output`:
  labels/<stem>.png    train ids (uint8, the input's size)
  color/<stem>.png     the labels in the dataset's palette
  overlay/<stem>.png   the colour mask blended over the image (`--alpha`)
  regions/<stem>.png   with `--regions`: the soft object regions (aux logits softmaxed over space,
                       the weights of the paper's gather step, Fig. 5) of the classes predicted,
                       largest first, as a grid of heat maps with class names
"""

if __name__ == "__main__":  # `python -m ocr_tf.predict`: parse arguments before TensorFlow loads
    from ocr_tf.cli.predict import main

    raise SystemExit(main())

import glob
import os
import sys

import numpy as np
import tensorflow as tf
from tqdm import tqdm

from ocr_tf.data import images
from ocr_tf.errors import MissingFileError, UserError
from ocr_tf.visualize import colorize, overlay, region_grid, save_png

GLOB_CHARS = "*?["


def list_inputs(inputs):
    """Files named by paths, folders (their files, sorted) and globs; a missing path is an error."""
    files = []
    for item in inputs:
        if os.path.isdir(item):
            names = sorted(n for n in os.listdir(item) if not n.startswith("."))
            files += [os.path.join(item, n) for n in names if os.path.isfile(os.path.join(item, n))]
        elif any(c in item for c in GLOB_CHARS):
            matches = sorted(p for p in glob.glob(item) if os.path.isfile(p))
            if not matches:
                raise MissingFileError(f"no files match {item!r}")
            files += matches
        elif os.path.isfile(item):
            files.append(item)
        else:
            raise MissingFileError(f"input {item!r} is not a file, folder or glob that matches anything")
    stems = {}
    for path in files:
        stem = os.path.splitext(os.path.basename(path))[0]
        if stem in stems and stems[stem] != path:
            raise UserError(f"{stems[stem]} and {path} would write the same output names ({stem}.png).")
        stems[stem] = path
    return list(stems.values())


def read_image(path):
    """uint8 RGB (H, W, 3) with the EXIF orientation applied; ValueError if not an image."""
    return images.read_image(path)  # 16-bit scaled, not clipped; truncated files named


def is_saved_model(path):
    return os.path.isfile(os.path.join(path, "saved_model.pb"))


def saved_model_dir(path):
    """`path` itself, or its newest numbered version folder (TF Serving's layout)."""
    if is_saved_model(path):
        return path
    versions = [n for n in os.listdir(path) if n.isdigit() and is_saved_model(os.path.join(path, n))]
    if not versions:
        raise MissingFileError(f"{path} is neither a SavedModel nor a folder of numbered SavedModel versions.")
    return os.path.join(path, max(versions, key=int))


class SavedModelPredictor:
    """An exported SavedModel: `serving_default` takes uint8 [B, H, W, 3], returns {"labels"}.

    `info`: the class names and palette it was exported with (assets.extra/segmenter.json, or
    labels.txt with generated colours), or None when it carries neither."""

    def __init__(self, path):
        self.path = saved_model_dir(path)
        self.loaded = tf.saved_model.load(self.path)
        if "serving_default" not in self.loaded.signatures:
            raise UserError(f"{self.path}: no 'serving_default' signature (found {list(self.loaded.signatures)}).")
        self.serve = self.loaded.signatures["serving_default"]
        self.info = saved_model_info(self.path)

    def labels(self, image):
        outputs = self.serve(images=tf.constant(image[None]))
        if "labels" not in outputs:
            raise UserError(f"{self.path}: serving_default returns {sorted(outputs)}, expected 'labels'.")
        return outputs["labels"][0].numpy()


def saved_model_info(path):
    """DatasetInfo of an exported SavedModel's metadata (segmenter.json, else labels.txt), or None."""
    from ocr_tf.data.datasets.base import DatasetInfo, voc_palette
    from ocr_tf.segmenter import read_saved_model_metadata

    meta = read_saved_model_metadata(path)
    if meta is not None:
        names = meta["class_names"]
        return DatasetInfo(meta.get("dataset") or "exported", len(names), tuple(names),
                           tuple(tuple(c) for c in meta["palette"]), meta.get("ignore_label", 255),
                           tuple(tuple(p) for p in meta.get("flip_pairs", ())))
    labels = os.path.join(path, "assets.extra", "labels.txt")
    if os.path.isfile(labels):
        with open(labels, encoding="utf-8") as f:
            names = tuple(line.rstrip("\n") for line in f if line.strip())
        return DatasetInfo("exported", len(names), names, voc_palette(len(names)))
    return None


class SegmenterPredictor:
    """A Segmenter through `ocr_tf.inference` (whole/slide, scales, flip)."""

    def __init__(self, segmenter, options):
        self.segmenter = segmenter
        self.options = options
        self.info = segmenter.dataset_info()

    def labels(self, image):
        return self.segmenter.predict(image, **self.options)

    def aux_logits(self, image):
        seg = self.segmenter
        return seg._runner()(seg.normalize(image[None]))["aux_logits"][0].numpy()

    def attention(self, image):
        """{scale: attention (h_s, w_s)} of a multi-scale network at the --scales (all but the
        top scale, whose attention the merge does not use)."""
        from ocr_tf.layers.mscale import check_scales, mscale_predict

        scales = check_scales(self.options.get("scales", (1.0,)))
        seg = self.segmenter
        _, maps = mscale_predict(seg.network, seg.normalize(image[None]), scales, return_attention=True)
        return {s: np.asarray(a)[0, ..., 0] for s, a in maps.items() if s != scales[0]}


def predict_files(predictor, files, info, output, *, alpha=0.5, regions=False, max_regions=12, progress=True,
                  attention=False):
    """Write labels/color/overlay (and regions) PNGs for each image; returns (written, skipped)
    where skipped lists (path, reason) of files that are not images."""
    written, skipped = [], []
    for path in tqdm(files, desc="predicting", disable=not progress):
        try:
            image = read_image(path)
        except ValueError as e:
            skipped.append((path, str(e)))
            tqdm.write(f"skipped {e}", file=sys.stderr)
            continue
        labels = predictor.labels(image)
        if labels.shape != image.shape[:2]:
            raise UserError(f"{path}: the model returned labels {labels.shape} for an image of {image.shape[:2]}.")
        if labels.max() >= info.num_classes:
            raise UserError(f"{path}: the model predicts class {labels.max()}, but {info.name} has {info.num_classes}.")
        stem = os.path.splitext(os.path.basename(path))[0]
        color = colorize(labels, info.palette, info.ignore_label)
        save_png(labels.astype(np.uint8), os.path.join(output, "labels", f"{stem}.png"))
        save_png(color, os.path.join(output, "color", f"{stem}.png"))
        save_png(overlay(image, color, alpha), os.path.join(output, "overlay", f"{stem}.png"))
        if regions:
            present = np.bincount(labels.ravel(), minlength=info.num_classes)
            classes = [int(c) for c in np.argsort(-present, kind="stable") if present[c] > 0][:max_regions]
            grid = region_grid(predictor.aux_logits(image), info.class_names, image=image, classes=classes)
            save_png(grid, os.path.join(output, "regions", f"{stem}.png"))
        if attention:  # multi-scale attention networks (issue 15)
            from ocr_tf.visualize_mscale import attention_strip

            save_png(attention_strip(image, predictor.attention(image)), os.path.join(output, "attention", f"{stem}.png"))
        written.append(path)
    return written, skipped
