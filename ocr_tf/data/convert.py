"""Convert a segmentation dataset to sharded TFRecords (tf-models keys).

  python -m ocr_tf.data.convert cityscapes --root ~/data/cityscapes --out ~/data/cityscapes/tfrecords
  python -m ocr_tf.data.convert folder --root my_data --out my_data/tfrecords --remap remap.txt

Images already PNG or JPEG (RGB or grey) are stored byte for byte; labels are mapped to train ids
(255 = ignore) and stored as single-channel PNG. Each split gets `<split>-NNNNN-of-NNNNN.tfrecord`
shards (temporary names until complete) and `<split>-info.json` with the record count per shard
and the class pixel counts/frequencies (derive class weights from it).
"""

import argparse
import concurrent.futures
import math
import os
import sys
import threading

import numpy as np

from ocr_tf.data import check, images
from ocr_tf.data.datasets import base, get_module
from ocr_tf.errors import MissingFileError, UserError
from ocr_tf.temporaries import ensure_output_dir, remove_stale

DATASET_HELP = {
    "cityscapes": "leftImg8bit/ + gtFine/ (or gtCoarse/ with --coarse); labelIds -> trainIds "
                  "with cityscapesscripts' table; splits train, val, test (no labels), train_extra",
    "ade20k": "ADEChallengeData2016/images|annotations/training|validation; 0 -> ignore, 1..150 -> 0..149",
    "lip": "TrainVal_images/{train,val}_images + TrainVal_parsing_annotations/{train,val}_segmentations; "
           "20 classes 0..19 as they are",
    "pascal_context": "59 classes from the PNG masks VOC2010/SegmentationClassContext/*.png "
                      "(0 = background, 1..59 = classes; listed in ImageSets/SegmentationContext/"
                      "{train,val}.txt): 0 -> ignore, 1..59 -> 0..58",
    "coco_stuff": "COCO-Stuff 164k: images/{train,val}2017 + annotations/{train,val}2017 "
                  "(stuffthingmaps, ids 0..181, 255 unlabeled) -> the 171-class train ids",
    "folder": "images/[split/] + masks/[split/] with matching names, classes.txt (one class per "
              "line); masks hold train ids or are mapped with --remap",
}


class ConversionError(UserError):
    """A source image/label pair (or a whole data set) that cannot be converted; names the files."""


def encoded_image(path):
    """(bytes to store, (width, height)) of an image file, decoded in full first (a truncated
    file is an error naming it); see `ocr_tf.data.images.encoded_image`."""
    encoded = images.encoded_image(path)
    return encoded.data, encoded.size


def convert_pair(source_id, image_path, label_path, table, known, checker=None, colour_table=None,
                 force=False):
    """-> (serialized tf.train.Example, mapped label or None), the pair's facts added to `checker`.

    Ids outside the label map are an error naming them unless `force` (then they become ignore).
    """
    from ocr_tf.data import records

    checker = checker or check.DatasetChecker(256)
    encoded, label = check.inspect_pair(checker, image_path, label_path, table, known, colour_table)
    unknown = checker.out_of_range.get(label_path) if label_path is not None else None
    if unknown and not force:
        hint = check.remap_hint(set(unknown) | {0}, checker.num_classes) if checker.num_classes < 256 else ""
        raise ConversionError(f"label {label_path} has ids {unknown} outside the dataset's label map "
                              f"(known ids: {np.flatnonzero(known).tolist()[:40]}...)"
                              + (f"; {hint}" if hint else ""))
    return records.make_example(encoded.data, label, source_id).SerializeToString(), label


