"""export --verify: the fidelity report's numbers against an independent NumPy computation, the
report and model card on disk, a deliberately broken export refused (exit 1, report FAILED,
artefact kept), thresholds, images, and the SavedModel run in a fresh process."""

import json
import os
import types

import numpy as np
import pytest
import tensorflow as tf
from test_export import CLASS_NAMES, NUM_CLASSES, reference, tiny_segmenter

from ocr_tf import export, export_verify
from ocr_tf.data.records import make_example
from ocr_tf.preprocessing import normalize_image
from ocr_tf.tflite_utils import TFLiteSegmenter

SIZE = (48, 64)


def numpy_agreement(ref, exported, num_classes):
    """Overall agreement, per-class agreement and IoU from boolean masks (no confusion matrix)."""
    ref, exported = np.concatenate([r.ravel() for r in ref]), np.concatenate([e.ravel() for e in exported])
    per_class_agreement, per_class_iou = [], []
    for c in range(num_classes):
        k, e = ref == c, exported == c
        per_class_agreement.append((k & e).sum() / k.sum() if k.any() else None)
        per_class_iou.append((k & e).sum() / (k | e).sum() if (k | e).any() else None)
    return (ref == exported).mean(), per_class_agreement, per_class_iou


def assert_report_matches(report, expected):
    agreement, per_class_agreement, per_class_iou = expected
    assert report["agreement"] == pytest.approx(agreement, abs=1e-12)
    for row, a, iou in zip(report["per_class"], per_class_agreement, per_class_iou):
        assert row["agreement"] == (None if a is None else pytest.approx(a, abs=1e-12))
        assert row["iou"] == (None if iou is None else pytest.approx(iou, abs=1e-12))


def test_agreement_report_matches_numpy_masks():
    rng = np.random.default_rng(0)
    ref = [rng.integers(0, 4, (20, 30)), rng.integers(0, 4, (11, 13))]  # class 4 never in Keras' labels
    exported = [r.copy() for r in ref]
    for e in exported:
        flip = rng.random(e.shape) < 0.2
        e[flip] = rng.integers(0, 5, flip.sum())  # some pixels become class 4 (only the export has it)
    exported[1][0, :3] = [7, -1, 255]  # labels no class has: disagreement, never a crash
    report = export_verify.agreement_report(ref, exported, 6, class_names=list("abcdef"))
    assert_report_matches(report, numpy_agreement(ref, exported, 6))
    assert report["out_of_range_pixels"] == 3 and report["num_pixels"] == 20 * 30 + 11 * 13
    rows = {row["name"]: row for row in report["per_class"]}
    assert rows["e"]["agreement"] is None and rows["e"]["iou"] == 0.0 and rows["e"]["export_pixels"] > 0
    assert rows["f"]["agreement"] is None and rows["f"]["iou"] is None  # in neither
    with pytest.raises(ValueError, match="600 exported labels for 743 Keras labels"):
        export_verify.agreement_report(ref, exported[:1], 6)


@pytest.fixture(scope="module")
def model():
    return tiny_segmenter()


@pytest.fixture(scope="module")
def images():
    rng = np.random.default_rng(11)
    return [rng.integers(0, 256, (*SIZE, 3), dtype=np.uint8) for _ in range(3)]


def fp16_export_and_report(model, images, path):
    """A Segmenter-like object (duck typing: network, class names, provenance) verified on an
    fp16 TFLite export, whose small logit differences make the comparison non-trivial."""
    export.export_tflite(model, str(path), input_size=SIZE, quantize="fp16")
    segmenter = types.SimpleNamespace(
        network=model, class_names=CLASS_NAMES, num_classes=NUM_CLASSES, model_name="tiny_ocr",
        provenance={"source": "tests", "sha256": "0" * 64},
    )
    return export_verify.verify_export(segmenter, str(path), images=images)


