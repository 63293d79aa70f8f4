"""TFRecord schema, sharded writer and validating decoder for segmentation examples.

The keys are the tf-models ones (../shared/DESIGN.md), so records made by tf-models' converters
load here and ours load there: `image/encoded` (PNG or JPEG), `image/format`, `image/height`,
`image/width`, `image/source_id`, `image/segmentation/class/encoded` (single-channel PNG of class
ids, 255 = ignore) and `image/segmentation/class/format`.

Every shard is written under a temporary name and renamed when complete, so a killed conversion
never leaves a file that matches `<split>-*.tfrecord`. Next to the shards the writer saves
`<split>-info.json` (record counts and byte sizes per shard, class pixel counts), which the reader
uses to spot truncated shards by size before reading them.
"""

import contextlib
import glob
import io
import json
import logging
import os
import threading

import numpy as np
import tensorflow as tf
from PIL import Image

from ocr_tf.data.images import encode_png, sniff_format  # noqa: F401 (part of this module's API)
from ocr_tf.errors import UserError
from ocr_tf.files import write_json_atomic

IMAGE_KEY = "image/encoded"
IMAGE_FORMAT_KEY = "image/format"
HEIGHT_KEY = "image/height"
WIDTH_KEY = "image/width"
SOURCE_ID_KEY = "image/source_id"
LABEL_KEY = "image/segmentation/class/encoded"
LABEL_FORMAT_KEY = "image/segmentation/class/format"
IGNORE_LABEL = 255

FEATURES = {
    IMAGE_KEY: tf.io.FixedLenFeature((), tf.string),
    IMAGE_FORMAT_KEY: tf.io.FixedLenFeature((), tf.string, default_value="png"),
    HEIGHT_KEY: tf.io.FixedLenFeature((), tf.int64, default_value=-1),
    WIDTH_KEY: tf.io.FixedLenFeature((), tf.int64, default_value=-1),
    SOURCE_ID_KEY: tf.io.FixedLenFeature((), tf.string, default_value=""),
    LABEL_KEY: tf.io.FixedLenFeature((), tf.string, default_value=""),
    LABEL_FORMAT_KEY: tf.io.FixedLenFeature((), tf.string, default_value="png"),
}

log = logging.getLogger(__name__)


class RecordError(UserError):
    """A record or shard that cannot be used; the message names the file, record and values."""


# --------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------

def _bytes(value):
    return tf.train.Feature(bytes_list=tf.train.BytesList(value=[value]))


def _int64(value):
    return tf.train.Feature(int64_list=tf.train.Int64List(value=[int(value)]))


def encode_jpeg(array, quality=95):
    buf = io.BytesIO()
    Image.fromarray(np.asarray(array, np.uint8)).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def make_example(image, label=None, source_id="", image_format="png"):
    """One tf.train.Example from an image and an optional label.

    image: uint8 HxWx3 array (encoded as `image_format`, 'png' or 'jpeg') or encoded PNG/JPEG
    bytes (kept as they are, so pixels round-trip exactly). label: uint8 HxW array of class ids
    (255 = ignore) or encoded single-channel PNG bytes; None for unlabelled (test) images.
    """
    source_id = source_id.decode() if isinstance(source_id, bytes) else str(source_id)
    if isinstance(image, (bytes, bytearray)):
        image = bytes(image)
        fmt = sniff_format(image)
        if fmt is None:
            raise RecordError(f"{source_id!r}: image bytes are not PNG or JPEG (start {image[:8]!r})")
        width, height = Image.open(io.BytesIO(image)).size
        encoded = image
    else:
        array = np.asarray(image)
        if array.dtype != np.uint8 or array.ndim != 3 or array.shape[-1] != 3:
            raise RecordError(f"{source_id!r}: image must be uint8 HxWx3, got {array.dtype} {array.shape}")
        height, width = array.shape[:2]
        fmt = {"png": "png", "jpeg": "jpeg", "jpg": "jpeg"}.get(image_format)
        if fmt is None:
            raise RecordError(f"image_format must be 'png' or 'jpeg', got {image_format!r}")
        encoded = encode_png(array) if fmt == "png" else encode_jpeg(array)
    feature = {
        IMAGE_KEY: _bytes(encoded),
        IMAGE_FORMAT_KEY: _bytes(fmt.encode()),
        HEIGHT_KEY: _int64(height),
        WIDTH_KEY: _int64(width),
        SOURCE_ID_KEY: _bytes(source_id.encode()),
    }
    if label is not None:
        if isinstance(label, (bytes, bytearray)):
            label_bytes = bytes(label)
            label_size = Image.open(io.BytesIO(label_bytes)).size[::-1]
        else:
            label = np.asarray(label)
            if label.dtype != np.uint8 or label.ndim != 2:
                raise RecordError(f"{source_id!r}: label must be uint8 HxW, got {label.dtype} {label.shape}")
            label_size = label.shape
            label_bytes = encode_png(label)
        if tuple(label_size) != (height, width):
            raise RecordError(
                f"{source_id!r}: label size {tuple(label_size)} != image size {(height, width)}")
        feature[LABEL_KEY] = _bytes(label_bytes)
        feature[LABEL_FORMAT_KEY] = _bytes(b"png")
    return tf.train.Example(features=tf.train.Features(feature=feature))


