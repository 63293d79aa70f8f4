"""SavedModel export for TF Serving: signatures checked in a fresh process against the Keras model,
`saved_model_cli`, refusal of bad inputs, version numbering and atomic writes."""

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
import tensorflow as tf

from ocr_tf import export
from ocr_tf.errors import UserError
from ocr_tf.data.records import encode_png, make_example
from ocr_tf.layers import ConvBN, OCRHead
from ocr_tf.preprocessing import normalize_image
from ocr_reference import resize_bilinear as np_resize_bilinear

NUM_CLASSES = 5
CLASS_NAMES = ["road", "car", "sky", "tree", "person"]
SIZES = [(37, 50), (24, 64)]  # odd and even sizes; the model's stride is 4
ENV = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", CUDA_VISIBLE_DEVICES="")


def tiny_segmenter(seed=0):
    """A small OCR segmenter (stride 4) with deterministic, non-trivial weights and BN statistics."""
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((None, None, 3))
    x = ConvBN(8, 3, strides=2)(inputs)
    x = ConvBN(16, 3, strides=2)(x)
    outputs = OCRHead(NUM_CLASSES, mid_channels=16, key_channels=8)(x)
    model = keras.Model(inputs, outputs)
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        for w in layer.weights:
            if "moving_variance" in w.path:
                w.assign(rng.uniform(0.5, 2.0, w.shape).astype("float32"))
            elif "moving_mean" in w.path:
                w.assign(rng.normal(0, 0.2, w.shape).astype("float32"))
    # Centre the classifier on random images so that no class wins everywhere (a model predicting
    # one class would make label comparisons trivially pass).
    images = rng.integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)
    mean_logits = model(normalize_image(images), training=False)["logits"].numpy().mean(axis=(0, 1, 2))
    bias = model.get_layer(index=-1).cls_head.bias
    bias.assign(bias.numpy() - mean_logits)
    return model


def reference(model, images):
    """Keras logits -> NumPy float64 align_corners resize -> (argmax labels, softmax, top-2 margin)."""
    logits = model(normalize_image(images), training=False)["logits"].numpy().astype(np.float64)
    up = np_resize_bilinear(logits, images.shape[1:3], align_corners=True)
    top2 = np.sort(up, axis=-1)[..., -2:]
    probs = np.exp(up - up.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    return up.argmax(-1), probs, top2[..., 1] - top2[..., 0]


def assert_labels_match(labels, ref_labels, margin):
    """Equal everywhere except at float ties (top-2 margin < 1e-4), of which there are few."""
    assert labels.shape == ref_labels.shape and labels.dtype == np.int32
    decided = margin >= 1e-4
    assert decided.mean() > 0.99
    np.testing.assert_array_equal(labels[decided], ref_labels[decided])


def run_python(code, *args, check=True):
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code), *map(str, args)],
        capture_output=True, text=True, env=ENV, timeout=300,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"subprocess failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return proc


# Runs in a fresh process: loads the SavedModel and answers every query in inputs.npz.
SERVE_SCRIPT = """
import json, sys
import numpy as np, tensorflow as tf
path, inputs, out = sys.argv[1:4]
data = np.load(inputs, allow_pickle=False)
loaded = tf.saved_model.load(path)
results, errors = {}, {}
serve = loaded.signatures["serving_default"]
for i in range(2):
    res = serve(images=tf.constant(data[f"images{i}"]))
    results[f"labels{i}"] = res["labels"].numpy()
    results[f"probabilities{i}"] = res["probabilities"].numpy()
res = loaded.signatures["serve_bytes"](encoded_images=tf.constant(list(data["png"])))
results["bytes_labels"] = res["labels"].numpy()
res = loaded.signatures["serve_examples"](serialized_examples=tf.constant(list(data["examples"])))
results["examples_labels"] = res["labels"].numpy()
bad = {
    "float32": lambda: serve(images=tf.zeros([1, 8, 8, 3], tf.float32)),
    "rank3": lambda: serve(images=tf.zeros([8, 8, 3], tf.uint8)),
    "channels4": lambda: serve(images=tf.zeros([1, 8, 8, 4], tf.uint8)),
    "bytes_mixed_sizes": lambda: loaded.signatures["serve_bytes"](encoded_images=tf.constant(list(data["mixed_png"]))),
}
for name, call in bad.items():
    try:
        call()
        errors[name] = None
    except Exception as err:
        errors[name] = f"{type(err).__name__}: {err}"
np.savez(out, **results)
with open(out + ".json", "w") as f:
    json.dump({"errors": errors, "signatures": sorted(loaded.signatures)}, f)
"""


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    model = tiny_segmenter()
    base = tmp_path_factory.mktemp("saved_models") / "tiny_ocr"
    path = export.export_saved_model(model, str(base), with_probabilities=True, class_names=CLASS_NAMES)
    return model, base, path


