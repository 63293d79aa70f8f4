"""The data doctor: what is wrong with a segmentation data set, before it trains garbage.

  python -m ocr_tf.data.check my_data                      # images/ + masks/ + classes.txt
  python -m ocr_tf.data.check my_data --remap remap.txt    # as `data.convert folder` would map it
  python -m ocr_tf.data.check 'tfrecords/train-*.tfrecord' # converted shards

Finds: unreadable or truncated files, colour-coded RGB masks (with the colours found), binary
masks stored as 0/255 (255 means "ignore") or 0/1, ids outside the class list (with the exact
--remap that would fix 1-based ids), image/mask size mismatches, 16-bit images, identical
images, classes never present; reports class pixel frequencies and suggested class weights.
`python -m ocr_tf.data.convert` runs the same checks and stops on errors unless --force.
Exit status: 0 no errors, 1 errors found, 2 the path or arguments are wrong.
"""

import argparse
import hashlib
import os
import sys

ERROR, WARNING, INFO = "error", "warning", "info"
IGNORE = 255


class Finding:
    """One line of the report: a level (error/warning/info), a kind and a message naming files."""

    def __init__(self, level, kind, message):
        self.level, self.kind, self.message = level, kind, message

    def __str__(self):
        return f"{self.level}: {self.message}"

    def __repr__(self):
        return f"Finding({self.level!r}, {self.kind!r}, {self.message!r})"


def _ids_text(ids):
    ids = [int(i) for i in ids]
    return ", ".join(map(str, ids[:12])) + (f", ... ({len(ids)} ids)" if len(ids) > 12 else "")


def one_based_remap(num_classes):
    """The remap lines for masks holding 0 = unlabelled and 1..K = classes."""
    return ["0 255"] + [f"{k} {k - 1}" for k in range(1, num_classes + 1)]


def remap_hint(raw_ids, num_classes):
    """A sentence with the --remap that fixes masks whose raw ids are `raw_ids`, or ''."""
    ids = {int(i) for i in raw_ids}
    labels = ids - {IGNORE}
    if ids <= {0, 255} and IGNORE in ids and num_classes == 2:
        return ("255 means 'ignore', so with 2 classes every foreground pixel would be ignored; "
                "convert with --remap remap.txt holding the line '255 1'")
    if labels <= {0, 1} and num_classes == 1:
        return ("binary 0/1 masks but classes.txt lists one class: add a first line 'background' to "
                "classes.txt (0 = background, 1 = your class)")
    if labels and 0 in labels and max(labels) == num_classes:
        lines = one_based_remap(num_classes)
        shown = "', '".join(lines) if len(lines) <= 6 else "', '".join(lines[:3]) + "', ... '" + lines[-1]
        return (f"ids look 1-based (0 = unlabelled, 1..{num_classes} = classes): convert with --remap "
                f"remap.txt holding the lines '{shown}'")
    return ""