def shard_name(split, index, num_shards):
    return f"{split}-{index:05d}-of-{num_shards:05d}.tfrecord"


def info_path(out_dir, split):
    return os.path.join(out_dir, f"{split}-info.json")


class ShardedWriter:
    """Writes examples round-robin into `num_shards` shards of `<out_dir>/<split>-*.tfrecord`.

    Use as a context manager. Shards live under temporary names until `close()`, which renames
    them and writes `<split>-info.json`; an exception inside the `with` deletes the temporaries.
    With `num_classes`, `add()` also counts class pixels for the info file (users derive class
    weights from it). Existing shards of the same split are an error (a glob would read old and
    new together) unless `overwrite=True`, which deletes them once the new shards are complete.
    """

    def __init__(self, out_dir, split, num_shards, num_classes=None, class_names=None, extra_info=None,
                 overwrite=False):
        if num_shards < 1:
            raise UserError(f"num_shards must be >= 1, got {num_shards} (--shards)")
        os.makedirs(out_dir, exist_ok=True)
        self.existing = sorted(glob.glob(os.path.join(glob.escape(out_dir), f"{split}-*-of-*.tfrecord")))
        if self.existing and not overwrite:
            raise RecordError(f"{out_dir} already has {len(self.existing)} {split} shard(s) "
                              f"({os.path.basename(self.existing[0])}, ...): remove them or pass --overwrite (overwrite=True)")
        self.out_dir, self.split, self.num_shards = out_dir, split, num_shards
        self.num_classes, self.class_names = num_classes, class_names
        self.extra_info = dict(extra_info or {})
        self.final_paths = [os.path.join(out_dir, shard_name(split, i, num_shards)) for i in range(num_shards)]
        self.tmp_paths = [f"{p}.tmp-{os.getpid()}" for p in self.final_paths]
        self.writers = [tf.io.TFRecordWriter(p) for p in self.tmp_paths]
        self.counts = [0] * num_shards
        self.pixel_counts = np.zeros(256, np.int64)
        self.num_written = 0
        self.closed = False

    def write(self, example):
        """Append a tf.train.Example (or its serialized bytes)."""
        data = example if isinstance(example, bytes) else example.SerializeToString()
        shard = self.num_written % self.num_shards
        self.writers[shard].write(data)
        self.counts[shard] += 1
        self.num_written += 1

    def add(self, image, label=None, source_id="", image_format="png"):
        """make_example + write, counting class pixels of `label` when it is an array."""
        self.write(make_example(image, label, source_id, image_format))
        if label is not None and not isinstance(label, (bytes, bytearray)):
            self.pixel_counts += np.bincount(np.asarray(label).ravel(), minlength=256)

    def count_label(self, label):
        """Count class pixels of a label written through `write()`."""
        self.pixel_counts += np.bincount(np.asarray(label, np.uint8).ravel(), minlength=256)

    def info(self):
        shards = [
            {"file": os.path.basename(p), "num_records": c, "bytes": os.path.getsize(p)}
            for p, c in zip(self.final_paths, self.counts)
        ]
        info = {"split": self.split, "num_records": self.num_written, "num_shards": self.num_shards,
                "shards": shards}
        if self.num_classes:
            counts = self.pixel_counts[: self.num_classes]
            total = max(int(counts.sum()), 1)
            info["num_classes"] = self.num_classes
            if self.class_names:
                info["class_names"] = list(self.class_names)
            info["class_pixel_counts"] = [int(c) for c in counts]
            info["class_frequencies"] = [float(c) / total for c in counts]
            info["ignore_pixels"] = int(self.pixel_counts[IGNORE_LABEL])
        info.update(self.extra_info)
        return info

    def close(self):
        if self.closed:
            return
        for w in self.writers:
            w.close()
        for tmp, final in zip(self.tmp_paths, self.final_paths):
            os.replace(tmp, final)
        for stale in set(self.existing) - set(self.final_paths):
            os.remove(stale)
        self.closed = True
        write_json_atomic(info_path(self.out_dir, self.split), self.info())

    def abort(self):
        for w in self.writers:
            w.close()
        for tmp in self.tmp_paths:
            if os.path.exists(tmp):
                os.remove(tmp)
        self.closed = True

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            self.close()
        else:
            self.abort()
        return False