def test_tflite_report_matches_an_independent_computation(model, images, tmp_path):
    path = tmp_path / "tiny_fp16.tflite"
    returned = fp16_export_and_report(model, images, path)
    json_path, card_path = export_verify.report_paths(str(path))
    assert (json_path, card_path) == (str(tmp_path / "tiny_fp16.verify.json"), str(tmp_path / "tiny_fp16.model_card.md"))
    with open(json_path) as f:
        report = json.load(f)  # strict JSON (no NaN) on disk, equal to what was returned
    assert report == json.loads(json.dumps(returned))
    # Independently: LiteRT's labels and logits against the NumPy float64 reference.
    runner = TFLiteSegmenter(str(path))
    outputs = [runner(image) for image in images]
    ref_labels, _, _ = reference(model, np.stack(images))
    assert_report_matches(report, numpy_agreement(list(ref_labels), [o["labels"] for o in outputs], NUM_CLASSES))
    keras_logits = model(normalize_image(np.stack(images)), training=False)["logits"].numpy()
    worst = max(np.abs(k.astype(np.float64) - o["logits"]).max() for k, o in zip(keras_logits, outputs))
    assert report["max_logit_difference"] == pytest.approx(worst, rel=1e-6) and worst > 0  # fp16 weights differ
    assert report["status"] == "PASSED" and report["quantize"] == "fp16" and report["min_agreement"] == 0.999
    assert report["model"]["provenance"] == {"source": "tests", "sha256": "0" * 64}
    assert report["data"] == {"source": "images given by the caller", "num_images": 3, "image_sizes": ["48x64"]}
    assert report["latency_ms"]["export"] > 0 and report["latency_ms"]["keras"] > 0
    card = open(card_path).read()
    assert card.startswith("# Model card: tiny_ocr (tflite, fp16)")
    assert "**Export verification: PASSED**" in card and "- sha256: " + "0" * 64 in card
    assert "road, car, sky, tree, person" in card and card.count("\n| ") == 1 + NUM_CLASSES  # header + rows


def test_a_broken_export_is_refused_with_exit_code_1(model, tmp_path, monkeypatch, capsys):
    """The export forgets the std division (normalised with the mean only): --verify refuses it,
    prints one line, exits 1, and leaves the artefact with a report saying FAILED."""
    model.save(tmp_path / "tiny.keras")
    classes = tmp_path / "classes.txt"
    classes.write_text("\n".join(CLASS_NAMES) + "\n")
    from ocr_tf.cli import export as export_cli
    from ocr_tf.segmenter import Segmenter

    # The exported graph normalises through the Segmenter; --verify's reference normalises in NumPy.
    monkeypatch.setattr(Segmenter, "normalize", lambda self, x: tf.cast(x, tf.float32) / 255.0 - 0.45)
    out = tmp_path / "broken.tflite"
    code = export_cli.main(["--weights", str(tmp_path / "tiny.keras"), "--format", "tflite", "--input-size", "48x64",
                            "--dataset", str(classes), "--output", str(out), "--verify", "--num-images", "3"])
    assert code == 1
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(err) == 1 and "verification FAILED" in err[0] and "below the required 99.900%" in err[0]
    assert os.path.isfile(out)  # the artefact stays
    with open(tmp_path / "broken.verify.json") as f:
        report = json.load(f)
    assert report["status"] == "FAILED" and report["agreement"] < 0.9
    assert "**Export verification: FAILED**" in (tmp_path / "broken.model_card.md").read_text()


def test_int8_threshold_is_98_percent(model, images, tmp_path):
    path = str(tmp_path / "tiny_int8.tflite")
    export.export_tflite(model, path, input_size=SIZE, quantize="int8", calibration_data=images)
    assert export_verify.tflite_quantization(path) == "int8"
    try:
        report = export_verify.verify_export(model, path, images=images, write=False)
    except export_verify.VerificationFailed as err:  # a random tiny model may fall below 98%
        assert "below the required 98.000%" in str(err)
    else:
        assert report["min_agreement"] == 0.98 and report["quantize"] == "int8"
    assert not os.path.exists(export_verify.report_paths(path)[0])  # write=False
    assert [export_verify.default_min_agreement(q) for q in ("none", "fp16", "dynamic", "int8", "int8_full")] == [
        0.999, 0.999, 0.98, 0.98, 0.98]


