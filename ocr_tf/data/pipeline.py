"""tf.data input pipeline: TFRecord shards -> batches of (normalised image, int32 label).

files (shuffled, sharded per worker) -> parallel interleaved reads -> record shuffle -> repeat ->
parallel decode + validation + augmentation (stateless, seeded per element) -> batch ->
ImageNet normalisation -> prefetch(AUTOTUNE).

`skip_bad=True` reads shards through a checking reader and decodes inside a guard, so a bad
record or a damaged shard is logged, counted (`dataset.bad_records`) and skipped instead of
stopping the run; it is slower (a Python step per record), meant for recovering from bad data.
"""

import os
import random

import tensorflow as tf

from ocr_tf.data import augment, records
from ocr_tf.errors import MissingFileError, UserError
from ocr_tf.preprocessing import IGNORE_LABEL, normalize_image

AUTOTUNE = tf.data.AUTOTUNE


def list_files(file_pattern):
    """A glob, a shard path, a folder (its *.tfrecord) or a list of those -> sorted unique paths."""
    patterns = [file_pattern] if isinstance(file_pattern, (str, os.PathLike)) else list(file_pattern)
    files = []
    for pattern in patterns:
        pattern = os.fspath(pattern)
        if tf.io.gfile.isdir(pattern):
            pattern = os.path.join(pattern, "*.tfrecord")
        matched = tf.io.gfile.glob(pattern) if any(c in pattern for c in "*?[") else (
            [pattern] if tf.io.gfile.exists(pattern) else [])
        if not matched:
            raise MissingFileError(f"no TFRecord files match {pattern!r}"
                                   + ("" if tf.io.gfile.exists(os.path.dirname(pattern) or ".") else
                                      f" (folder {os.path.dirname(pattern)!r} does not exist)"))
        files.extend(matched)
    return sorted(set(files))


def _read_fast(file):
    """(file, index, serialized) of one shard, read natively."""
    return tf.data.TFRecordDataset(file, buffer_size=8 << 20).enumerate().map(
        lambda i, r: (file, i, r))


def _reader_checked(bad_records):
    def read(file):
        ds = tf.data.Dataset.from_generator(
            lambda f: records.iter_records_checked(f.decode(), bad_records),
            output_signature=(tf.TensorSpec((), tf.int64), tf.TensorSpec((), tf.string)),
            args=(file,))
        return ds.map(lambda i, r: (file, i, r))

    return read


def _readable(message):
    """An eager tf.debugging.Assert message without its boilerplate, on one line."""
    message = message.split("Summarized data:", 1)[-1]
    return " ".join(part.strip().strip("b'\"") for part in message.strip().splitlines())


def _decoder(num_classes, ignore_label, skip_bad, bad_records):
    """(file, index, serialized) -> (ok, image uint8, label uint8, source_id)."""
    if not skip_bad:
        def decode(file, index, serialized):
            image, label, sid = records.decode_record(serialized, num_classes, ignore_label, file, index)
            return tf.constant(True), image, label, sid
        return decode

    def decode_eager(file, index, serialized):
        file_s, idx = file.numpy().decode(), int(index.numpy())
        try:
            image, label, sid = records.decode_record(serialized, num_classes, ignore_label, file_s, idx)
            return True, image, label, sid
        except tf.errors.OpError as e:
            bad_records.add(file_s, idx, _readable(e.message))
            return (False, tf.zeros([1, 1, 3], tf.uint8), tf.zeros([1, 1], tf.uint8), b"")

    def decode(file, index, serialized):
        ok, image, label, sid = tf.py_function(
            decode_eager, [file, index, serialized], [tf.bool, tf.uint8, tf.uint8, tf.string])
        ok.set_shape([])
        image.set_shape([None, None, 3])
        label.set_shape([None, None])
        sid.set_shape([])
        return ok, image, label, sid

    return decode


def _pad_to(image, label, pad_to, ignore_label):
    """Pad bottom/right to `pad_to`: image 0 (before normalisation), label ignore."""
    h, w = tf.shape(image)[0], tf.shape(image)[1]
    check = tf.debugging.Assert(
        tf.logical_and(h <= pad_to[0], w <= pad_to[1]),
        ["image of size", h, w, "is larger than pad_to", tf.constant(pad_to)])
    with tf.control_dependencies([check]):
        paddings = [[0, pad_to[0] - h], [0, pad_to[1] - w]]
        image = tf.pad(image, paddings + [[0, 0]])
        label = tf.pad(label, paddings, constant_values=ignore_label)
    image.set_shape([pad_to[0], pad_to[1], 3])
    label.set_shape([pad_to[0], pad_to[1]])
    return image, label


