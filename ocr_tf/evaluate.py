"""Score a model on a validation set, or score folders of label PNGs written by any model.

  python -m ocr_tf.evaluate --model hrnet_w48_ocr --weights best.keras --data 'val-*.tfrecord' \\
      --dataset cityscapes [--mode slide --crop-size 1024x1024 --scales 0.5,0.75,1,1.25,1.5,1.75 --flip]
  python -m ocr_tf.evaluate --config configs/cityscapes/hrnet_w48_ocr.yaml --weights best.keras
  python -m ocr_tf.evaluate --predictions results/ --ground-truth cityscapes/gtFine/val --dataset cityscapes

Both write `metrics.json` (mIoU, per-class IoU, pixel accuracy, ...; fractions, not percent),
`metrics.md` (a Markdown table in percent) and `confusion_matrix.npy` (int64, rows = ground
truth, columns = prediction) to `--output`. Classes absent from both ground truth and prediction
have IoU NaN and are left out of the mean, as cityscapesscripts and mmsegmentation do.

Label formats: "raw" is the dataset's own label ids (Cityscapes labelIds, ADE20K 1..150 with 0 =
other, ...), mapped through the dataset module's LABEL_MAP; "trainids" is 0..K-1 (255 = none).
In folder scoring a predicted id that maps to no class counts as a miss of the true class, as
cityscapesscripts counts it. `--write-predictions DIR` writes the model's predictions as label
PNGs (Cityscapes: labelIds named `<city>_<seq>_<frame>_leftImg8bit.png`, what the test server and
cityscapesscripts expect).
"""

import argparse
import glob
import json
import os
import re
import sys

import numpy as np
import tensorflow as tf
from PIL import Image
from tqdm import tqdm

from ocr_tf.layers.mscale import is_mscale
from ocr_tf.metrics import ConfusionMatrix, miou_from_confusion
from ocr_tf.preprocessing import IGNORE_LABEL, normalize_image
from ocr_tf.visualize import save_png

LABEL_FORMATS = ("raw", "trainids")
CITYSCAPES_ID = re.compile(r"([a-z_]+_\d{6}_\d{6})")


# ----------------------------------------------------------------------------------------------
# Label ids: the dataset's raw ids <-> train ids


def label_tables(dataset):
    """(raw -> train id uint8[256], known raw ids bool[256], train -> raw uint8[256]) of a dataset.

    Datasets without a LABEL_MAP (a `folder` dataset's class file) store train ids already.
    """
    from ocr_tf.data.datasets import get_module

    try:
        mapping = getattr(get_module(dataset), "LABEL_MAP", None)
    except ValueError:
        mapping = None  # a class file path: labels are train ids
    if mapping is None:
        mapping = {i: i for i in range(256)}
    to_train = np.full(256, IGNORE_LABEL, np.uint8)
    known = np.zeros(256, bool)
    to_raw = np.zeros(256, np.uint8)
    for raw in sorted(mapping, reverse=True):  # the smallest raw id wins the inverse
        to_train[raw] = mapping[raw]
        known[raw] = True
        to_raw[mapping[raw]] = raw
    return to_train, known, to_raw


def to_train_ids(array, label_format, tables, what):
    """Map a label PNG's values to train ids; unknown raw ids are an error naming `what`."""
    if array.ndim != 2:
        raise ValueError(f"{what}: expected a single-channel label PNG, got shape {array.shape}.")
    if array.dtype != np.uint8:
        if array.size and (array.min() < 0 or array.max() > 255):
            raise ValueError(f"{what}: label values must be 0..255, got {array.min()}..{array.max()}.")
        array = array.astype(np.uint8)
    if label_format == "trainids":
        return array
    to_train, known, _ = tables
    unknown = np.unique(array[~known[array]])
    if unknown.size:
        raise ValueError(f"{what}: label ids {unknown.tolist()[:10]} are not defined by the dataset.")
    return to_train[array]


def read_label_png(path):
    try:
        return np.array(Image.open(path))
    except (OSError, ValueError) as e:
        raise ValueError(f"{path}: cannot read label PNG ({e}).") from None


# ----------------------------------------------------------------------------------------------
# Scoring folders of PNGs


