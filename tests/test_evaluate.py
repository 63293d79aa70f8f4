"""evaluate: folder scoring equals cityscapesscripts; model scoring, written predictions, reports."""

import importlib
import json
import os

import keras
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from ocr_tf import evaluate
from ocr_tf.cli import evaluate as evaluate_cli
from ocr_tf.data import records
from ocr_tf.data.datasets import cityscapes
from ocr_tf.layers import OCRHead, resize_bilinear
from ocr_tf.metrics import confusion_matrix_np, miou_from_confusion
from ocr_tf.preprocessing import normalize_image

FRAMES = ["frankfurt_000000_000294", "frankfurt_000001_011835", "lindau_000002_000019"]
SHAPE = (12, 20)


def save(array, path):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(np.asarray(array, np.uint8)).save(path)


def make_cityscapes_folders(root, seed=0):
    """gtFine/val/<city>/*_gtFine_labelIds.png and predictions in labelIds and in trainIds.

    Ground truth and predictions use every labelId 0..33, so both include ids that are not
    evaluated (ignored ground truth, "void" predictions); 'train' (id 31) appears nowhere (its
    IoU is NaN) and 'bus' (id 28) only in predictions (IoU 0)."""
    rng = np.random.default_rng(seed)
    ids = [i for i in range(34) if i not in (31, 28)]
    for frame in FRAMES:
        city = frame.split("_")[0]
        gt = rng.choice(ids, size=SHAPE)
        pred = np.where(rng.random(SHAPE) < 0.5, gt, rng.choice(ids + [28], size=SHAPE))
        save(gt, root / "gtFine" / "val" / city / f"{frame}_gtFine_labelIds.png")
        save(pred, root / "pred_labelids" / f"{frame}_leftImg8bit.png")
        save(cityscapes.label_id_to_train_id[pred], root / "pred_trainids" / city / f"{frame}_leftImg8bit.png")


def cityscapesscripts_scores(root, monkeypatch):
    """Per-class IoU of cityscapesscripts' evalPixelLevelSemanticLabeling on the same files."""
    monkeypatch.setenv("CITYSCAPES_DATASET", str(root))
    module = importlib.import_module("cityscapesscripts.evaluation.evalPixelLevelSemanticLabeling")
    args = module.args
    monkeypatch.setattr(args, "evalInstLevelScore", False)
    monkeypatch.setattr(args, "JSONOutput", False)
    monkeypatch.setattr(args, "quiet", True)
    monkeypatch.setattr(args, "predictionPath", str(root / "pred_labelids"))
    monkeypatch.setattr(args, "predictionWalk", None)
    gts = sorted(str(p) for p in (root / "gtFine" / "val").rglob("*_gtFine_labelIds.png"))
    preds = [module.getPrediction(args, gt) for gt in gts]
    return module.evaluateImgLists(preds, gts, args)["classScores"]


@pytest.mark.parametrize("fmt", ["raw", "trainids"])
def test_folder_scores_equal_cityscapesscripts(tmp_path, monkeypatch, fmt):
    make_cityscapes_folders(tmp_path)
    reference = cityscapesscripts_scores(tmp_path, monkeypatch)
    folder = "pred_labelids" if fmt == "raw" else "pred_trainids"
    out = tmp_path / "report"
    evaluate_cli.main([
        "--predictions", str(tmp_path / folder), "--ground-truth", str(tmp_path / "gtFine"),
        "--dataset", "cityscapes", "--label-format", fmt, "--output", str(out), "--quiet",
    ])
    report = json.loads((out / "metrics.json").read_text())
    ours = dict(zip(report["class_names"], report["per_class_iou"]))
    assert len(ours) == 19
    for name, iou in ours.items():
        ref = reference[name]
        if np.isnan(ref):
            assert iou is None, name  # NaN is written as null
        else:
            assert iou == pytest.approx(ref, rel=1e-12), name
    assert ours["train"] is None and ours["bus"] == 0.0
    ref_mean = np.nanmean([reference[n] for n in ours])
    assert report["miou"] == pytest.approx(ref_mean, rel=1e-12)
    cm = np.load(out / "confusion_matrix.npy")
    assert cm.dtype == np.int64 and cm.shape == (19, 20)  # last column: predictions of no class
    assert "| road |" in (out / "metrics.md").read_text()


def test_folder_scoring_names_the_missing_prediction(tmp_path):
    make_cityscapes_folders(tmp_path)
    os.remove(tmp_path / "pred_labelids" / f"{FRAMES[1]}_leftImg8bit.png")
    with pytest.raises(FileNotFoundError, match=FRAMES[1]):
        evaluate.score_folders(tmp_path / "pred_labelids", tmp_path / "gtFine", "cityscapes", 19, progress=False)


def test_raw_ids_not_defined_by_the_dataset_are_named(tmp_path):
    save(np.full((4, 4), 200), tmp_path / "gt" / "a.png")
    save(np.zeros((4, 4)), tmp_path / "pred" / "a.png")
    with pytest.raises(ValueError, match=r"a\.png: label ids \[200\]"):
        evaluate.score_folders(tmp_path / "pred", tmp_path / "gt", "ade20k", 150, progress=False)