def make_dataset(file_pattern, *, num_classes, training, batch_size, crop_size=None,
                 scale_range=(0.5, 2.0), flip=True, brightness=10, flip_pairs=(),
                 ignore_label=IGNORE_LABEL, shuffle_buffer=256, seed=None, deterministic=False,
                 input_context=None, skip_bad=False, pad_to=None, repeat=None, base_size=None,
                 return_source_id=False, bad_records=None):
    """Batches of (image float32 [B,H,W,3] normalised, label int32 [B,H,W], 255 = ignore).

    training=True: shuffle files and records, the paper's augmentation (random scale in
    `scale_range` (relative to a long side of `base_size` when given), random `crop_size` crop
    padded with image 0 / label ignore, flip swapping `flip_pairs`, brightness +-`brightness`),
    drop_remainder batches, repeat forever (or `repeat` epochs).
    training=False: no augmentation, files in order, one pass (or `repeat` passes); batches
    pad every image to the largest of the batch (image 0, label ignore), or to `pad_to`
    (h, w) for a fixed shape; batch_size=1 keeps each image's own size.
    `input_context` (tf.distribute.InputContext) gives this worker every n-th file; batch_size
    is then the per-replica batch. `deterministic=True` with a `seed` gives the same elements
    in the same order on every run. `return_source_id=True` adds the records' source_id
    strings as a third element. With `skip_bad=True` bad records are skipped and counted in
    `dataset.bad_records` (a `records.BadRecords`, also accepted as `bad_records`).
    """
    if training and not crop_size:
        raise UserError("training=True needs crop_size=(height, width)")
    files = list_files(file_pattern)
    bad_records = bad_records if bad_records is not None else records.BadRecords()
    if not skip_bad:
        damaged = records.check_shard_sizes(files)
        if damaged:
            raise records.RecordError("; ".join(damaged.values()) + " (skip_bad=True reads what is intact)")
    if seed is None:
        seed = random.randrange(2**31)
    deterministic = bool(deterministic or not training)

    files_ds = tf.data.Dataset.from_tensor_slices(files)
    if input_context is not None and input_context.num_input_pipelines > 1:
        if len(files) < input_context.num_input_pipelines:
            raise UserError(f"{len(files)} files cannot be sharded over "
                             f"{input_context.num_input_pipelines} input pipelines; write more shards")
        files_ds = files_ds.shard(input_context.num_input_pipelines, input_context.input_pipeline_id)
    if training:
        files_ds = files_ds.shuffle(len(files), seed=seed, reshuffle_each_iteration=True)
    reader = _reader_checked(bad_records) if skip_bad else _read_fast
    ds = files_ds.interleave(reader, cycle_length=min(len(files), 16), block_length=1,
                             num_parallel_calls=AUTOTUNE, deterministic=deterministic)
    if training and shuffle_buffer and shuffle_buffer > 1:
        ds = ds.shuffle(shuffle_buffer, seed=seed + 1, reshuffle_each_iteration=True)
    epochs = (-1 if training else 1) if repeat is None else int(repeat)
    if epochs != 1:
        ds = ds.repeat(None if epochs < 0 else epochs)

    decode = _decoder(num_classes, ignore_label, skip_bad, bad_records)
    crop_size = tuple(int(c) for c in crop_size) if crop_size else None
    flip_pairs = tuple(tuple(p) for p in flip_pairs)

    def prepare(position, element):
        file, index, serialized = element
        ok, image, label, sid = decode(file, index, serialized)
        if training:
            element_seed = tf.stack([tf.constant(seed, tf.int64), position])
            image, label = augment.train_augment(
                image, label, element_seed, crop_size, scale_range, flip, brightness, flip_pairs,
                base_size, ignore_label)
        elif pad_to is not None:
            image, label = _pad_to(image, label, pad_to, ignore_label)
        return ok, image, label, sid

    # enumerate after repeat: every epoch's copy of a record gets its own augmentation seed.
    ds = ds.enumerate().map(prepare, num_parallel_calls=AUTOTUNE, deterministic=deterministic)
    if skip_bad:
        ds = ds.filter(lambda ok, image, label, sid: ok)
    ds = ds.map(lambda ok, image, label, sid: (image, label, sid))

    if training or pad_to is not None or batch_size == 1:
        ds = ds.batch(batch_size, drop_remainder=training, num_parallel_calls=AUTOTUNE,
                      deterministic=deterministic)
    else:
        ds = ds.padded_batch(batch_size, padding_values=(
            tf.constant(0, tf.uint8), tf.constant(ignore_label, tf.uint8), tf.constant("", tf.string)))

    def finish(image, label, sid):
        out = (normalize_image(image), tf.cast(label, tf.int32))
        return out + (sid,) if return_source_id else out

    ds = ds.map(finish, num_parallel_calls=AUTOTUNE, deterministic=deterministic).prefetch(AUTOTUNE)
    options = tf.data.Options()
    options.deterministic = deterministic
    ds = ds.with_options(options)
    ds.bad_records = bad_records
    return ds
