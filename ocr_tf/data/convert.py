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
import io
import math
import os
import sys

import numpy as np
from PIL import Image

from ocr_tf.data.datasets import base, get_module
from ocr_tf.errors import UserError

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
    """A source image/label pair that cannot be converted; names both files."""


def encoded_image(path):
    """Bytes to store for an image file: the file itself when PNG/JPEG in RGB or grey (exact
    pixels, no re-encoding), else a PNG of its RGB conversion."""
    with open(path, "rb") as f:
        data = f.read()
    try:
        img = Image.open(io.BytesIO(data))
        size = img.size
        mode = img.mode
    except Exception as e:  # PIL raises several types for unreadable files
        raise ConversionError(f"cannot read image {path}: {e}") from e
    from ocr_tf.data import records

    fmt = records.sniff_format(data)
    if fmt is not None and mode in ("RGB", "L"):
        return data, size
    return records.encode_png(np.asarray(img.convert("RGB"))), size


def load_label(path, table, known):
    """Read a single-channel label PNG and map it through `table`; unknown ids are an error."""
    try:
        img = Image.open(path)
        img.load()
    except Exception as e:
        raise ConversionError(f"cannot read label {path}: {e}") from e
    if img.mode not in ("L", "P", "I", "I;16", "1"):
        raise ConversionError(f"label {path} is mode {img.mode}; expected single-channel class ids "
                              "(a colour-coded mask must be converted to ids first)")
    array = np.asarray(img)
    if array.max(initial=0) > 255:
        raise ConversionError(f"label {path} has ids above 255 (max {array.max()})")
    array = array.astype(np.uint8)
    present = np.bincount(array.ravel(), minlength=256) > 0
    unknown = np.flatnonzero(present & ~known)
    if unknown.size:
        raise ConversionError(f"label {path} has ids {unknown.tolist()} outside the dataset's "
                              f"label map (known ids: {np.flatnonzero(known).tolist()[:40]}...)")
    return table[array], img.size


def convert_pair(source_id, image_path, label_path, table, known):
    """-> (serialized tf.train.Example, mapped label or None)."""
    from ocr_tf.data import records

    data, size = encoded_image(image_path)
    label = None
    if label_path is not None:
        label, label_size = load_label(label_path, table, known)
        if label_size != size:
            raise ConversionError(f"size mismatch: image {image_path} is {size[0]}x{size[1]} (WxH) "
                                  f"but label {label_path} is {label_size[0]}x{label_size[1]}")
    return records.make_example(data, label, source_id).SerializeToString(), label


def convert_split(module, info, label_map, root, out, split, records_per_shard=100, num_shards=None,
                  skip_bad=False, workers=4, progress=True, overwrite=False, **find_options):
    """Convert one split; returns the info dict written to `<split>-info.json`."""
    from tqdm import tqdm

    from ocr_tf.data import records

    pairs = module.find_pairs(root, split, **find_options)
    if not pairs:
        raise FileNotFoundError(f"{info.name}: no images found for split {split!r} under {root}")
    table = base.lookup_table(label_map)
    known = np.zeros(256, bool)
    known[list(label_map)] = True
    shards = num_shards or max(1, math.ceil(len(pairs) / records_per_shard))
    shards = min(shards, len(pairs))
    skipped = []

    def work(pair):
        try:
            return convert_pair(*pair, table, known), None
        except (ConversionError, records.RecordError, OSError) as e:
            return None, str(e)

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
        writer.extra_info.update({"dataset": info.name, "skipped": skipped})
    return writer.info()


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
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)

    module = get_module(args.dataset)
    options = {}
    if args.dataset == "folder":
        info = module.load_info(args.root, args.classes)
        label_map = module.label_map(info, args.remap)
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
                                   not args.no_progress, args.overwrite, **options)
            print(summarize(result, info.class_names))
            print(f"  wrote {os.path.join(args.out, split + '-*.tfrecord')} and {split}-info.json")
    except (ConversionError, FileNotFoundError, ValueError) as e:  # RecordError is a ValueError
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