class DatasetChecker:
    """Collects per-image facts (one `add` per image/mask pair) and turns them into findings.

    Shared by the data doctor and by `data.convert` (which calls `add` for every pair it
    converts and `blocking()` before it commits the shards).

    Args:
      num_classes: classes of the class list (train ids 0..K-1; 255 = ignore).
      class_names: their names, for the report.
      remapped: whether a --remap file is in use (changes the advice given).
    """

    def __init__(self, num_classes, class_names=None, remapped=False):
        import numpy as np

        self.np = np
        self.num_classes = num_classes
        self.class_names = list(class_names or [str(k) for k in range(num_classes)])
        self.remapped = remapped
        self.num_images = 0
        self.num_masks = 0
        self.pixel_counts = np.zeros(256, np.int64)  # mapped ids
        self.present_pixels = np.zeros(256, np.int64)  # labelled pixels of the images holding each id
        self.raw_union = set()
        self.binary_0_255 = []  # masks whose raw ids are {0, 255} (or 255 alone)
        self.binary_0_1 = []
        self.has_other_ids = False
        self.sixteen_bit = []  # (path, brightest 8-bit value)
        self.hashes = {}  # sha1 of image bytes -> [paths]
        self.problems = []  # per-file errors (unreadable, colour, size, ids): Findings
        self.out_of_range = {}  # path -> raw ids outside the class list

    def add_problem(self, kind, message):
        self.problems.append(Finding(ERROR, kind, message))

    def add(self, image_path, image_bytes=None, bit_depth=8, peak=None, mask_path=None, raw_mask=None,
            label=None, unknown_ids=()):
        """Facts of one pair: the image's stored bytes (duplicates), bit depth and brightest 8-bit
        value (16-bit report), the mask's raw ids (binary-mask patterns) and mapped label (counts)."""
        np = self.np
        self.num_images += 1
        if image_bytes is not None:
            self.hashes.setdefault(hashlib.sha1(image_bytes).hexdigest(), []).append(image_path)
        if bit_depth == 16:
            self.sixteen_bit.append((image_path, peak))
        if len(unknown_ids):
            self.out_of_range[mask_path] = [int(i) for i in unknown_ids]
        if raw_mask is not None:
            self.num_masks += 1
            raw_ids = set(np.flatnonzero(np.bincount(raw_mask.ravel(), minlength=256)).tolist())
            self.raw_union |= raw_ids
            if raw_ids <= {0, 255} and 255 in raw_ids:
                self.binary_0_255.append(mask_path)
            elif raw_ids <= {0, 1} and 1 in raw_ids:
                self.binary_0_1.append(mask_path)
            elif raw_ids - {0}:
                self.has_other_ids = True
        if label is not None:
            counts = np.bincount(label.ravel(), minlength=256)
            self.pixel_counts += counts
            labelled = int(counts[:self.num_classes].sum())
            self.present_pixels[np.flatnonzero(counts)] += labelled

    # ----------------------------------------------------------------------------- verdicts

    def frequencies(self):
        """Pixel frequency of each class among labelled pixels (ignore excluded)."""
        counts = self.pixel_counts[:self.num_classes]
        return counts / max(int(counts.sum()), 1)

    def class_weights(self):
        """Median frequency balancing (Eigen & Fergus, ICCV 2015): freq_c = pixels of c / labelled
        pixels of the images where c appears; weight_c = median(freq) / freq_c. Classes never
        present get weight 0 (they cannot be learned from this data anyway)."""
        np = self.np
        counts = self.pixel_counts[:self.num_classes].astype(np.float64)
        seen = self.present_pixels[:self.num_classes].astype(np.float64)
        present = counts > 0
        if not present.any():
            return [0.0] * self.num_classes
        freq = np.where(present, counts / np.maximum(seen, 1), 0.0)
        median = float(np.median(freq[present]))
        return [round(float(median / f), 4) if f > 0 else 0.0 for f in freq]

    def blocking(self):
        """The findings that would train garbage: conversion stops on these unless --force."""
        found = list(self.problems)
        if self.out_of_range:
            path, ids = next(iter(self.out_of_range.items()))
            hint = remap_hint(self.raw_union, self.num_classes)
            found.append(Finding(ERROR, "ids_out_of_range",
                                 f"{len(self.out_of_range)} mask(s) hold ids outside the class list "
                                 f"(0..{self.num_classes - 1}, 255 = ignore), e.g. {path}: ids {_ids_text(ids)}"
                                 + (f"; {hint}" if hint else "; fix classes.txt or map them with --remap")))
        if (self.binary_0_255 and not self.has_other_ids and not self.binary_0_1 and self.num_classes == 2
                and not self.pixel_counts[1]):
            found.append(Finding(ERROR, "binary_0_255",
                                 f"all {len(self.binary_0_255)} masks hold only 0 and 255 (e.g. "
                                 f"{self.binary_0_255[0]}): {remap_hint({0, 255}, 2)}"))
        return found

    def findings(self):
        """Everything: blocking errors, then warnings, then the class statistics."""
        np = self.np
        found = self.blocking()
        if self.binary_0_1 and not self.has_other_ids and self.num_classes > 2:
            found.append(Finding(WARNING, "binary_0_1",
                                 f"all masks hold only 0 and 1 (e.g. {self.binary_0_1[0]}) but the class list has "
                                 f"{self.num_classes} classes; is the class list right?"))
        elif self.binary_0_1 and not self.has_other_ids and self.num_classes == 2:
            found.append(Finding(INFO, "binary_0_1",
                                 f"binary 0/1 masks: 0 = {self.class_names[0]}, 1 = {self.class_names[1]} "
                                 "(they look black in image viewers; that is fine)"))
        if self.sixteen_bit:
            dark = [(p, v) for p, v in self.sixteen_bit if v is not None and v < 64]
            found.append(Finding(WARNING if dark else INFO, "sixteen_bit",
                                 f"{len(self.sixteen_bit)} image(s) are 16-bit (e.g. {self.sixteen_bit[0][0]}): "
                                 "stored as 8-bit by value // 256, the range of the bit depth"
                                 + (f"; {len(dark)} come out dark (e.g. {dark[0][0]}: brightest "
                                    f"{dark[0][1]}/255), the data probably uses fewer than 16 bits: rescale "
                                    "them to 8-bit yourself" if dark else "")))
        duplicates = [paths for paths in self.hashes.values() if len(paths) > 1]
        if duplicates:
            found.append(Finding(WARNING, "duplicates",
                                 f"{sum(len(p) for p in duplicates)} images are byte-identical copies in "
                                 f"{len(duplicates)} group(s), e.g. {' = '.join(duplicates[0][:3])}"))
        if self.num_masks:
            absent = [self.class_names[k] for k in range(self.num_classes) if not self.pixel_counts[k]]
            if absent:
                found.append(Finding(WARNING, "absent_classes",
                                     f"{len(absent)} of {self.num_classes} classes never appear in the masks: "
                                     f"{', '.join(absent[:12])}{' ...' if len(absent) > 12 else ''}"))
            freq = self.frequencies()
            order = np.argsort(-freq, kind="stable")
            found.append(Finding(INFO, "frequencies", "class pixel frequencies: " + ", ".join(
                f"{self.class_names[k]} {freq[k]:.3f}" for k in order[:12]) + (" ..." if len(order) > 12 else "")
                + f"; ignore pixels {int(self.pixel_counts[IGNORE])}"))
            found.append(Finding(INFO, "class_weights",
                                 f"suggested loss.class_weights (median frequency balancing): {self.class_weights()}"))
        return found


