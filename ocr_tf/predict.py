"""Segment images and write pictures people can look at.

  python -m ocr_tf.predict photos/ street.jpg 'more/*.png' --weights model.keras --dataset cityscapes \\
      --output predictions [--regions] [--scales 0.75,1,1.25 --flip]
  python -m ocr_tf.predict photos/ --weights saved_models/hrnet_w48_ocr/1 --dataset cityscapes

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

import argparse
import glob
import os
import sys

import numpy as np
import tensorflow as tf
from PIL import Image, ImageOps, UnidentifiedImageError
from tqdm import tqdm

from ocr_tf.evaluate import add_inference_arguments, inference_options
from ocr_tf.layers.mscale import is_mscale
from ocr_tf.preprocessing import normalize_image
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
                raise FileNotFoundError(f"no files match {item!r}")
            files += matches
        elif os.path.isfile(item):
            files.append(item)
        else:
            raise FileNotFoundError(f"input {item!r} is not a file, folder or glob that matches anything")
    stems = {}
    for path in files:
        stem = os.path.splitext(os.path.basename(path))[0]
        if stem in stems and stems[stem] != path:
            raise ValueError(f"{stems[stem]} and {path} would write the same output names ({stem}.png).")
        stems[stem] = path
    return list(stems.values())


def read_image(path):
    """uint8 RGB (H, W, 3) with the EXIF orientation applied; ValueError if not an image."""
    try:
        with Image.open(path) as image:
            image = ImageOps.exif_transpose(image)
            return np.array(image.convert("RGB"))
    except (UnidentifiedImageError, OSError, SyntaxError) as e:
        raise ValueError(f"{path}: not an image ({e.__class__.__name__}: {e})") from None


def is_saved_model(path):
    return os.path.isfile(os.path.join(path, "saved_model.pb"))


def saved_model_dir(path):
    """`path` itself, or its newest numbered version folder (TF Serving's layout)."""
    if is_saved_model(path):
        return path
    versions = [n for n in os.listdir(path) if n.isdigit() and is_saved_model(os.path.join(path, n))]
    if not versions:
        raise FileNotFoundError(f"{path} is neither a SavedModel nor a folder of numbered SavedModel versions.")
    return os.path.join(path, max(versions, key=int))


class SavedModelPredictor:
    """An exported SavedModel: `serving_default` takes uint8 [B, H, W, 3], returns {"labels"}."""

    def __init__(self, path):
        self.path = saved_model_dir(path)
        self.loaded = tf.saved_model.load(self.path)
        if "serving_default" not in self.loaded.signatures:
            raise ValueError(f"{self.path}: no 'serving_default' signature (found {list(self.loaded.signatures)}).")
        self.serve = self.loaded.signatures["serving_default"]

    def labels(self, image):
        outputs = self.serve(images=tf.constant(image[None]))
        if "labels" not in outputs:
            raise ValueError(f"{self.path}: serving_default returns {sorted(outputs)}, expected 'labels'.")
        return outputs["labels"][0].numpy()


class KerasPredictor:
    """A Keras model through `ocr_tf.inference` (whole/slide, scales, flip)."""

    def __init__(self, model, num_classes, options):
        self.model = model
        self.run = tf.function(lambda x: model(x, training=False), reduce_retracing=True)
        if is_mscale(model):  # inference runs its own multi-scale graph (issue 15)
            self.run = model
        self.num_classes = num_classes
        self.options = options

    def labels(self, image):
        from ocr_tf.inference import predict_labels

        x = normalize_image(image[None])
        return predict_labels(self.run, x, num_classes=self.num_classes, **self.options)[0].numpy()

    def aux_logits(self, image):
        return self.run(normalize_image(image[None]))["aux_logits"][0].numpy()

    def attention(self, image):
        """{scale: attention (h_s, w_s)} of a multi-scale network at the --scales (all but the
        top scale, whose attention the merge does not use)."""
        from ocr_tf.layers.mscale import check_scales, mscale_predict

        scales = check_scales(self.options.get("scales", (1.0,)))
        _, maps = mscale_predict(self.model, normalize_image(image[None]), scales, return_attention=True)
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
            raise ValueError(f"{path}: the model returned labels {labels.shape} for an image of {image.shape[:2]}.")
        if labels.max() >= info.num_classes:
            raise ValueError(f"{path}: the model predicts class {labels.max()}, but {info.name} has {info.num_classes}.")
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


def build_parser():
    parser = argparse.ArgumentParser(
        prog="python -m ocr_tf.predict",
        description="Segment images with a .keras model or an exported SavedModel; write label PNGs, "
        "colour masks, overlays and (--regions) the soft object regions.",
    )
    parser.add_argument("inputs", nargs="+", help="image files, folders or globs")
    parser.add_argument("--weights", required=True, help="a .keras model, a SavedModel folder, or a .weights.h5 for --model")
    parser.add_argument("--model", help="registered model name (only for a .weights.h5 file)")
    parser.add_argument("--model-arg", action="append", metavar="KEY=VALUE", help="build_model override")
    parser.add_argument("--dataset", default="cityscapes", help="palette and class names: a dataset name or a class file (default cityscapes)")
    parser.add_argument("--output", default="predictions", help="output folder (default ./predictions)")
    parser.add_argument("--alpha", type=float, default=0.5, help="overlay opacity of the mask (default 0.5)")
    parser.add_argument("--regions", action="store_true", help="also draw the soft object regions (Keras models only)")
    parser.add_argument("--attention", action="store_true",
                        help="*_mscale_ocr models: also draw each scale's attention (needs --scales with 1.0 and another)")
    parser.add_argument("--max-regions", type=int, default=12, help="at most this many region maps per image (default 12)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    add_inference_arguments(parser)
    return parser


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    if not 0.0 <= args.alpha <= 1.0:
        parser.error(f"--alpha must be in [0, 1], got {args.alpha}.")
    if args.mode == "slide" and not args.crop_size:
        parser.error("--mode slide needs --crop-size.")
    from ocr_tf.data.datasets import get_dataset_info

    info = get_dataset_info(args.dataset)
    try:
        files = list_inputs(args.inputs)
    except (FileNotFoundError, ValueError) as e:
        parser.error(str(e))
    if os.path.isdir(args.weights):
        custom = args.mode != "whole" or args.scales != (1.0,) or args.flip
        if custom or args.regions or args.attention:
            parser.error("a SavedModel runs as exported: --mode/--scales/--flip/--regions/--attention need a Keras model.")
        predictor = SavedModelPredictor(args.weights)
    else:
        from ocr_tf.export import _parse_overrides, load_model

        model = load_model(args.weights, args.model, info.num_classes, _parse_overrides(args.model_arg))
        if args.regions and not (isinstance(model.output, dict) and "aux_logits" in model.output):
            parser.error("--regions needs a model with an 'aux_logits' output.")
        if args.attention and (not is_mscale(model) or len(set(args.scales)) < 2 or 1.0 not in args.scales):
            parser.error("--attention needs a multi-scale attention model (*_mscale_ocr) and --scales with 1.0 and another scale.")
        predictor = KerasPredictor(model, info.num_classes, inference_options(args, info))
    written, skipped = predict_files(
        predictor, files, info, args.output, alpha=args.alpha, regions=args.regions,
        max_regions=args.max_regions, progress=not args.quiet, attention=args.attention,
    )
    extras = "".join(f", {k}" for k, on in (("regions", args.regions), ("attention", args.attention)) if on)
    print(f"wrote {len(written)} predictions to {args.output}/ (labels, color, overlay{extras})")
    if skipped:
        print(f"skipped {len(skipped)} files that are not images: " + ", ".join(p for p, _ in skipped))
    return 0 if written else 1


if __name__ == "__main__":
    sys.exit(main())
