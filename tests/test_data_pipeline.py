"""The tf.data pipeline: normalisation, eval padding, determinism, sharding, batching."""

import numpy as np
import pytest
import tensorflow as tf

from ocr_tf.data import pipeline, records
from ocr_tf.preprocessing import IMAGENET_MEAN, IMAGENET_STD

NUM_CLASSES = 6


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    """10 examples of varying size in 4 shards; returns (glob, {source_id: (image, label)})."""
    out = tmp_path_factory.mktemp("shards")
    rng = np.random.default_rng(3)
    data = {}
    with records.ShardedWriter(str(out), "train", 4, NUM_CLASSES) as writer:
        for k in range(10):
            h, w = 20 + k, 30 - k
            image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
            label = rng.integers(0, NUM_CLASSES, (h, w), dtype=np.uint8)
            label[0, :3] = 255
            writer.add(image, label, f"e{k}")
            data[f"e{k}"] = (image, label)
    return str(out / "train-*.tfrecord"), data


def _unnormalize(x):
    return (np.asarray(x) * np.array(IMAGENET_STD) + np.array(IMAGENET_MEAN)) * 255.0


def test_eval_keeps_size_and_normalises(shards):
    pattern, data = shards
    ds = pipeline.make_dataset(pattern, num_classes=NUM_CLASSES, training=False, batch_size=1,
                               return_source_id=True)
    seen = []
    for image, label, sid in ds:
        src_image, src_label = data[sid.numpy()[0].decode()]
        assert image.dtype == tf.float32 and label.dtype == tf.int32
        expected = (src_image / 255.0 - np.array(IMAGENET_MEAN)) / np.array(IMAGENET_STD)
        np.testing.assert_allclose(image.numpy()[0], expected, atol=1e-5)
        np.testing.assert_array_equal(label.numpy()[0], src_label)
        seen.append(sid.numpy()[0].decode())
    assert sorted(seen) == sorted(data)  # one pass, every record once
    # Evaluation order is the same every time.
    again = [s.numpy()[0].decode() for _, _, s in pipeline.make_dataset(
        pattern, num_classes=NUM_CLASSES, training=False, batch_size=1, return_source_id=True)]
    assert again == seen


def test_eval_padding(shards):
    pattern, data = shards
    zero = (0.0 - np.array(IMAGENET_MEAN)) / np.array(IMAGENET_STD)
    ds = pipeline.make_dataset(pattern, num_classes=NUM_CLASSES, training=False, batch_size=4,
                               pad_to=(32, 32), return_source_id=True)
    sizes = []
    for image, label, sids in ds:
        assert image.shape[1:] == (32, 32, 3) and label.shape[1:] == (32, 32)
        for i, sid in enumerate(sids.numpy()):
            src_image, src_label = data[sid.decode()]
            h, w = src_label.shape
            np.testing.assert_array_equal(label[i, :h, :w], src_label)
            assert (label[i, h:] == 255).numpy().all() and (label[i, :, w:] == 255).numpy().all()
            np.testing.assert_allclose(image[i, h:].numpy(), np.broadcast_to(zero, image[i, h:].shape), atol=1e-6)
            np.testing.assert_allclose(_unnormalize(image[i, :h, :w]), src_image, atol=1e-3)
        sizes.append(image.shape[0])
    assert sizes == [4, 4, 2]  # evaluation keeps the remainder
    # Without pad_to a batch pads to its largest image.
    image, label = next(iter(pipeline.make_dataset(pattern, num_classes=NUM_CLASSES, training=False,
                                                   batch_size=3)))
    assert image.shape[0] == 3 and (label.numpy() == 255).sum() > 0
    with pytest.raises(tf.errors.InvalidArgumentError, match="larger than pad_to"):
        list(pipeline.make_dataset(pattern, num_classes=NUM_CLASSES, training=False, batch_size=2,
                                   pad_to=(16, 16)))


def _train(pattern, **kw):
    args = dict(num_classes=NUM_CLASSES, training=True, batch_size=3, crop_size=(16, 24),
                deterministic=True, seed=5)
    args.update(kw)
    return pipeline.make_dataset(pattern, **args)


def test_training_batches_are_reproducible_with_a_seed(shards):
    pattern, _ = shards
    first = [(x.numpy(), y.numpy()) for x, y in _train(pattern).take(5)]
    second = [(x.numpy(), y.numpy()) for x, y in _train(pattern).take(5)]
    for (x1, y1), (x2, y2) in zip(first, second):
        np.testing.assert_array_equal(x1, x2)
        np.testing.assert_array_equal(y1, y2)
    other = [x.numpy() for x, _ in _train(pattern, seed=6).take(5)]
    assert not all(np.array_equal(a, b) for (a, _), b in zip(first, other))
    for x, y in first:
        assert x.shape == (3, 16, 24, 3) and y.shape == (3, 16, 24)
        assert set(np.unique(y)) <= set(range(NUM_CLASSES)) | {255}


def test_training_repeats_and_drops_remainder(shards):
    pattern, _ = shards
    one_epoch = list(_train(pattern, repeat=1, batch_size=4))
    assert len(one_epoch) == 2  # 10 examples -> 2 full batches of 4
    assert len(list(_train(pattern, batch_size=4).take(12))) == 12  # repeats forever by default


def test_input_context_shards_by_file(shards):
    pattern, data = shards
    seen = []
    for worker in range(2):
        context = tf.distribute.InputContext(num_input_pipelines=2, input_pipeline_id=worker,
                                             num_replicas_in_sync=2)
        ds = pipeline.make_dataset(pattern, num_classes=NUM_CLASSES, training=False, batch_size=1,
                                   input_context=context, return_source_id=True)
        seen.append({s.numpy()[0].decode() for _, _, s in ds})
    assert not seen[0] & seen[1] and seen[0] | seen[1] == set(data)
    # Shards 0 and 2 (round robin: e0, e4, e8, e2, e6) go to worker 0.
    assert seen[0] == {"e0", "e2", "e4", "e6", "e8"}
    with pytest.raises(ValueError, match="4 files cannot be sharded over 8"):
        pipeline.make_dataset(pattern, num_classes=NUM_CLASSES, training=False, batch_size=1,
                              input_context=tf.distribute.InputContext(8, 0, 8))


def test_file_lists_and_missing_files(shards, tmp_path):
    pattern, _ = shards
    files = pipeline.list_files(pattern)
    assert len(files) == 4
    assert pipeline.list_files([files[1], files[0]]) == sorted(files[:2])
    with pytest.raises(FileNotFoundError, match="nothing-here"):
        pipeline.list_files(str(tmp_path / "nothing-here-*.tfrecord"))
    with pytest.raises(ValueError, match="crop_size"):
        pipeline.make_dataset(pattern, num_classes=NUM_CLASSES, training=True, batch_size=2)