# ------------------------------------------------------------------------------- folder data


def inspect_pair(checker, image_path, mask_path, table, known, colour_table=None):
    """Read and check one image/mask pair into `checker`; returns (encoded image, mapped label)
    or raises the pair's first problem (ImageReadError, ColourMaskError, a size mismatch)."""
    import numpy as np

    from ocr_tf.data import images
    from ocr_tf.errors import UserError

    encoded = images.encoded_image(image_path)
    label, raw, unknown = None, None, ()
    if mask_path is not None:
        raw = images.read_mask(mask_path, colour_table)
        if raw.shape[::-1] != tuple(encoded.size):
            w, h = encoded.size
            raise UserError(f"size mismatch: image {image_path} is {w}x{h} (WxH) but label {mask_path} is "
                            f"{raw.shape[1]}x{raw.shape[0]}")
        present = np.bincount(raw.ravel(), minlength=256) > 0
        unknown = np.flatnonzero(present & ~known)
        label = table[raw]
    checker.add(image_path, encoded.data, encoded.bit_depth, encoded.peak, mask_path, raw, label, unknown)
    return encoded, label


def check_folder(root, classes=None, remap=None, split=None, limit=None, progress=False):
    """Findings for a `folder` data set (images/ + masks/ [+ split folders] + classes.txt)."""
    import numpy as np

    from ocr_tf.data.datasets import base
    from ocr_tf.data.datasets import folder as folder_ds
    from ocr_tf.errors import UserError

    info = folder_ds.load_info(root, classes)
    mapping = folder_ds.label_map(info, remap)
    table = base.lookup_table(mapping)
    known = np.zeros(256, bool)
    known[list(mapping)] = True
    colours = colour_table(info, classes or os.path.join(root, "classes.txt"))
    splits = [split] if split else list(folder_ds.available_splits(root))
    report = []
    for name in splits:
        pairs = folder_ds.find_pairs(root, name)[:limit]
        checker = DatasetChecker(info.num_classes, info.class_names, remapped=bool(remap))
        for _, image_path, mask_path in _progress(pairs, f"check {name}", progress):
            try:
                inspect_pair(checker, image_path, mask_path, table, known, colours)
            except UserError as e:
                checker.add_problem(type(e).__name__, str(e))
        report.append((name, len(pairs), checker.findings()))
    return report


def colour_table(info, class_file):
    """{(r, g, b): class id} when the class file gives every class its colour, else None."""
    explicit = 0
    if os.path.isfile(class_file):
        with open(class_file) as f:
            for line in f:
                parts = line.split("#", 1)[0].split()
                if len(parts) >= 4 and all(p.isdigit() for p in parts[-3:]):
                    explicit += 1
    if explicit != info.num_classes:
        return None
    return {tuple(rgb): k for k, rgb in enumerate(info.palette)}


def _progress(items, desc, enabled):
    if not enabled:
        return items
    from tqdm import tqdm

    return tqdm(items, desc=desc, unit="img", leave=False)


# ------------------------------------------------------------------------------- TFRecords


