"""The Segmenter: one object that knows its classes, palette, normalisation and build; presets,
loading after `import ocr_tf` alone, predict on raw uint8 images, and the commands reading it."""

import json
import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

import ocr_tf
from ocr_tf.errors import UserError
from ocr_tf.layers import resize_bilinear

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = {**os.environ, "PYTHONPATH": ROOT, "TF_CPP_MIN_LOG_LEVEL": "3"}
TINY = {"mid_channels": 8, "key_channels": 4}
NAMES = ["sky", "road", "car"]


def tiny_segmenter(**kwargs):
    keras.utils.set_random_seed(0)
    net = ocr_tf.build_model("hrnet_tiny_ocr", 3, **TINY)
    return ocr_tf.Segmenter(net, NAMES, dataset="toy", model_name="hrnet_tiny_ocr", model_overrides=TINY,
                            provenance={"source": "test"}, **kwargs)


def reference_labels(seg, image, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225), align_corners=True):
    """Normalise in NumPy, run the network, resize, argmax: what predict must give."""
    x = ((image.astype(np.float64) / 255.0 - np.array(mean)) / np.array(std)).astype(np.float32)
    logits = seg.network(x[None], training=False)["logits"]
    return tf.argmax(resize_bilinear(logits, image.shape[:2], align_corners), -1)[0].numpy()


def run_python(code, *args):
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code), *map(str, args)], capture_output=True,
                          text=True, env=ENV, timeout=600, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def test_predict_takes_uint8_images_of_any_size_and_normalises_inside():
    seg = tiny_segmenter()
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (37, 53, 3), dtype=np.uint8)
    b = rng.integers(0, 256, (24, 30, 3), dtype=np.uint8)
    labels = seg.predict(a)
    assert labels.shape == (37, 53) and labels.dtype == np.int32
    np.testing.assert_array_equal(labels, reference_labels(seg, a))
    batch = seg.predict(np.stack([a, a[::-1]]))
    np.testing.assert_array_equal(batch[0], labels)
    np.testing.assert_array_equal(batch[1], reference_labels(seg, a[::-1]))
    mixed = seg.predict([a, b])  # different sizes: one result each
    assert [m.shape for m in mixed] == [(37, 53), (24, 30)]
    # Its own normalisation and align_corners, not hard-coded ImageNet / True.
    other = ocr_tf.Segmenter(seg.network, NAMES, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25), align_corners=False)
    np.testing.assert_array_equal(other.predict(a), reference_labels(seg, a, (0.5,) * 3, (0.25,) * 3, False))


def test_predict_refuses_16_bit_and_float_images_with_the_reason():
    seg = tiny_segmenter()
    with pytest.raises(UserError, match="16-bit"):
        seg.predict(np.full((8, 8, 3), 4000, np.uint16))
    with pytest.raises(UserError, match="uint8"):
        seg.predict(np.zeros((8, 8, 3), np.float32) + 0.5)
    with pytest.raises(UserError, match=r"\(H, W, 3\)"):
        seg.predict(np.zeros((8, 8), np.uint8))


def test_segment_files_pil_probabilities_regions_and_pipeline(tmp_path):
    seg = tiny_segmenter()
    rng = np.random.default_rng(1)
    image = rng.integers(0, 256, (20, 28, 3), dtype=np.uint8)
    Image.fromarray(image).save(tmp_path / "a.png")
    expected = reference_labels(seg, image)
    from_file, from_pil = seg.segment([str(tmp_path / "a.png"), Image.fromarray(image)])
    np.testing.assert_array_equal(from_file, expected)
    np.testing.assert_array_equal(from_pil, expected)
    (probs,) = seg.segment(image, output="probabilities")
    np.testing.assert_allclose(probs.sum(-1), 1.0, rtol=1e-5)
    np.testing.assert_array_equal(probs.argmax(-1), expected)
    (regions,) = seg.segment(image, output="regions")
    np.testing.assert_allclose(regions.sum(axis=(0, 1)), 1.0, rtol=1e-5)  # softmax over space per class
    (entries,) = seg.segment(str(tmp_path), output="pipeline")
    assert {e["label"] for e in entries} == {NAMES[k] for k in np.unique(expected)}
    for e in entries:
        k = NAMES.index(e["label"])
        np.testing.assert_array_equal(e["mask"] == 255, expected == k)
        assert e["score"] == pytest.approx(probs[..., k][expected == k].mean(), rel=1e-5)


