"""TFRecord schema, writer and the validating reader: round trips and named errors."""

import json
import os

import numpy as np
import pytest
import tensorflow as tf

from ocr_tf.data import pipeline, records

RNG = np.random.default_rng(1)


def _pair(h=6, w=8, num_classes=5):
    return (RNG.integers(0, 256, (h, w, 3), dtype=np.uint8),
            RNG.integers(0, num_classes, (h, w), dtype=np.uint8))


def _decode(example, num_classes=5):
    image, label, sid = records.decode_record(example.SerializeToString(), num_classes)
    return image.numpy(), label.numpy(), sid.numpy().decode()


def test_make_example_round_trip_and_tf_models_keys():
    image, label = _pair()
    example = records.make_example(image, label, "img-1")
    keys = set(example.features.feature)
    assert keys == {"image/encoded", "image/format", "image/height", "image/width", "image/source_id",
                    "image/segmentation/class/encoded", "image/segmentation/class/format"}
    got_image, got_label, sid = _decode(example)
    np.testing.assert_array_equal(got_image, image)
    np.testing.assert_array_equal(got_label, label)
    assert sid == "img-1"
    f = example.features.feature
    assert f["image/height"].int64_list.value == [6] and f["image/width"].int64_list.value == [8]

    # JPEG: format recorded; encoded bytes passed in are stored unchanged.
    jpeg = records.make_example(image, None, "j", image_format="jpeg")
    assert jpeg.features.feature["image/format"].bytes_list.value == [b"jpeg"]
    data = jpeg.features.feature["image/encoded"].bytes_list.value[0]
    again = records.make_example(data, label, "j")
    assert again.features.feature["image/encoded"].bytes_list.value[0] == data
    # No label: decodes as all-ignore of the image's size.
    _, unlabeled, _ = _decode(jpeg)
    assert unlabeled.shape == (6, 8) and (unlabeled == 255).all()

    with pytest.raises(records.RecordError, match=r"'img-2': label size \(6, 9\) != image size \(6, 8\)"):
        records.make_example(image, np.zeros((6, 9), np.uint8), "img-2")
    with pytest.raises(records.RecordError, match="'img-3': image bytes are not PNG or JPEG"):
        records.make_example(b"GIF89a....", None, "img-3")


def test_writer_shards_atomically_with_info(tmp_path):
    labels = []
    with records.ShardedWriter(str(tmp_path), "train", 3, num_classes=5) as writer:
        for k in range(7):
            image, label = _pair()
            labels.append(label)
            writer.add(image, label, f"s{k}")
            # Nothing looks complete while writing.
            assert not [n for n in os.listdir(tmp_path) if n.endswith(".tfrecord")]
    names = sorted(n for n in os.listdir(tmp_path) if n.endswith(".tfrecord"))
    assert names == [f"train-0000{i}-of-00003.tfrecord" for i in range(3)]
    per_shard = [[r for r in tf.data.TFRecordDataset(str(tmp_path / n))] for n in names]
    assert [len(s) for s in per_shard] == [3, 2, 2]  # round robin
    sids = [records.parse_record(r)["image/source_id"].numpy().decode() for s in per_shard for r in s]
    assert sorted(sids) == [f"s{k}" for k in range(7)]
    info = json.loads((tmp_path / "train-info.json").read_text())
    assert [s["num_records"] for s in info["shards"]] == [3, 2, 2]
    assert [s["bytes"] for s in info["shards"]] == [os.path.getsize(tmp_path / n) for n in names]
    assert info["class_pixel_counts"] == np.bincount(np.concatenate(labels).ravel(), minlength=5).tolist()

    # An exception inside the writer removes its temporaries and writes no shard or info.
    with pytest.raises(RuntimeError):
        with records.ShardedWriter(str(tmp_path / "b"), "val", 2) as writer:
            writer.add(*_pair())
            raise RuntimeError("killed")
    assert os.listdir(tmp_path / "b") == []


def _raw_example(image_bytes, label_bytes, sid, height, width):
    feature = {
        records.IMAGE_KEY: records._bytes(image_bytes),
        records.HEIGHT_KEY: records._int64(height),
        records.WIDTH_KEY: records._int64(width),
        records.SOURCE_ID_KEY: records._bytes(sid.encode()),
        records.LABEL_KEY: records._bytes(label_bytes),
    }
    return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()


def _bad_examples():
    image, label = _pair()
    png, lab = records.encode_png(image), records.encode_png(label)
    return {
        "corrupt": _raw_example(b"\x00\x01garbage-bytes", lab, "corrupt-1", 6, 8),
        "size": _raw_example(png, records.encode_png(np.zeros((6, 7), np.uint8)), "size-1", 6, 8),
        "stored_size": _raw_example(png, lab, "hw-1", 5, 8),
        "range": _raw_example(png, records.encode_png(np.full((6, 8), 9, np.uint8)), "range-1", 6, 8),
    }


