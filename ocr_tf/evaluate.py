"""Score a model on a validation set, or score folders of label PNGs written by any model
(the command: `ocr_tf.cli.evaluate`).

  python -m ocr_tf.evaluate --weights best.keras --data 'val-*.tfrecord' \\
      [--mode slide --crop-size 1024x1024 --scales 0.5,0.75,1,1.25,1.5,1.75 --flip]
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

if __name__ == "__main__":  # `python -m ocr_tf.evaluate`: parse arguments before TensorFlow loads
    from ocr_tf.cli.evaluate import main

    raise SystemExit(main())

import glob
import json
import os
import re

import numpy as np
import tensorflow as tf
from PIL import Image
from tqdm import tqdm

from ocr_tf.errors import MissingFileError, UserError
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
        raise UserError(f"{what}: expected a single-channel label PNG, got shape {array.shape}.")
    if array.dtype != np.uint8:
        if array.size and (array.min() < 0 or array.max() > 255):
            raise UserError(f"{what}: label values must be 0..255, got {array.min()}..{array.max()}.")
        array = array.astype(np.uint8)
    if label_format == "trainids":
        return array
    to_train, known, _ = tables
    unknown = np.unique(array[~known[array]])
    if unknown.size:
        raise UserError(f"{what}: label ids {unknown.tolist()[:10]} are not defined by the dataset.")
    return to_train[array]


def read_label_png(path):
    try:
        return np.array(Image.open(path))
    except (OSError, ValueError) as e:
        raise UserError(f"{path}: cannot read label PNG ({e}).") from None


# ----------------------------------------------------------------------------------------------
# Scoring folders of PNGs


def _pairs(predictions_dir, ground_truth_dir, dataset):
    """[(prediction path, ground-truth path)]: Cityscapes by `<city>_<seq>_<frame>` (any prefix
    or suffix, as cityscapesscripts matches them); other datasets by file name without extension."""
    for folder, what in ((predictions_dir, "--predictions"), (ground_truth_dir, "--ground-truth")):
        if not os.path.isdir(folder):
            raise MissingFileError(f"{what}: folder {folder} not found.")
    predictions = sorted(glob.glob(os.path.join(predictions_dir, "**", "*.png"), recursive=True))
    if dataset == "cityscapes":
        truths = sorted(glob.glob(os.path.join(ground_truth_dir, "**", "*_gtFine_labelIds.png"), recursive=True))
        key = lambda p: (CITYSCAPES_ID.match(os.path.basename(p)) or [None])[0]  # noqa: E731
    else:
        truths = sorted(glob.glob(os.path.join(ground_truth_dir, "**", "*.png"), recursive=True))
        key = lambda p: os.path.splitext(os.path.basename(p))[0]  # noqa: E731
    if not truths:
        raise MissingFileError(f"--ground-truth: no label PNGs found under {ground_truth_dir}.")
    by_key = {}
    for p in predictions:
        k = key(p)
        if k is not None:
            if k in by_key:
                raise UserError(f"two predictions for {k}: {by_key[k]} and {p}.")
            by_key[k] = p
    pairs, missing = [], []
    for t in truths:
        k = key(t)
        if k not in by_key:
            missing.append(t)
        else:
            pairs.append((by_key[k], t))
    if missing:
        raise MissingFileError(
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
            raise UserError(f"{pred_path} is {pred.shape} but its ground truth {gt_path} is {gt.shape}.")
        try:
            cm.update(gt, pred)
        except ValueError as e:
            raise UserError(f"{pred_path} / {gt_path}: {e}") from None
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
    `ocr_tf.inference.predict_logits` (mode, crop_size, scales, flip, flip_pairs, ...); a
    Segmenter's normalisation and align_corners are used unless `inference` says otherwise."""
    from ocr_tf.data import records
    from ocr_tf.inference import compiled_runner, predict_labels

    files = sorted(glob.glob(data))
    if not files:
        raise MissingFileError(f"--data: no TFRecord files match {data!r}.")
    run = compiled_runner(model)
    normalize = getattr(model, "normalize", normalize_image)  # a Segmenter's own mean/std
    inference = {"align_corners": getattr(model, "align_corners", True), **(inference or {})}
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
    records_ds = records.iterate_naming_damaged_shards(records_ds, files)  # a bad shard is named
    for index, (image, label, sid) in enumerate(tqdm(records_ds, desc="evaluating", total=limit, disable=not progress)):
        pred = predict_labels(run, normalize(image)[None], num_classes=num_classes, **inference)[0]
        pred = pred.numpy()
        cm.update(label.numpy(), pred)
        if write_predictions:
            name = prediction_name(sid.numpy().decode(), index, dataset)
            if name in written:
                raise UserError(f"two records would write {name}; source ids must be unique.")
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