@pytest.fixture(scope="module")
def served(exported, tmp_path_factory):
    """Inputs, the Keras reference and the fresh-process SavedModel answers."""
    model, _, path = exported
    rng = np.random.default_rng(1)
    images = [rng.integers(0, 256, (2, *size, 3), dtype=np.uint8) for size in SIZES]
    png = [encode_png(image) for image in images[0]]
    examples = [make_example(image, source_id=f"img{i}").SerializeToString() for i, image in enumerate(images[0])]
    mixed = [encode_png(images[0][0]), encode_png(images[1][0])]
    work = tmp_path_factory.mktemp("serve")
    np.savez(work / "inputs.npz", images0=images[0], images1=images[1], png=np.array(png, dtype=object).astype(bytes),
             examples=np.array(examples, dtype=object).astype(bytes), mixed_png=np.array(mixed, dtype=object).astype(bytes))
    run_python(SERVE_SCRIPT, path, work / "inputs.npz", work / "out.npz")
    out = dict(np.load(work / "out.npz"))
    with open(work / "out.npz.json") as f:
        meta = json.load(f)
    return model, images, out, meta


def test_serving_default_equals_keras_argmax_on_two_sizes(served):
    model, images, out, meta = served
    assert meta["signatures"] == ["serve_bytes", "serve_examples", "serving_default"]
    for i, batch in enumerate(images):
        ref_labels, ref_probs, margin = reference(model, batch)
        assert out[f"labels{i}"].shape == batch.shape[:3]  # labels at the input size
        assert_labels_match(out[f"labels{i}"], ref_labels, margin)
        np.testing.assert_allclose(out[f"probabilities{i}"], ref_probs, atol=1e-5)
        # A non-degenerate model (no class wins everywhere), so the comparison can catch a mix-up.
        assert np.bincount(ref_labels.ravel(), minlength=NUM_CLASSES).max() < 0.5 * ref_labels.size


def test_serve_bytes_and_examples_equal_serving_default(served):
    _, _, out, _ = served
    np.testing.assert_array_equal(out["bytes_labels"], out["labels0"])
    np.testing.assert_array_equal(out["examples_labels"], out["labels0"])


def test_bad_inputs_are_refused_with_clear_errors(served):
    errors = served[3]["errors"]
    assert "uint8" in errors["float32"] and "float" in errors["float32"]
    assert "not compatible with expected shape [?,?,?,3]" in errors["rank3"] and "[8,8,3]" in errors["rank3"]
    assert "[1,8,8,4]" in errors["channels4"]
    assert "same height and width" in errors["bytes_mixed_sizes"]