@pytest.mark.parametrize("kind, pattern", [
    ("corrupt", r"record 1 of .*bad\.tfrecord \(source_id: corrupt-1\):\] \[image/encoded is not a PNG or JPEG"),
    ("size", r"record 1 of .*bad\.tfrecord \(source_id: size-1\):\] \[label size\] \[6 7\] \[differs from image size\] \[6 8\]"),
    ("stored_size", r"\(source_id: hw-1\):\] \[image/height,width\] \[5 8\] \[but the decoded image is\] \[6 8\]"),
    ("range", r"\(source_id: range-1\):\] \[label values\] \[9\] \[are out of range \(expected < 5 or 255\)"),
])
def test_bad_record_is_named(tmp_path, kind, pattern):
    path = str(tmp_path / "bad.tfrecord")
    with tf.io.TFRecordWriter(path) as w:
        w.write(records.make_example(*_pair(), "good-0").SerializeToString())
        w.write(_bad_examples()[kind])
    ds = pipeline.make_dataset(path, num_classes=5, training=False, batch_size=1)
    with pytest.raises(tf.errors.InvalidArgumentError, match=pattern):
        list(ds)


def _write_shard(path, serialized):
    with tf.io.TFRecordWriter(path) as w:
        for s in serialized:
            w.write(s)


def test_truncated_shard_named_before_reading(tmp_path):
    with records.ShardedWriter(str(tmp_path), "train", 2) as writer:
        for k in range(6):
            writer.add(*_pair(), f"t{k}")
    shard = tmp_path / "train-00001-of-00002.tfrecord"
    data = shard.read_bytes()
    shard.write_bytes(data[:-50])
    with pytest.raises(records.RecordError, match=rf"shard {shard} is {len(data) - 50} bytes but "
                                                  rf"train-info.json says {len(data)} \(3 records\)"):
        pipeline.make_dataset(str(tmp_path / "train-*.tfrecord"), num_classes=5, training=False, batch_size=1)
    # With skip_bad the shard's complete records and every other shard are read; the cut is counted.
    ds = pipeline.make_dataset(str(tmp_path / "train-*.tfrecord"), num_classes=5, training=False,
                               batch_size=1, skip_bad=True, return_source_id=True)
    sids = sorted(s.numpy()[0].decode() for _, _, s in ds)
    assert sids == ["t0", "t1", "t2", "t3", "t4"]  # t5 was in the cut-off tail of shard 1
    assert ds.bad_records.count == 1
    assert ds.bad_records.entries[0][0] == str(shard) and "truncated" in ds.bad_records.entries[0][2]


def test_skip_bad_counts_every_kind_and_reads_the_rest(tmp_path):
    good = [records.make_example(*_pair(), f"g{k}").SerializeToString() for k in range(8)]
    bad = _bad_examples()
    _write_shard(str(tmp_path / "a.tfrecord"), [good[0], bad["corrupt"], good[1], bad["size"]])
    _write_shard(str(tmp_path / "b.tfrecord"), [good[2], bad["range"], bad["stored_size"], good[3]])
    _write_shard(str(tmp_path / "c.tfrecord"), good[4:7])
    truncated = (tmp_path / "c.tfrecord").read_bytes()
    (tmp_path / "c.tfrecord").write_bytes(truncated[:-10])  # no info file: found while reading
    # A CRC-corrupted record: the rest of that shard is unreadable.
    _write_shard(str(tmp_path / "d.tfrecord"), [good[7], good[0]])
    d = bytearray((tmp_path / "d.tfrecord").read_bytes())
    d[len(d) - 40] ^= 0xFF
    (tmp_path / "d.tfrecord").write_bytes(bytes(d))

    ds = pipeline.make_dataset(str(tmp_path / "*.tfrecord"), num_classes=5, training=False, batch_size=1,
                               skip_bad=True, return_source_id=True)
    sids = sorted(s.numpy()[0].decode() for _, _, s in ds)
    assert sids == ["g0", "g1", "g2", "g3", "g4", "g5", "g7"]
    entries = {(os.path.basename(f), i): m for f, i, m in ds.bad_records.entries}
    assert sorted(entries) == [("a.tfrecord", 1), ("a.tfrecord", 3), ("b.tfrecord", 1), ("b.tfrecord", 2),
                               ("c.tfrecord", 2), ("d.tfrecord", 1)]
    assert "source_id: range-1" in entries[("b.tfrecord", 1)] and "9" in entries[("b.tfrecord", 1)]
    assert "corrupted record" in entries[("d.tfrecord", 1)]
    assert ds.bad_records.count == 6

    # Training mode skips them too.
    ds = pipeline.make_dataset(str(tmp_path / "*.tfrecord"), num_classes=5, training=True, batch_size=7,
                               crop_size=(4, 4), skip_bad=True, repeat=1, seed=0)
    assert sum(int(x.shape[0]) for x, _ in ds) == 7