def test_keras_file_is_the_whole_truth(tmp_path):
    seg = tiny_segmenter(palette=[[1, 2, 3], [4, 5, 6], [7, 8, 9]])
    seg.save(tmp_path / "s.keras")
    again = keras.saving.load_model(tmp_path / "s.keras", compile=False)
    assert isinstance(again, ocr_tf.Segmenter)
    assert again.metadata() == seg.metadata()
    image = np.random.default_rng(2).integers(0, 256, (16, 24, 3), dtype=np.uint8)
    np.testing.assert_array_equal(again.predict(image), seg.predict(image))


def test_preset_in_a_fresh_process_with_only_import_ocr_tf(tmp_path):
    seg = tiny_segmenter()
    seg.save_to_preset(tmp_path / "preset")
    assert sorted(os.listdir(tmp_path / "preset")) == ["README.md", "config.json", "labels.txt", "metadata.json",
                                                       "model.weights.h5"]
    assert (tmp_path / "preset" / "labels.txt").read_text().split() == NAMES
    assert "source: test" in (tmp_path / "preset" / "README.md").read_text()
    image = np.random.default_rng(3).integers(0, 256, (21, 33, 3), dtype=np.uint8)
    np.save(tmp_path / "image.npy", image)
    out = run_python("""
        import sys, numpy as np
        import ocr_tf
        seg = ocr_tf.Segmenter.from_preset(sys.argv[1])
        np.save(sys.argv[3], seg.predict(np.load(sys.argv[2])))
        print(seg.class_names, seg.model_name)
    """, tmp_path / "preset", tmp_path / "image.npy", tmp_path / "labels.npy")
    assert "['sky', 'road', 'car'] hrnet_tiny_ocr" in out
    np.testing.assert_array_equal(np.load(tmp_path / "labels.npy"), reference_labels(seg, image))
    # The command gives the same labels, in the model's own palette (no --dataset).
    Image.fromarray(image).save(tmp_path / "image.png")
    from ocr_tf.cli import predict

    assert predict.main([str(tmp_path / "image.png"), "--weights", str(tmp_path / "preset"),
                         "--output", str(tmp_path / "pred"), "--quiet"]) == 0
    np.testing.assert_array_equal(np.array(Image.open(tmp_path / "pred" / "labels" / "image.png")),
                                  reference_labels(seg, image))
    color = np.array(Image.open(tmp_path / "pred" / "color" / "image.png"))
    np.testing.assert_array_equal(color, np.array(seg.palette, np.uint8)[reference_labels(seg, image)])


SAVE_ALL = """
import sys, numpy as np, keras
import ocr_tf  # nothing else: this must register every class (the ablations' included)
from ocr_tf.models import list_models
# Every head on the smallest backbone of each family whose classes differ (HRNet's variants share
# their classes; ResNet's heads are the same classes as HRNet's at a size too big for this test).
models = [n for n in list_models() if n.startswith("hrnet_tiny_")] + ["mobilenetv2_ocr", "mobilenetv2_fcn"]
x = np.random.default_rng(0).normal(size=(1, 32, 32, 3)).astype("float32")
for name in models:
    kw = {"mid_channels": 8, "key_channels": 4} if name.endswith("_ocr") else {}
    if name.startswith("mobilenetv2"):
        kw["alpha"] = 0.35
    net = ocr_tf.build_model(name, 3, **kw)
    path = f"{sys.argv[1]}/{name}.keras"
    net.save(path)
    print(name, np.abs(keras.saving.load_model(path, compile=False)(x)["logits"] - net(x)["logits"]).max())
"""


def test_every_registered_model_saves_and_loads_after_import_ocr_tf(tmp_path):
    out = run_python(SAVE_ALL, tmp_path)
    rows = dict(line.split() for line in out.strip().splitlines())
    assert len(rows) >= 8 and {"hrnet_tiny_ocr", "hrnet_tiny_fcn", "hrnet_tiny_ppm", "mobilenetv2_ocr"} <= set(rows)
    assert all(float(v) == 0.0 for v in rows.values()), rows


def test_registered_names_are_unique():
    import inspect

    ocr_tf.register_all()
    classes = {}
    for module in list(sys.modules.values()):
        if not getattr(module, "__name__", "").startswith("ocr_tf"):
            continue
        for _, obj in inspect.getmembers(module, inspect.isclass):
            if obj.__module__ == module.__name__ and keras.saving.get_registered_name(obj) != obj.__name__:
                classes[keras.saving.get_registered_name(obj)] = obj
    for name, cls in classes.items():
        assert keras.saving.get_registered_object(name) is cls, f"{name} is shadowed by another class"
    assert "ocr_tf>FCNHead" in classes and "ocr_tf>AblationFCNHead" in classes