@pytest.mark.slow  # a fresh TensorFlow process (~20-40 s on a busy 2-core box)
def test_saved_model_is_verified_in_a_fresh_process(model, images, tmp_path):
    path = export.export_saved_model(model, str(tmp_path / "m"), with_probabilities=True, class_names=CLASS_NAMES)
    report = export_verify.verify_export(model, path, images=images[:2])
    assert report["status"] == "PASSED" and report["agreement"] >= 0.999
    assert report["runtime"].endswith("(fresh process)") and report["class_names"] == CLASS_NAMES  # from labels.txt
    assert report["max_probability_difference"] < 1e-5 and report["max_logit_difference"] is None
    assert sorted(os.listdir(os.path.join(path, "assets.extra"))) == ["labels.txt", "model_card.md", "verify.json"]
    assert sorted(os.listdir(tmp_path / "m")) == ["1"]  # nothing beside the version TF Serving would trip on


def test_images_from_tfrecords_or_demo_scenes_in_memory(tmp_path, monkeypatch):
    with tf.io.TFRecordWriter(str(tmp_path / "val-0.tfrecord")) as writer:
        for i in range(3):
            writer.write(make_example(np.full((10, 12, 3), i, np.uint8), source_id=str(i)).SerializeToString())
    images, source = export_verify.verification_images(str(tmp_path / "val-*.tfrecord"), 2)
    assert [int(image[0, 0, 0]) for image in images] == [0, 1] and source.startswith("TFRecords ")
    images, _ = export_verify.verification_images(str(tmp_path / "val-*.tfrecord"), 5, input_size=(8, 6))
    assert len(images) == 3 and all(image.shape == (8, 6, 3) for image in images)
    monkeypatch.setenv("OCR_TF_CACHE", str(tmp_path / "empty_cache"))  # no demo TFRecords there
    images, source = export_verify.verification_images(None, 2)
    assert len(images) == 2 and images[0].shape == (96, 128, 3) and images[0].dtype == np.uint8
    assert "in memory" in source and not (tmp_path / "empty_cache").exists()  # nothing generated on disk
    with pytest.raises(FileNotFoundError, match="nothing-here"):
        export_verify.verification_images(str(tmp_path / "nothing-here*.tfrecord"), 2)


def test_bad_arguments_are_refused(tmp_path):
    with pytest.raises(FileNotFoundError, match="No exported model at"):
        export_verify.detect_format(tmp_path / "missing.onnx")
    (tmp_path / "model.pt").write_bytes(b"x")
    with pytest.raises(ValueError, match="cannot tell the export format"):
        export_verify.detect_format(tmp_path / "model.pt")
    with pytest.raises(ValueError, match="directory without saved_model.pb"):
        export_verify.detect_format(tmp_path)
    path = tmp_path / "t.onnx"
    path.write_bytes(b"not read: the threshold is checked first")
    with pytest.raises(ValueError, match=r"min_agreement must be a fraction in \(0, 1\], got 99.9"):
        export_verify.verify_export(None, str(path), min_agreement=99.9, write=False)
    from ocr_tf.cli.export import agreement  # --min-agreement's type

    assert agreement("99.5%") == pytest.approx(0.995) and agreement("0.9") == 0.9
    with pytest.raises(Exception, match="percent like 99.9%"):
        agreement("99.9")


def test_an_artefact_the_runtime_cannot_load_gets_a_failed_report(model, images, tmp_path):
    path = tmp_path / "corrupt.onnx"
    path.write_bytes(b"\x08\x07 this is not an ONNX model")
    with pytest.raises(export_verify.VerificationFailed, match=r"^onnx export .*corrupt.onnx: "):
        export_verify.verify_export(model, str(path), images=images[:1])
    with open(tmp_path / "corrupt.verify.json") as f:
        report = json.load(f)
    assert report["status"] == "FAILED" and report["error"] and "agreement" not in report
    assert "**Export verification: FAILED** (" in (tmp_path / "corrupt.model_card.md").read_text()