def _pairs(predictions_dir, ground_truth_dir, dataset):
    """[(prediction path, ground-truth path)]: Cityscapes by `<city>_<seq>_<frame>` (any prefix
    or suffix, as cityscapesscripts matches them); other datasets by file name without extension."""
    for folder, what in ((predictions_dir, "--predictions"), (ground_truth_dir, "--ground-truth")):
        if not os.path.isdir(folder):
            raise FileNotFoundError(f"{what}: folder {folder} not found.")
    predictions = sorted(glob.glob(os.path.join(predictions_dir, "**", "*.png"), recursive=True))
    if dataset == "cityscapes":
        truths = sorted(glob.glob(os.path.join(ground_truth_dir, "**", "*_gtFine_labelIds.png"), recursive=True))
        key = lambda p: (CITYSCAPES_ID.match(os.path.basename(p)) or [None])[0]  # noqa: E731
    else:
        truths = sorted(glob.glob(os.path.join(ground_truth_dir, "**", "*.png"), recursive=True))
        key = lambda p: os.path.splitext(os.path.basename(p))[0]  # noqa: E731
    if not truths:
        raise FileNotFoundError(f"--ground-truth: no label PNGs found under {ground_truth_dir}.")
    by_key = {}
    for p in predictions:
        k = key(p)
        if k is not None:
            if k in by_key:
                raise ValueError(f"two predictions for {k}: {by_key[k]} and {p}.")
            by_key[k] = p
    pairs, missing = [], []
    for t in truths:
        k = key(t)
        if k not in by_key:
            missing.append(t)
        else:
            pairs.append((by_key[k], t))
    if missing:
        raise FileNotFoundError(
            f"{len(missing)} ground-truth files have no prediction in {predictions_dir}, e.g. {missing[:3]}."
        )
    return pairs


def score_folders(predictions_dir, ground_truth_dir, dataset, num_classes, label_format="raw", progress=True):
    """ConfusionMatrix (K, K + 1: the last column counts predictions of no class) of label PNG
    folders. Ground truth is always in the dataset's raw format; predictions in `label_format`."""
    tables = label_tables(dataset)
    cm = ConfusionMatrix(num_classes, void_predictions=True)
    for pred_path, gt_path in tqdm(_pairs(predictions_dir, ground_truth_dir, dataset), desc="scoring", disable=not progress):
        gt = to_train_ids(read_label_png(gt_path), "raw", tables, gt_path)
        pred = to_train_ids(read_label_png(pred_path), label_format, tables, pred_path)
        if pred.shape != gt.shape:
            raise ValueError(f"{pred_path} is {pred.shape} but its ground truth {gt_path} is {gt.shape}.")
        try:
            cm.update(gt, pred)
        except ValueError as e:
            raise ValueError(f"{pred_path} / {gt_path}: {e}") from None
    return cm


# ----------------------------------------------------------------------------------------------
# Scoring a model on TFRecords


def prediction_name(source_id, index, dataset):
    """File name of a written prediction: Cityscapes' test-server naming, else the source id."""
    if not source_id:
        return f"{index:06d}.png"
    stem = os.path.basename(source_id)
    if dataset == "cityscapes":
        stem = stem.removesuffix("_leftImg8bit")
        return f"{stem}_leftImg8bit.png"
    return f"{os.path.splitext(stem)[0]}.png"


def evaluate_model(
    model,
    data,
    *,
    dataset,
    num_classes,
    ignore_label=IGNORE_LABEL,
    inference=None,
    write_predictions=None,
    label_format="raw",
    limit=None,
    progress=True,
):
    """ConfusionMatrix of `model` over the TFRecords matching `data` (one image at a time, at its
    own size, as the references evaluate). `inference`: keyword arguments of
    `ocr_tf.inference.predict_logits` (mode, crop_size, scales, flip, flip_pairs, ...)."""
    from ocr_tf.data import records
    from ocr_tf.inference import predict_labels

    files = sorted(glob.glob(data))
    if not files:
        raise FileNotFoundError(f"--data: no TFRecord files match {data!r}.")
    run = tf.function(lambda x: model(x, training=False), reduce_retracing=True)
    if is_mscale(model):  # inference runs its own multi-scale graph (issue 15)
        run = model
    tables = label_tables(dataset)
    names = tf.data.Dataset.from_tensor_slices(files)
    records_ds = names.interleave(
        lambda f: tf.data.TFRecordDataset(f).enumerate().map(lambda i, r: (f, i, r)), cycle_length=1
    )
    records_ds = records_ds.map(
        lambda f, i, r: records.decode_record(r, num_classes, ignore_label, f, i),
        num_parallel_calls=tf.data.AUTOTUNE,
    ).prefetch(2)
    if limit:
        records_ds = records_ds.take(limit)
    cm = ConfusionMatrix(num_classes, ignore_label)
    written = set()
    for index, (image, label, sid) in enumerate(tqdm(records_ds, desc="evaluating", total=limit, disable=not progress)):
        pred = predict_labels(run, normalize_image(image)[None], num_classes=num_classes, **(inference or {}))[0]
        pred = pred.numpy()
        cm.update(label.numpy(), pred)
        if write_predictions:
            name = prediction_name(sid.numpy().decode(), index, dataset)
            if name in written:
                raise ValueError(f"two records would write {name}; source ids must be unique.")
            written.add(name)
            out = pred.astype(np.uint8) if label_format == "trainids" else tables[2][pred]
            save_png(out, os.path.join(write_predictions, name))
    return cm


