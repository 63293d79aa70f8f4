"""The built-in demo dataset: cached generation, determinism, and classes that need context."""

import json
import os

import numpy as np
import pytest
import tensorflow as tf

from ocr_tf.data import pipeline
from ocr_tf.data.datasets import demo, get_dataset_info


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    cache = tmp_path_factory.mktemp("cache")
    return cache, demo.prepare_demo(str(cache))


def _count(pattern):
    return sum(1 for f in tf.io.gfile.glob(pattern) for _ in tf.data.TFRecordDataset(f))


def test_prepare_demo_writes_records_once(prepared, monkeypatch):
    cache, info = prepared
    assert info["num_classes"] == 8 >= 6 and info["class_names"] == get_dataset_info("demo").class_names
    assert (info["train_size"], info["val_size"]) == (384, 64)
    assert _count(info["train"]) == 384 and _count(info["val"]) == 64
    assert len(tf.io.gfile.glob(info["train"])) == 4  # shards enough for 2-4 workers
    # No leftovers of the temporary folder.
    assert sorted(os.listdir(cache)) == [f"v{demo.VERSION}-seed0"]
    # A few validation images as PNGs, for predict after the quick start: the first val scenes.
    pngs = sorted(os.listdir(info["images"]))
    assert pngs == [f"demo-val-{i:04d}.png" for i in range(demo.NUM_PNGS)]

    def fail(*args):
        raise AssertionError("regenerated a complete cache")

    monkeypatch.setattr(demo, "_generate", fail)
    assert demo.prepare_demo(str(cache)) == info


def test_incomplete_or_stale_cache_is_regenerated(tmp_path):
    first = demo.prepare_demo(str(tmp_path))
    folder = os.path.dirname(first["train"])
    shard = tf.io.gfile.glob(first["train"])[0]
    os.remove(shard)  # e.g. a cache cleaner removed a file
    demo.prepare_demo(str(tmp_path))
    assert os.path.exists(shard) and _count(first["train"]) == 384
    manifest = os.path.join(folder, "manifest.json")
    with open(manifest) as f:
        data = json.load(f)
    data["version"] = 0  # made by an older generator
    with open(manifest, "w") as f:
        json.dump(data, f)
    demo.prepare_demo(str(tmp_path))
    with open(manifest) as f:
        assert json.load(f)["version"] == demo.VERSION


def test_default_cache_dir_follows_env(monkeypatch, tmp_path):
    monkeypatch.setenv("OCR_TF_CACHE", str(tmp_path))
    assert demo.default_cache_dir() == os.path.join(str(tmp_path), "demo")
    monkeypatch.delenv("OCR_TF_CACHE")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert demo.default_cache_dir() == os.path.join(str(tmp_path), "home", ".cache", "ocr_tf", "demo")


def test_scenes_are_deterministic_by_seed():
    a = demo.make_scene(np.random.default_rng(11))
    b = demo.make_scene(np.random.default_rng(11))
    c = demo.make_scene(np.random.default_rng(12))
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert not np.array_equal(a[0], c[0])


def test_look_alike_classes_differ_only_by_object():
    rng = np.random.default_rng(0)
    images, labels = zip(*(demo.make_scene(rng) for _ in range(60)))
    images, labels = np.stack(images).astype(np.float32), np.stack(labels)
    counts = np.bincount(labels.ravel(), minlength=256)
    assert (counts[:8] > 0).all() and counts[255] > 0  # every class and some ignore

    def colors(cls):
        return images[labels == cls]

    # Same glass in houses and cars; same stripes in discs and boxes: every pixel is one of the
    # shared texture colours plus noise (sigma 6), in the same proportions.
    references = np.array([demo.GLASS, (60, 60, 70), *demo.STRIPES])

    def texture_histogram(cls):
        dist = np.linalg.norm(colors(cls)[:, None] - references[None], axis=-1)
        assert (dist.min(1) < 30).mean() > 0.99
        return np.bincount(dist.argmin(1), minlength=len(references)) / len(dist)

    for a, b in ((demo.HOUSE_WINDOW, demo.CAR_WINDOW), (demo.DISC, demo.BOX)):
        np.testing.assert_allclose(texture_histogram(a), texture_histogram(b), atol=0.05)


def test_demo_records_feed_the_training_pipeline(prepared):
    _, info = prepared
    ds = pipeline.make_dataset(info["train"], num_classes=info["num_classes"], training=True,
                               batch_size=8, crop_size=(96, 128), seed=0, deterministic=True)
    image, label = next(iter(ds))
    assert image.shape == (8, 96, 128, 3) and label.shape == (8, 96, 128)
    values = set(np.unique(label.numpy()))
    assert values <= set(range(8)) | {255} and len(values) >= 4