def test_inverse_label_table_matches_cityscapes_module():
    to_train, known, to_raw = evaluate.label_tables("cityscapes")
    np.testing.assert_array_equal(to_raw[:19], cityscapes.train_id_to_label_id[:19])
    np.testing.assert_array_equal(to_train[known], cityscapes.label_id_to_train_id[known])
    ade_train, _, ade_raw = evaluate.label_tables("ade20k")
    assert ade_train[0] == 255 and ade_train[150] == 149 and ade_raw[149] == 150


def tiny_model(k=19):
    keras.utils.set_random_seed(0)
    inp = keras.Input((None, None, 3))
    feats = keras.layers.Conv2D(8, 3, strides=2, padding="same", activation="relu")(inp)
    return keras.Model(inp, OCRHead(k, mid_channels=8, key_channels=4)(feats))


def write_records(path, rng, n=3):
    """Cityscapes-style records: train-id labels with ignore pixels, source ids as the converter."""
    items = []
    with tf.io.TFRecordWriter(str(path)) as writer:
        for frame in FRAMES[:n]:
            image = rng.integers(0, 256, size=(*SHAPE, 3), dtype=np.uint8)
            label = rng.integers(0, 19, size=SHAPE).astype(np.uint8)
            label[rng.random(SHAPE) < 0.1] = 255
            writer.write(records.make_example(image, label, source_id=frame).SerializeToString())
            items.append((frame, image, label))
    return items


def test_model_evaluation_cli_and_written_predictions(tmp_path):
    rng = np.random.default_rng(1)
    items = write_records(tmp_path / "val-00000-of-00001.tfrecord", rng)
    model = tiny_model()
    model.save(tmp_path / "tiny.keras")
    # The expected predictions, straight from the model.
    expected_cm = np.zeros((19, 19), np.int64)
    expected_pred = {}
    for frame, image, label in items:
        logits = model(normalize_image(image[None]))["logits"]
        pred = tf.argmax(resize_bilinear(logits, SHAPE, True), -1)[0].numpy()
        expected_pred[frame] = pred
        expected_cm += confusion_matrix_np(label, pred, 19)

    # --config (a training run's, with its model section) supplies the dataset and the data; the
    # .keras file is the model, whatever the config's model overrides say.
    config = tmp_path / "eval.yaml"
    config.write_text(
        "model:\n  name: hrnet_w48_ocr\n  overrides: {mid_channels: 8, key_channels: 4}\n"
        f"data:\n  dataset: cityscapes\n  num_classes: 19\n  val: {tmp_path}/val-*.tfrecord\n"
    )
    out, written = tmp_path / "report", tmp_path / "written"
    evaluate_cli.main([
        "--config", str(config), "--weights", str(tmp_path / "tiny.keras"), "--output", str(out),
        "--write-predictions", str(written), "--quiet",
    ])
    cm = np.load(out / "confusion_matrix.npy")
    np.testing.assert_array_equal(cm, expected_cm)
    report = json.loads((out / "metrics.json").read_text())
    assert report["miou"] == pytest.approx(miou_from_confusion(expected_cm)["miou"], rel=1e-12)

    # Written predictions: labelIds in the test server's naming, the model's labels exactly.
    assert sorted(os.listdir(written)) == sorted(f"{f}_leftImg8bit.png" for f in FRAMES)
    for frame, _, _ in items:
        label_ids = np.array(Image.open(written / f"{frame}_leftImg8bit.png"))
        np.testing.assert_array_equal(cityscapes.label_id_to_train_id[label_ids], expected_pred[frame])

    # Round trip: scoring the written files against labelIds ground truth gives the same matrix.
    for frame, _, label in items:
        gt = cityscapes.train_id_to_label_id[label]  # ignore -> 0 (unlabeled), not evaluated
        save(gt, tmp_path / "gtFine" / frame.split("_")[0] / f"{frame}_gtFine_labelIds.png")
    folder_cm = evaluate.score_folders(written, tmp_path / "gtFine", "cityscapes", 19, progress=False)
    np.testing.assert_array_equal(folder_cm.matrix[:, :19], expected_cm)
    assert folder_cm.matrix[:, 19].sum() == 0


def test_multi_scale_flip_options_reach_inference(tmp_path):
    rng = np.random.default_rng(2)
    items = write_records(tmp_path / "val.tfrecord", rng, n=1)
    model = tiny_model()
    options = {"scales": (0.5, 1.0), "flip": True, "mode": "slide", "crop_size": (8, 8)}
    cm = evaluate.evaluate_model(model, str(tmp_path / "val.tfrecord"), dataset="cityscapes", num_classes=19,
                                 inference=options, progress=False)
    from ocr_tf.inference import predict_labels

    _, image, label = items[0]
    pred = predict_labels(model, normalize_image(image[None]), num_classes=19, **options)[0].numpy()
    np.testing.assert_array_equal(cm.matrix, confusion_matrix_np(label, pred, 19))


def test_cli_errors_name_the_problem(tmp_path, capsys):
    assert evaluate_cli.main(["--dataset", "cityscapes", "--predictions", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "--ground-truth" in err and "Traceback" not in err
    with pytest.raises(FileNotFoundError, match="no TFRecord files match"):
        evaluate.evaluate_model(tiny_model(), str(tmp_path / "none-*.tfrecord"), dataset="cityscapes",
                                num_classes=19, progress=False)
