"""predict: files of the input's size in the palette's colours, .keras and SavedModel; pictures."""

import keras
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from ocr_tf.cli import predict
from ocr_tf.data.datasets import get_dataset_info
from ocr_tf.layers import OCRHead, resize_bilinear
from ocr_tf.preprocessing import normalize_image
from ocr_tf.visualize import colorize, overlay, region_grid, soft_regions

INFO = get_dataset_info("cityscapes")
K = INFO.num_classes


def tiny_model():
    keras.utils.set_random_seed(0)
    inp = keras.Input((None, None, 3))
    feats = keras.layers.Conv2D(8, 3, strides=2, padding="same", activation="relu")(inp)
    return keras.Model(inp, OCRHead(K, mid_channels=8, key_channels=4)(feats))


def model_labels(model, image):
    logits = model(normalize_image(image[None]))["logits"]
    return tf.argmax(resize_bilinear(logits, image.shape[:2], True), -1)[0].numpy()


@pytest.fixture
def inputs(tmp_path):
    """A folder with a PNG, a JPEG of other sizes, and a text file that is not an image."""
    rng = np.random.default_rng(0)
    folder = tmp_path / "in"
    folder.mkdir()
    images = {
        "a": rng.integers(0, 256, size=(13, 21, 3), dtype=np.uint8),
        "b": rng.integers(0, 256, size=(16, 10, 3), dtype=np.uint8),
    }
    Image.fromarray(images["a"]).save(folder / "a.png")
    Image.fromarray(images["b"]).save(folder / "b.jpg", quality=95)
    images["b"] = np.array(Image.open(folder / "b.jpg").convert("RGB"))  # what JPEG decodes to
    (folder / "notes.txt").write_text("not an image")
    return folder, images


def check_outputs(out, images, expected_labels, alpha=0.5):
    palette = np.array(INFO.palette, np.uint8)
    for stem, image in images.items():
        labels = np.array(Image.open(out / "labels" / f"{stem}.png"))
        color = np.array(Image.open(out / "color" / f"{stem}.png"))
        blend = np.array(Image.open(out / "overlay" / f"{stem}.png"))
        assert labels.shape == image.shape[:2] and color.shape == blend.shape == image.shape
        np.testing.assert_array_equal(labels, expected_labels[stem])
        np.testing.assert_array_equal(color, palette[labels])  # the dataset's palette colours
        expected_blend = np.rint((1 - alpha) * image.astype(np.float32) + alpha * palette[labels].astype(np.float32))
        np.testing.assert_array_equal(blend, expected_blend.astype(np.uint8))


def test_keras_model_writes_input_sized_palette_files_and_skips_non_images(tmp_path, inputs, capsys):
    folder, images = inputs
    model = tiny_model()
    model.save(tmp_path / "tiny.keras")
    out = tmp_path / "out"
    code = predict.main([str(folder), "--weights", str(tmp_path / "tiny.keras"), "--dataset", "cityscapes",
                         "--output", str(out), "--regions", "--alpha", "0.4", "--quiet"])
    assert code == 0
    check_outputs(out, images, {s: model_labels(model, im) for s, im in images.items()}, alpha=0.4)
    captured = capsys.readouterr()
    assert "notes.txt" in captured.err and "not an image" in captured.err
    assert "skipped 1 files" in captured.out and "notes.txt" in captured.out
    assert sorted(p.name for p in (out / "labels").iterdir()) == ["a.png", "b.png"]
    grid = np.array(Image.open(out / "regions" / "a.png"))
    assert grid.ndim == 3 and grid.shape[0] > 100 and grid.std() > 10  # a real picture, not blank


def test_saved_model_predicts_like_the_keras_model(tmp_path, inputs):
    folder, images = inputs
    model = tiny_model()

    def serve(images):  # the export helper's contract: uint8 in, {"labels"} at the input size
        logits = model(normalize_image(images), training=False)["logits"]
        up = resize_bilinear(logits, tf.shape(images)[1:3], True)
        return {"labels": tf.math.argmax(up, axis=-1, output_type=tf.int32)}

    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint("serving_default", serve, input_signature=[tf.TensorSpec([None, None, None, 3], tf.uint8, name="images")])
    archive.write_out(str(tmp_path / "exported" / "1"), verbose=False)

    out = tmp_path / "out"
    code = predict.main([str(folder / "a.png"), str(folder / "*.jpg"), "--weights", str(tmp_path / "exported"),
                         "--dataset", "cityscapes", "--output", str(out), "--quiet"])
    assert code == 0
    check_outputs(out, images, {s: model_labels(model, im) for s, im in images.items()})
    # regions need the aux logits, which a SavedModel does not give: one line, exit 2
    assert predict.main([str(folder), "--weights", str(tmp_path / "exported"), "--regions", "--output", str(out)]) == 2


def test_only_non_images_fails_and_names_them(tmp_path, capsys):
    model = tiny_model()
    model.save(tmp_path / "tiny.keras")
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    code = predict.main([str(bad), "--weights", str(tmp_path / "tiny.keras"), "--dataset", "cityscapes",
                         "--output", str(tmp_path / "o"), "--quiet"])
    assert code == 1 and "broken.png" in capsys.readouterr().out
    capsys.readouterr()
    assert predict.main([str(tmp_path / "missing.png"), "--weights", str(tmp_path / "tiny.keras"), "--dataset", "cityscapes"]) == 2
    assert "missing.png" in capsys.readouterr().err


def test_soft_regions_and_grid():
    rng = np.random.default_rng(1)
    aux = rng.normal(size=(6, 8, 3)) * 3
    regions = soft_regions(aux)
    np.testing.assert_allclose(regions.sum(axis=(0, 1)), 1.0)  # softmax over space, per class
    ref = np.exp(aux[..., 1]) / np.exp(aux[..., 1]).sum()
    np.testing.assert_allclose(regions[..., 1], ref, rtol=1e-12)
    # Against the gather layer's own weights: f_k = sum_i m_ki x_i with x = one-hot pixel index.
    from ocr_tf.layers import SpatialGather

    pixels = np.eye(48, dtype=np.float32).reshape(1, 6, 8, 48)
    gathered = SpatialGather()(pixels, aux[None].astype(np.float32)).numpy()[0]  # (K, 48)
    np.testing.assert_allclose(gathered.T.reshape(6, 8, 3), regions, rtol=1e-5, atol=1e-7)
    grid = region_grid(aux, ["a", "b", "c"], classes=[2, 0], columns=2, tile_inches=1.0, dpi=50)
    assert grid.shape == (50, 100, 3)  # one row of two tiles of 1 inch at 50 dpi
    with pytest.raises(ValueError, match="2 class names for 3"):
        region_grid(aux, ["a", "b"])


def test_colorize_and_overlay():
    palette = [(10, 20, 30), (200, 100, 0)]
    labels = np.array([[0, 1], [255, 1]])
    color = colorize(labels, palette)
    np.testing.assert_array_equal(color[0, 1], [200, 100, 0])
    np.testing.assert_array_equal(color[1, 0], [0, 0, 0])  # ignore is black
    image = np.full((2, 2, 3), 100, np.uint8)
    np.testing.assert_array_equal(overlay(image, color, 0.2)[0, 0], [82, 84, 86])
    with pytest.raises(ValueError, match="same|both"):
        overlay(image, color[:1])