def convert_split(module, info, label_map, root, out, split, records_per_shard=100, num_shards=None,
                  skip_bad=False, workers=4, progress=True, overwrite=False, force=False, colour_table=None,
                  **find_options):
    """Convert one split; returns the info dict written to `<split>-info.json`.

    Every image and mask is decoded in full and checked (`ocr_tf.data.check`): a pair that
    cannot be used stops the conversion (or is skipped and listed with `skip_bad`); after the
    last pair, findings that would train garbage (binary 0/255 masks with 2 classes, ids outside
    the class list) stop it before any shard gets its final name, unless `force` (ids outside
    the class list then become ignore). Stale temporaries of killed conversions in `out` are
    removed first.
    """
    from tqdm import tqdm

    from ocr_tf.data import records

    pairs = module.find_pairs(root, split, **find_options)
    if not pairs:
        raise MissingFileError(f"{info.name}: no images found for split {split!r} under {root}")
    table = base.lookup_table(label_map)
    known = np.zeros(256, bool)
    known[list(label_map)] = True
    shards = num_shards or max(1, math.ceil(len(pairs) / records_per_shard))
    shards = min(shards, len(pairs))
    skipped = []
    checker = check.DatasetChecker(info.num_classes, info.class_names)
    lock = threading.Lock()

    def work(pair):
        try:
            return convert_pair(*pair, table, known, _Locked(checker, lock), colour_table, force), None
        except (UserError, OSError) as e:
            return None, str(e)

    if not force:
        _preflight(pairs, table, known, info, colour_table)
    ensure_output_dir(out, "--out")
    remove_stale(out)
    with records.ShardedWriter(out, split, shards, info.num_classes, info.class_names,
                               overwrite=overwrite) as writer, \
            concurrent.futures.ThreadPoolExecutor(max(1, workers)) as pool:
        bar = tqdm(pool.map(work, pairs), total=len(pairs), desc=f"{info.name}/{split}",
                   unit="img", disable=not progress)
        for (result, error), pair in zip(bar, pairs):
            if error is not None:
                if not skip_bad:
                    raise ConversionError(f"{error} (use --skip-bad to skip such pairs)")
                skipped.append({"source_id": pair[0], "error": error})
                continue
            example, label = result
            writer.write(example)
            if label is not None:
                writer.count_label(label)
            bar.set_postfix(written=writer.num_written, skipped=len(skipped))
        # Unusable pairs were handled one by one above (error, --skip-bad, or --force: ids -> ignore).
        blocking = [f for f in checker.blocking() if f.kind == "binary_0_255"]
        if blocking and not force:  # raised inside the `with`: the shards are never committed
            raise ConversionError(f"{blocking[0].message} (--force converts as is)")
        findings = [f for f in checker.findings() if f.level != check.INFO]
        writer.extra_info.update({
            "dataset": info.name, "skipped": skipped,
            "warnings": [str(f) for f in findings],
            "suggested_class_weights": checker.class_weights(),
            "class_weight_formula": "median frequency balancing: median(freq) / freq_c, freq_c = pixels of c / "
                                    "labelled pixels of the images containing c",
        })
    return writer.info()


def _preflight(pairs, table, known, info, colour_table, sample=16):
    """Stop before converting anything when the first `sample` masks already show a data set
    that would train garbage (0/255 masks with 2 classes); the full check runs at the end too."""
    checker = check.DatasetChecker(info.num_classes, info.class_names)
    for _, _, mask_path in pairs[:sample]:
        if mask_path is None:
            return
        try:
            raw = images.read_mask(mask_path, colour_table)
        except UserError:
            return  # the conversion itself names the file
        checker.add(mask_path, mask_path=mask_path, raw_mask=raw, label=table[raw])
    blocking = [f for f in checker.blocking() if f.kind == "binary_0_255"]
    if blocking:
        raise ConversionError(blocking[0].message.replace("all ", "the first ", 1) + " (--force converts as is)")


class _Locked:
    """`checker` behind a lock: conversion workers add facts from several threads."""

    def __init__(self, checker, lock):
        self._checker, self._lock = checker, lock

    def add(self, *args, **kwargs):
        with self._lock:
            self._checker.add(*args, **kwargs)

    def __getattr__(self, name):
        return getattr(self._checker, name)