def test_saved_model_cli_shows_the_signatures(exported):
    _, _, path = exported
    cli = shutil.which("saved_model_cli")
    assert cli, "saved_model_cli (installed with tensorflow) is not on PATH"
    proc = subprocess.run([cli, "show", "--dir", path, "--all"], capture_output=True, text=True, env=ENV, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    text = proc.stdout
    blocks = {}
    for block in text.split("signature_def['")[1:]:
        name, _, body = block.partition("']")
        blocks[name] = body.split("Method name is")[0]
    assert {"serving_default", "serve_bytes", "serve_examples"} <= set(blocks)
    default = blocks["serving_default"]
    assert "inputs['images']" in default and "dtype: DT_UINT8" in default and "shape: (-1, -1, -1, 3)" in default
    assert "outputs['labels']" in default and "dtype: DT_INT32" in default and "shape: (-1, -1, -1)" in default
    assert "outputs['probabilities']" in default and "shape: (-1, -1, -1, 5)" in default
    assert "inputs['encoded_images']" in blocks["serve_bytes"] and "DT_STRING" in blocks["serve_bytes"]
    assert "inputs['serialized_examples']" in blocks["serve_examples"]


def test_labels_file_and_layout(exported):
    _, base, path = exported
    assert path == str(base / "1")
    assert sorted(os.listdir(base)) == ["1"]  # no temporary directory left behind
    assert os.path.isfile(os.path.join(path, "saved_model.pb"))
    with open(os.path.join(path, "assets.extra", "labels.txt")) as f:
        assert f.read().splitlines() == CLASS_NAMES


def test_versions_count_up_and_never_overwrite(tmp_path):
    model = tiny_segmenter()
    base = tmp_path / "m"
    os.makedirs(base / "7")  # an existing version (TF Serving layout), and non-version entries
    os.makedirs(base / ".tmp-8-stale")
    (base / "notes.txt").write_text("x")
    assert export.export_saved_model(model, str(base)) == str(base / "8")
    assert export.export_saved_model(model, str(base), version=3) == str(base / "3")
    with pytest.raises(UserError, match="already exists"):
        export.export_saved_model(model, str(base), version=8)
    with pytest.raises(ValueError, match="3 names but the model has 5 classes"):
        export.export_saved_model(model, str(base), class_names=["a", "b", "c"])


def test_failure_mid_write_leaves_no_version_directory(tmp_path, monkeypatch):
    model = tiny_segmenter()
    base = tmp_path / "m"
    seen = []

    def fail_before_publishing(src, dst):
        seen.append(sorted(os.listdir(src)))  # the model is on disk; publishing it fails
        raise OSError("disk full (simulated)")

    monkeypatch.setattr(os, "rename", fail_before_publishing)
    with pytest.raises(OSError, match="simulated"):
        export.export_saved_model(model, str(base))
    assert "saved_model.pb" in seen[0]
    assert os.listdir(base) == []  # neither a version nor the temporary directory


KILL_SCRIPT = """
import os, signal, sys
sys.path.insert(0, sys.argv[2])
from test_export import tiny_segmenter
from ocr_tf import export
rename = os.rename
def die_before_publishing(src, dst):
    if os.path.basename(dst).isdigit():
        os.kill(os.getpid(), signal.SIGKILL)  # killed with the model written, before the rename
    rename(src, dst)
os.rename = die_before_publishing
export.export_saved_model(tiny_segmenter(), sys.argv[1])
"""


def test_killed_export_leaves_no_version_directory(tmp_path):
    base = tmp_path / "m"
    proc = run_python(KILL_SCRIPT, base, os.path.dirname(os.path.abspath(__file__)), check=False)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    left = os.listdir(base)
    assert len(left) == 1 and left[0].startswith(".tmp-1-")  # the model was being written ...
    assert os.path.isfile(base / left[0] / "saved_model.pb")
    assert not [n for n in left if n.isdigit()]  # ... but no version TF Serving would load
    # The next export still gets version 1, and removes the killed export's leftover.
    assert export.export_saved_model(tiny_segmenter(), str(base)) == str(base / "1")
    assert os.listdir(base) == ["1"]


def test_cli_exports_a_keras_file_with_its_class_names(tmp_path):
    model = tiny_segmenter()
    model.save(tmp_path / "tiny.keras")
    classes = tmp_path / "classes.txt"
    classes.write_text("\n".join(CLASS_NAMES) + "\n")
    cmd = [sys.executable, "-m", "ocr_tf.export", "--weights", str(tmp_path / "tiny.keras"), "--format",
           "saved_model", "--dataset", str(classes), "--output", str(tmp_path / "out"), "--with-probabilities"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=ENV, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    path = proc.stdout.strip().splitlines()[-1]
    assert path == str(tmp_path / "out" / "1")
    with open(os.path.join(path, "assets.extra", "labels.txt")) as f:
        assert f.read().splitlines() == CLASS_NAMES
    images = np.random.default_rng(5).integers(0, 256, (1, 29, 41, 3), dtype=np.uint8)
    labels = tf.saved_model.load(path).signatures["serving_default"](images=tf.constant(images))["labels"]
    ref_labels, _, margin = reference(model, images)
    assert_labels_match(labels.numpy(), ref_labels, margin)