# ----------------------------------------------------------------------------------------------
# Reports


def markdown_table(scores, class_names):
    """Per-class IoU and the summary, in percent, as a Markdown table."""
    pct = lambda v: "n/a" if v != v else f"{100 * v:.2f}"  # noqa: E731  (NaN != NaN)
    lines = ["| class | IoU (%) |", "|---|---:|"]
    lines += [f"| {name} | {pct(iou)} |" for name, iou in zip(class_names, scores["per_class_iou"])]
    lines += [
        "",
        "| mIoU (%) | pixel accuracy (%) | mean accuracy (%) | classes in the mean | pixels |",
        "|---:|---:|---:|---:|---:|",
        f"| {pct(scores['miou'])} | {pct(scores['pixel_accuracy'])} | {pct(scores['mean_accuracy'])} "
        f"| {scores['valid_classes']} / {len(class_names)} | {scores['num_pixels']} |",
    ]
    return "\n".join(lines) + "\n"


def _nan_to_none(value):
    """NaN (absent classes) -> None, written as null: strict JSON readers reject NaN."""
    if isinstance(value, float) and value != value:
        return None
    if isinstance(value, dict):
        return {k: _nan_to_none(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_nan_to_none(v) for v in value]
    return value


def _write_atomic(path, write):
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def write_report(cm, class_names, output_dir, extra=None):
    """metrics.json, metrics.md and confusion_matrix.npy in `output_dir`; returns the scores."""
    scores = miou_from_confusion(cm.matrix, class_names)
    scores.update(extra or {})
    os.makedirs(output_dir, exist_ok=True)

    def write_json(tmp):
        with open(tmp, "w") as f:
            json.dump(_nan_to_none(scores), f, indent=2, allow_nan=False)

    def write_md(tmp):
        with open(tmp, "w") as f:
            f.write(markdown_table(scores, class_names))

    def write_npy(tmp):
        with open(tmp, "wb") as f:
            np.save(f, cm.matrix)

    _write_atomic(os.path.join(output_dir, "metrics.json"), write_json)
    _write_atomic(os.path.join(output_dir, "metrics.md"), write_md)
    _write_atomic(os.path.join(output_dir, "confusion_matrix.npy"), write_npy)
    return scores


# ----------------------------------------------------------------------------------------------
# CLI


def _size(text):
    """'512' or '512x1024' -> (h, w)."""
    parts = text.lower().split("x")
    try:
        values = tuple(int(p) for p in parts)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected N or HxW, got {text!r}") from None
    if len(values) == 1:
        values = values * 2
    if len(values) != 2 or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected N or HxW with positive sizes, got {text!r}")
    return values


def _scales(text):
    try:
        values = tuple(float(s) for s in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None
    if not values or min(values) <= 0:
        raise argparse.ArgumentTypeError(f"scales must be positive, got {text!r}")
    return values


def add_inference_arguments(parser):
    """Test-time options shared with `ocr_tf.predict`."""
    group = parser.add_argument_group("test-time inference")
    group.add_argument("--mode", choices=("whole", "slide"), default="whole", help="whole image (default) or sliding windows")
    group.add_argument("--crop-size", type=_size, help="sliding window size, N or HxW")
    group.add_argument("--stride", type=_size, help="sliding window stride (default 2/3 of the crop)")
    group.add_argument("--scales", type=_scales, default=(1.0,), help="comma-separated image scales, e.g. 0.5,0.75,1,1.25,1.5,1.75")
    group.add_argument("--flip", action="store_true", help="also score the mirrored image (swaps the dataset's left/right classes)")
    group.add_argument(
        "--align-corners", action=argparse.BooleanOptionalAction, default=True,
        help="resize logits with align_corners=True, as the references (default on)",
    )


def inference_options(args, info):
    return {
        "mode": args.mode,
        "crop_size": args.crop_size,
        "stride": args.stride,
        "scales": args.scales,
        "flip": args.flip,
        "flip_pairs": info.flip_pairs,
        "align_corners": args.align_corners,
    }


def build_parser():
    parser = argparse.ArgumentParser(
        prog="python -m ocr_tf.evaluate",
        description="mIoU, per-class IoU, pixel accuracy and the confusion matrix of a model on TFRecords, "
        "or of folders of label PNGs. Absent classes (no ground truth, no prediction) are NaN and "
        "left out of the mean, as cityscapesscripts does.",
    )
    parser.add_argument("--config", help="training config YAML: model name/overrides, dataset, validation data")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override, e.g. data.val=...")
    parser.add_argument("--model", help="registered model name, e.g. hrnet_w48_ocr (not needed for a .keras file)")
    parser.add_argument("--model-arg", action="append", metavar="KEY=VALUE", help="build_model override, e.g. extra=w18")
    parser.add_argument("--weights", help="a .keras model, or a .weights.h5 file for --model")
    parser.add_argument("--data", help="glob of validation TFRecords")
    parser.add_argument("--dataset", help="cityscapes | ade20k | lip | pascal_context | coco_stuff | demo | a class file")
    parser.add_argument("--num-classes", type=int, help="number of classes (default: the dataset's)")
    parser.add_argument("--limit", type=int, help="evaluate only the first N images")
    parser.add_argument("--predictions", help="folder of predicted label PNGs to score (with --ground-truth)")
    parser.add_argument("--ground-truth", help="folder of ground-truth label PNGs (the dataset's own format)")
    parser.add_argument(
        "--label-format", choices=LABEL_FORMATS, default="raw",
        help="format of --predictions read and --write-predictions written: the dataset's own ids "
        "(raw, default; Cityscapes labelIds) or train ids",
    )
    parser.add_argument("--write-predictions", metavar="DIR", help="also write the model's predictions as label PNGs")
    parser.add_argument("--output", default="eval", help="folder for metrics.json, metrics.md, confusion_matrix.npy (default ./eval)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    add_inference_arguments(parser)
    return parser


def _from_config(args):
    """Fill model/dataset/data/num_classes from --config where the command line left them out."""
    from ocr_tf.config import load_config

    config = load_config(args.config, args.set)
    args.model = args.model or config.model.name
    args.dataset = args.dataset or config.data.dataset
    args.data = args.data or config.data.val
    args.num_classes = args.num_classes or config.data.num_classes or None
    return dict(config.model.overrides)


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    overrides = _from_config(args) if args.config else {}
    if args.weights and str(args.weights).endswith(".keras"):
        overrides = {}  # a .keras file carries its own architecture; only --model-arg is an error
    if args.model_arg:
        from ocr_tf.export import _parse_overrides

        overrides.update(_parse_overrides(args.model_arg))
    if not args.dataset:
        parser.error("--dataset (or --config) is required.")
    from ocr_tf.data.datasets import get_dataset_info

    info = get_dataset_info(args.dataset)
    num_classes = args.num_classes or info.num_classes
    if num_classes != info.num_classes:
        parser.error(f"--num-classes {num_classes} disagrees with {info.name}'s {info.num_classes} classes.")

    folder_mode = args.predictions or args.ground_truth
    if folder_mode:
        if not (args.predictions and args.ground_truth):
            parser.error("--predictions and --ground-truth go together.")
        cm = score_folders(args.predictions, args.ground_truth, args.dataset, num_classes, args.label_format, not args.quiet)
        extra = {"predictions": args.predictions, "ground_truth": args.ground_truth}
    else:
        if not args.data:
            parser.error("--data (or --config with data.val) is required to evaluate a model.")
        if not args.weights:
            parser.error("--weights is required to evaluate a model.")
        if args.mode == "slide" and not args.crop_size:
            parser.error("--mode slide needs --crop-size.")
        from ocr_tf.export import load_model

        model = load_model(args.weights, args.model, num_classes, overrides)
        options = inference_options(args, info)
        cm = evaluate_model(
            model, args.data, dataset=args.dataset, num_classes=num_classes, ignore_label=info.ignore_label,
            inference=options, write_predictions=args.write_predictions, label_format=args.label_format,
            limit=args.limit, progress=not args.quiet,
        )
        extra = {"weights": args.weights, "data": args.data, "inference": {**options, "flip_pairs": list(options["flip_pairs"])}}
    scores = write_report(cm, info.class_names, args.output, {"dataset": info.name, **extra})
    print(markdown_table(scores, info.class_names))
    print(f"mIoU {100 * scores['miou']:.2f}% over {scores['valid_classes']} classes; report in {args.output}/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