def summarize(info, names):
    lines = [f"{info['split']}: {info['num_records']} images in {info['num_shards']} shard(s)"
             + (f", {len(info['skipped'])} skipped" if info.get("skipped") else "")]
    if "class_frequencies" in info:
        freq = info["class_frequencies"]
        top = sorted(range(len(freq)), key=lambda k: -freq[k])
        lines.append("  class pixel frequencies: " + ", ".join(
            f"{names[k]} {freq[k]:.3f}" for k in top[:8]) + (" ..." if len(top) > 8 else ""))
        absent = [names[k] for k in range(len(freq)) if freq[k] == 0]
        if absent:
            lines.append(f"  classes with no pixels: {', '.join(absent[:10])}{' ...' if len(absent) > 10 else ''}")
    for s in info.get("skipped", [])[:10]:
        lines.append(f"  skipped {s['source_id']}: {s['error']}")
    for w in info.get("warnings", []):
        if "never appear" not in w:  # said above as "classes with no pixels"
            lines.append(f"  {w}")
    if info.get("suggested_class_weights"):
        lines.append(f"  suggested loss.class_weights (median frequency balancing): {info['suggested_class_weights']}")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m ocr_tf.data.convert", description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Datasets and the layout each expects under --root:\n" + "\n".join(
            f"  {k}: {v}" for k, v in DATASET_HELP.items()))
    parser.add_argument("dataset", choices=sorted(DATASET_HELP))
    parser.add_argument("--root", required=True, help="dataset folder in its official layout")
    parser.add_argument("--out", required=True, help="output folder for the shards and info JSON")
    parser.add_argument("--splits", nargs="+", help="splits to convert (default: train val)")
    parser.add_argument("--records-per-shard", type=int, default=100,
                        help="shard count = ceil(images / this) unless --shards (default 100)")
    parser.add_argument("--shards", type=int, help="number of shards per split")
    parser.add_argument("--skip-bad", action="store_true",
                        help="skip unreadable / mismatched / out-of-range pairs, list them at the end")
    parser.add_argument("--workers", type=int, default=min(4, os.cpu_count() or 1),
                        help="threads reading and encoding files")
    parser.add_argument("--coarse", action="store_true", help="cityscapes: labels from gtCoarse/")
    parser.add_argument("--classes", help="folder: class list file (default ROOT/classes.txt)")
    parser.add_argument("--remap", help="folder: file of 'source target' id pairs applied to masks")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace existing shards of the split in --out (after the new ones are complete)")
    parser.add_argument("--force", action="store_true",
                        help="convert what the checks call garbage: 0/255 binary masks with 2 classes as they "
                             "are, mask ids outside the class list as ignore (listed in the summary)")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    for flag, value in (("--records-per-shard", args.records_per_shard), ("--shards", args.shards),
                        ("--workers", args.workers)):
        if value is not None and value < 1:
            parser.error(f"{flag} must be >= 1, got {value}")

    module = get_module(args.dataset)
    options = {}
    if args.dataset == "folder":
        try:
            info = module.load_info(args.root, args.classes)
            label_map = module.label_map(info, args.remap)
        except UserError as e:
            print(f"error: {e}", file=sys.stderr)
            return 1
        options["colour_table"] = check.colour_table(info, args.classes or os.path.join(args.root, "classes.txt"))
    else:
        if args.classes or args.remap:
            parser.error("--classes/--remap apply to the folder dataset only")
        info, label_map = module.INFO, module.LABEL_MAP
    if args.coarse:
        if args.dataset != "cityscapes":
            parser.error("--coarse applies to cityscapes only")
        options["coarse"] = True
    default_splits = module.available_splits(args.root) if args.dataset == "folder" else module.SPLITS
    splits = args.splits or list(default_splits)
    try:
        for split in splits:
            result = convert_split(module, info, label_map, args.root, args.out, split,
                                   args.records_per_shard, args.shards, args.skip_bad, args.workers,
                                   not args.no_progress, args.overwrite, args.force, **options)
            print(summarize(result, info.class_names))
            print(f"  wrote {os.path.join(args.out, split + '-*.tfrecord')} and {split}-info.json")
    except (UserError, FileNotFoundError, ValueError) as e:  # RecordError, ConversionError: UserErrors
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