def check_records(pattern, num_classes=None, limit=None, progress=False):
    """Findings for converted shards: damaged shards (named), undecodable records, label ids
    outside 0..K-1/255, size mismatches, 16-bit images, duplicates, class statistics.
    `num_classes` defaults to the one in `<split>-info.json`."""
    import glob
    import json

    import numpy as np

    from ocr_tf.errors import MissingFileError, UserError

    if "://" not in str(pattern) and not glob.glob(str(pattern)) and not os.path.exists(pattern):
        raise MissingFileError(f"no TFRecord files match {str(pattern)!r} (and it is not a folder with "
                               "images/ and masks/)")  # said before TensorFlow is imported: fast
    from ocr_tf.data import images, records
    from ocr_tf.data.pipeline import list_files

    files = list_files(pattern)
    names = None
    if num_classes is None:
        for path in files:
            ipath = records.info_path(os.path.dirname(path), os.path.basename(path).split("-")[0])
            if os.path.exists(ipath):
                with open(ipath) as f:
                    meta = json.load(f)
                num_classes, names = meta.get("num_classes"), meta.get("class_names")
                break
    if not num_classes:
        raise UserError(f"cannot tell the class count of {pattern}: no <split>-info.json next to the shards; "
                        "pass --num-classes")
    checker = DatasetChecker(num_classes, names)
    for path, message in records.check_shard_sizes(files).items():
        checker.add_problem("truncated_shard", message)
    bad = records.BadRecords()
    seen = 0
    for path in _progress(files, "check shards", progress):
        for index, serialized in records.iter_records_checked(path, bad):
            if limit is not None and seen >= limit:
                break
            seen += 1
            where = f"record {index} of {path}"
            try:
                example = records.example_fields(serialized, where)
                data = example["image"]
                image = images.decode_bytes(data, where, "image")
                depth = images.bit_depth(image, data)
                rgb = images.to_rgb8(image, where, data)
                raw = label = None
                unknown = ()
                if example["label"]:
                    mask = images.decode_bytes(example["label"], where, "label")
                    if mask.mode not in ("L", "P"):
                        raise UserError(f"{where} ({example['source_id']}): label PNG is mode {mask.mode}, "
                                        "expected 8-bit class ids")
                    raw = label = np.asarray(mask, np.uint8)
                    if raw.shape != rgb.shape[:2]:
                        raise UserError(f"{where} ({example['source_id']}): label {raw.shape} and image "
                                        f"{rgb.shape[:2]} differ in size")
                    ids = np.flatnonzero(np.bincount(raw.ravel(), minlength=256))
                    unknown = ids[(ids >= num_classes) & (ids != IGNORE)]
                checker.add(f"{where} ({example['source_id']})", data, depth, int(rgb.max(initial=0)),
                            f"{where} ({example['source_id']})", raw, label, unknown)
            except (UserError, OSError) as e:
                checker.add_problem("bad_record", str(e))
    for file, index, message in bad.entries:
        checker.add_problem("damaged_shard", f"shard {file} is damaged at record {index}: {message}")
    return [(pattern, seen, checker.findings())]


# ------------------------------------------------------------------------------- command


def format_report(report):
    lines = []
    for name, count, found in report:
        lines.append(f"{name}: {count} image(s) checked")
        for f in found:
            lines.append(f"  {f}")
    return "\n".join(lines)


def count_errors(report):
    return sum(f.level == ERROR for _, _, found in report for f in found)


def build_parser():
    parser = argparse.ArgumentParser(prog="python -m ocr_tf.data.check", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("path", help="a folder (images/, masks/, classes.txt) or a TFRecord glob / folder of shards")
    parser.add_argument("--classes", help="folder: class list file (default PATH/classes.txt)")
    parser.add_argument("--remap", help="folder: 'source target' id pairs, as for data.convert")
    parser.add_argument("--split", help="folder: check only this split (train, val, test)")
    parser.add_argument("--num-classes", type=int, help="TFRecords: class count (default: from <split>-info.json)")
    parser.add_argument("--limit", type=int, help="check at most this many images per split")
    parser.add_argument("--no-progress", action="store_true")
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    from ocr_tf.errors import UserError

    is_folder_data = os.path.isdir(os.path.join(args.path, "images"))
    try:
        if is_folder_data:
            report = check_folder(args.path, args.classes, args.remap, args.split, args.limit,
                                  progress=not args.no_progress)
        else:
            report = check_records(args.path, args.num_classes, args.limit, progress=not args.no_progress)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(format_report(report))
    errors = count_errors(report)
    print(f"{errors} error(s)" + (": python -m ocr_tf.data.convert stops on these (--skip-bad skips unusable "
                                  "pairs; --force keeps 0/255 masks as they are and makes unknown ids ignore)"
                                  if errors else ": the data looks usable"))
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