def test_load_segmenter_messages_name_the_culprit(tmp_path):
    from ocr_tf.loading import load_segmenter

    net = ocr_tf.build_model("hrnet_tiny_ocr", 8, mid_channels=64, key_channels=32)
    net.save_weights(tmp_path / "best.weights.h5")
    with pytest.raises(UserError, match=r"best\.weights\.h5 does not fit model 'hrnet_tiny_ocr' built with overrides \{\}"):
        load_segmenter(str(tmp_path / "best.weights.h5"), model="hrnet_tiny_ocr", dataset="demo")
    # Written by a training run: its config names the build that fits.
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    net.save_weights(run / "checkpoints" / "best.weights.h5")
    (run / "config.yaml").write_text("model:\n  name: hrnet_tiny_ocr\n  overrides: {mid_channels: 64, key_channels: 32}\n")
    with pytest.raises(UserError, match=r"built 'hrnet_tiny_ocr' with overrides \{'mid_channels': 64"):
        load_segmenter(str(run / "checkpoints" / "best.weights.h5"), model="hrnet_tiny_ocr", dataset="demo")
    seg = load_segmenter(str(run / "checkpoints" / "best.weights.h5"), model="hrnet_tiny_ocr", dataset="demo",
                         overrides={"mid_channels": 64, "key_channels": 32})
    assert seg.dataset == "demo" and seg.class_names[3] == "house window"
    # A bare network in a .keras file needs class names; a dataset with another class count is refused.
    net.save(tmp_path / "bare.keras")
    with pytest.raises(UserError, match=r"bare\.keras holds a bare network with no class names .*: give --dataset"):
        load_segmenter(str(tmp_path / "bare.keras"))
    seg.save(tmp_path / "seg.keras")
    with pytest.raises(UserError, match="19 classes but .* has 8"):
        load_segmenter(str(tmp_path / "seg.keras"), dataset="cityscapes")
    said = []
    renamed = load_segmenter(str(tmp_path / "seg.keras"), dataset=str(write_classes(tmp_path)), say=said.append)
    assert renamed.class_names[0] == "c0" and "instead of the model's (demo)" in said[0]
    (tmp_path / "broken.keras").write_bytes(b"PK\x03\x04 not really")
    with pytest.raises(UserError, match=r"broken\.keras is not a \.keras file"):
        load_segmenter(str(tmp_path / "broken.keras"))
    with pytest.raises(UserError, match="unknown dataset 'citiscapes'"):
        load_segmenter(str(tmp_path / "seg.keras"), dataset="citiscapes")


def write_classes(tmp_path):
    path = tmp_path / "classes.txt"
    path.write_text("\n".join(f"c{i}" for i in range(8)) + "\n")
    return path


def test_saved_model_carries_the_metadata_and_predict_uses_it(tmp_path):
    from ocr_tf.cli import export as export_cli
    from ocr_tf.cli import predict

    seg = tiny_segmenter(palette=[[250, 0, 0], [0, 250, 0], [0, 0, 250]])
    seg.save(tmp_path / "best.keras")
    assert export_cli.main(["--weights", str(tmp_path / "best.keras"), "--format", "saved_model",
                            "--output", str(tmp_path / "sm")]) == 0
    meta = json.loads((tmp_path / "sm" / "1" / "assets.extra" / "segmenter.json").read_text())
    assert meta["class_names"] == NAMES and meta["palette"][0] == [250, 0, 0] and meta["model_name"] == "hrnet_tiny_ocr"
    image = np.random.default_rng(4).integers(0, 256, (18, 26, 3), dtype=np.uint8)
    Image.fromarray(image).save(tmp_path / "x.png")
    assert predict.main([str(tmp_path / "x.png"), "--weights", str(tmp_path / "sm"), "--output", str(tmp_path / "p"),
                         "--quiet"]) == 0
    labels = np.array(Image.open(tmp_path / "p" / "labels" / "x.png"))
    np.testing.assert_array_equal(labels, reference_labels(seg, image))
    np.testing.assert_array_equal(np.array(Image.open(tmp_path / "p" / "color" / "x.png")),
                                  np.array(seg.palette, np.uint8)[labels])
    # Exports are named after the model, not after the file ("best").
    old = os.getcwd()
    os.chdir(tmp_path)
    try:
        assert export_cli.main(["--weights", "best.keras", "--format", "saved_model"]) == 0
    finally:
        os.chdir(old)
    assert os.path.isdir(tmp_path / "saved_models" / "hrnet_tiny_ocr" / "1")