# --------------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------------

def check_shard_sizes(files):
    """Compare each shard's size with its `<split>-info.json`; returns {file: message} of bad ones.

    A shard cut short (an interrupted copy, a full disk) is found here before any reading, by
    name; shards without an info file (e.g. made by tf-models) are not checked.
    """
    bad, infos = {}, {}
    for path in files:
        name = os.path.basename(path)
        split = name.split("-")[0]
        ipath = info_path(os.path.dirname(path), split)
        if ipath not in infos:
            try:
                with tf.io.gfile.GFile(ipath) as f:
                    infos[ipath] = {s["file"]: s for s in json.load(f).get("shards", [])}
            except (tf.errors.NotFoundError, ValueError, KeyError):
                infos[ipath] = {}
        expected = infos[ipath].get(name)
        if expected is None:
            continue
        size = tf.io.gfile.stat(path).length
        if size != expected["bytes"]:
            bad[path] = (f"shard {path} is {size} bytes but {os.path.basename(ipath)} says "
                         f"{expected['bytes']} ({expected['num_records']} records): truncated or modified")
    return bad


def parse_record(serialized):
    """Serialized tf.train.Example -> dict of the schema's tensors (graph-safe)."""
    return tf.io.parse_single_example(serialized, FEATURES)


def _check(condition, *message):
    """tf.debugging.Assert with a readable message; returns a dependency for control_dependencies."""
    return tf.debugging.Assert(condition, list(message), summarize=32)


def decode_record(serialized, num_classes, ignore_label=IGNORE_LABEL, file="", index=-1):
    """Serialized example -> (image uint8 [H,W,3], label uint8 [H,W], source_id), validated.

    Raises InvalidArgumentError whose message names the file, the record's index in it, its
    source_id and the bad values when: the image is not PNG/JPEG, image/height/width disagree
    with the decoded image, the label's size differs from the image's, or a label value is
    neither < num_classes nor `ignore_label`. A record without a label gets an all-ignore label.
    """
    f = parse_record(serialized)
    sid = f[SOURCE_ID_KEY]
    where = tf.strings.join([
        "record ", tf.strings.as_string(tf.cast(index, tf.int64)), " of ", tf.convert_to_tensor(file),
        " (source_id: ", sid, "):"])
    data = f[IMAGE_KEY]
    magic_ok = tf.logical_or(tf.strings.substr(data, 0, 8) == b"\x89PNG\r\n\x1a\n",
                             tf.strings.substr(data, 0, 3) == b"\xff\xd8\xff")
    with tf.control_dependencies([_check(magic_ok, where, "image/encoded is not a PNG or JPEG; first bytes:",
                                         tf.strings.substr(data, 0, 8))]):
        image = tf.io.decode_image(data, channels=3, expand_animations=False)
    shape = tf.shape(image, out_type=tf.int64)[:2]
    stored = tf.stack([f[HEIGHT_KEY], f[WIDTH_KEY]])
    size_ok = tf.reduce_all(tf.logical_or(stored == shape, stored < 0))
    checks = [_check(size_ok, where, "image/height,width", stored, "but the decoded image is", shape)]

    has_label = tf.strings.length(f[LABEL_KEY]) > 0
    label = tf.cond(
        has_label,
        lambda: tf.io.decode_png(f[LABEL_KEY], channels=1, dtype=tf.uint8)[..., 0],
        lambda: tf.fill(tf.cast(shape, tf.int32), tf.constant(ignore_label, tf.uint8)))
    label_shape = tf.shape(label, out_type=tf.int64)
    checks.append(_check(tf.reduce_all(label_shape == shape), where, "label size", label_shape,
                         "differs from image size", shape))
    bad = tf.logical_and(label >= num_classes, label != ignore_label)
    bad_values = tf.unique(tf.boolean_mask(label, bad)).y
    checks.append(_check(tf.logical_not(tf.reduce_any(bad)), where, "label values", bad_values,
                         f"are out of range (expected < {num_classes} or {ignore_label})"))
    with tf.control_dependencies(checks):
        image = tf.identity(image)
        label = tf.identity(label)
    return image, label, sid


class BadRecords:
    """Counts records skipped with `skip_bad=True`, each logged as a warning with its reason."""

    def __init__(self):
        self._lock = threading.Lock()
        self.entries = []  # (file, record index or -1, message)

    @property
    def count(self):
        with self._lock:
            return len(self.entries)

    def add(self, file, index, message):
        with self._lock:
            self.entries.append((file, index, message))
        log.warning("skipping bad record %s of %s: %s", index, file, message)

    def summary(self):
        if not self.entries:
            return "no bad records"
        return f"{self.count} bad record(s) skipped: " + "; ".join(
            f"{os.path.basename(f)}#{i}" for f, i, _ in self.entries[:20])

    def __repr__(self):
        return f"BadRecords(count={self.count})"


