"""A damaged TFRecord shard (random bytes, cut short) is named when it is read: TensorFlow's own
error says only "corrupted record at 0"."""

import numpy as np
import pytest

from ocr_tf.data import records
from ocr_tf.data.pipeline import make_dataset

RNG = np.random.default_rng(0)


def _good_shard(folder):
    with records.ShardedWriter(str(folder), "train", 1, num_classes=2) as writer:
        for k in range(3):
            writer.add(RNG.integers(0, 256, (24, 32, 3), dtype=np.uint8),
                       RNG.integers(0, 2, (24, 32), dtype=np.uint8), f"img{k}")
    return folder / "train-00000-of-00001.tfrecord"


def _read_all(files, training=True):
    ds = make_dataset(files, num_classes=2, training=training, batch_size=1, crop_size=(16, 16), repeat=1)
    with records.naming_damaged_shards(files):
        return sum(1 for _ in ds)


def test_random_bytes_shard_is_named(tmp_path):
    good = _good_shard(tmp_path / "good")
    junk = tmp_path / "junk-00000-of-00001.tfrecord"
    junk.write_bytes(RNG.bytes(1000))
    assert _read_all([str(good)]) == 3
    with pytest.raises(records.RecordError, match=rf"^shard {junk} is damaged at record 0 \(corrupted record at "
                                                  r"0.*\): re-copy or re-convert it, or set data\.skip_bad"):
        _read_all([str(good), str(junk)])


def test_truncated_shard_is_named_with_or_without_its_info_file(tmp_path):
    shard = _good_shard(tmp_path)
    shard.write_bytes(shard.read_bytes()[:-40])
    # With <split>-info.json: refused before reading, by size.
    with pytest.raises(records.RecordError, match=rf"shard {shard} is \d+ bytes but train-info\.json says"):
        _read_all([str(shard)])
    # Without it (e.g. shards made elsewhere): named when the read fails.
    (tmp_path / "train-info.json").unlink()
    with pytest.raises(records.RecordError, match=rf"^shard {shard} is damaged at record 2 \(truncated record"):
        _read_all([str(shard)], training=False)


def test_other_errors_pass_through_unchanged(tmp_path):
    import tensorflow as tf

    with pytest.raises(tf.errors.InvalidArgumentError, match="not a shard problem"):
        with records.naming_damaged_shards([]):
            raise tf.errors.InvalidArgumentError(None, None, "not a shard problem")


def test_evaluate_names_a_damaged_shard(tmp_path):
    from ocr_tf.evaluate import evaluate_model

    junk = tmp_path / "val-00000-of-00001.tfrecord"
    junk.write_bytes(RNG.bytes(500))
    with pytest.raises(records.RecordError, match=rf"shard {junk} is damaged at record 0"):
        evaluate_model(None, str(junk), dataset="demo", num_classes=2, progress=False)


def test_a_bad_record_found_while_training_is_one_line_naming_it(tmp_path):
    with records.ShardedWriter(str(tmp_path), "val", 1) as writer:
        writer.add(np.zeros((6, 8, 3), np.uint8), np.full((6, 8), 1, np.uint8), "ok-0")
        writer.add(np.zeros((6, 8, 3), np.uint8), np.full((6, 8), 9, np.uint8), "range-1")
    files = [str(tmp_path / "val-00000-of-00001.tfrecord")]
    ds = make_dataset(files, num_classes=5, training=True, batch_size=1, crop_size=(4, 4), repeat=1)
    with pytest.raises(records.RecordError) as e:
        with records.naming_damaged_shards(files):
            for _ in ds:
                pass
    assert str(e.value).startswith(f"record 1 of {files[0]} (source_id: range-1): label values 9 are out of "
                                   "range (expected < 5 or 255); python -m ocr_tf.data.check")
    assert "\n" not in str(e.value)