def iter_records_checked(path, bad_records):
    """Yields (index, serialized) of one shard; a read error (truncation, CRC) is counted and
    ends the shard instead of the whole run (TF's own error does not name the file)."""
    index = 0
    iterator = iter(tf.data.TFRecordDataset(path))
    while True:
        try:
            record = next(iterator)
        except StopIteration:
            return
        except tf.errors.OpError as e:
            bad_records.add(path, index, f"unreadable from here on: {tf_message(e)}")
            return
        yield index, record.numpy()
        index += 1


def example_fields(serialized, where):
    """{'image', 'label', 'source_id'} bytes of a serialized example; RecordError naming `where`
    when it is not a tf.train.Example with an `image/encoded` feature."""
    try:
        feature = tf.train.Example.FromString(serialized).features.feature
    except Exception as e:  # protobuf's DecodeError and friends
        raise RecordError(f"{where} is not a tf.train.Example ({e.__class__.__name__})") from None

    def first(key):
        values = feature[key].bytes_list.value if key in feature else []
        return values[0] if values else b""

    if not first(IMAGE_KEY):
        raise RecordError(f"{where} has no '{IMAGE_KEY}' (keys: {sorted(feature)[:8]}); expected the "
                          "tf-models segmentation keys (python -m ocr_tf.data.convert writes them)")
    return {"image": first(IMAGE_KEY), "label": first(LABEL_KEY),
            "source_id": first(SOURCE_ID_KEY).decode("utf-8", "replace")}


def tf_message(error):
    """A TensorFlow OpError's message without its graph-function and op boilerplate."""
    import re

    text = re.sub(r"\{\{function_node [^}]*\}\}\s*", "", error.message)
    text = re.sub(r"\s*\[Op:[^\]]*\].*$", "", text, flags=re.S)
    return " ".join(text.split()).rstrip("'")


def find_damaged_shards(files):
    """{file: message} for shards that cannot be read to the end (bad CRC, cut short, not a
    TFRecord). Reads every shard: meant for after a read error, to name the culprit."""
    damaged = {}
    for path in files:
        index = 0
        try:
            for _ in tf.data.TFRecordDataset(path):
                index += 1
        except tf.errors.OpError as e:
            damaged[path] = (f"shard {path} is damaged at record {index} ({tf_message(e)}): "
                             "re-copy or re-convert it, or set data.skip_bad: true to read what is intact")
    return damaged


# A read of a damaged shard fails deep in tf.data with "corrupted record at 0" / "truncated
# record at N" and no file name; these are the messages worth translating.
_READ_ERROR_WORDS = ("corrupted record", "truncated record", "data_loss", "record at", "checksum")


def record_assertion(error):
    """The one-line message of a `decode_record` check that failed inside tf.data ('record 1 of
    F (source_id: x): label values 9 are out of range ...'), or None for other errors."""
    import re

    match = re.search(r"assertion failed: (.*)", error.message)
    if not match or "(source_id:" not in match.group(1):
        return None
    parts = re.findall(r"\[((?:[^\[\]]|\[[^\]]*\])*)\]", match.group(1).split("\n")[0])
    return " ".join(p.strip() for p in parts)


@contextlib.contextmanager
def naming_damaged_shards(files):
    """Around code that iterates a dataset of `files`: a TFRecord read error (DataLossError,
    'corrupted record at 0' without a file name) is re-raised as a RecordError naming the
    damaged shard(s), found by reading each shard once; a failed record check of
    `decode_record` (bad label values, sizes, image bytes) as a RecordError with its message
    on one line, without TensorFlow's stack."""
    try:
        yield
    except tf.errors.OpError as e:
        bad_record = record_assertion(e)
        if bad_record:
            raise RecordError(f"{bad_record}; python -m ocr_tf.data.check '<glob>' lists every bad record, "
                              "data.skip_bad: true skips them") from None
        text = f"{e.__class__.__name__} {e.message}".lower()
        if not isinstance(e, tf.errors.DataLossError) and not any(w in text for w in _READ_ERROR_WORDS):
            raise
        damaged = find_damaged_shards(files)
        if not damaged:
            raise
        raise RecordError("; ".join(damaged.values())) from None


def iterate_naming_damaged_shards(dataset, files):
    """Iterate `dataset` (read from `files`) under `naming_damaged_shards`."""
    with naming_damaged_shards(files):
        yield from dataset
