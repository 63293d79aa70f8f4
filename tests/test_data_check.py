"""The data doctor (`python -m ocr_tf.data.check`) and the same checks inside data.convert: one
test per kind of bad data, each asserting the message names the file and the fix."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from ocr_tf.data import check

RNG = np.random.default_rng(0)
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _dataset(root, masks, classes="background\nobject\n", image=None):
    """A folder dataset: images/<k>.png (24x32 RGB) and masks/<k>.png from the `masks` list."""
    os.makedirs(root / "images")
    os.makedirs(root / "masks")
    (root / "classes.txt").write_text(classes)
    for k, mask in enumerate(masks):
        pixels = image if image is not None else RNG.integers(0, 256, (24, 32, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(root / "images" / f"{k}.png")
        Image.fromarray(mask).save(root / "masks" / f"{k}.png")
    return root


def _binary(values=(0, 255)):
    mask = np.full((24, 32), values[0], np.uint8)
    mask[4:12, 8:20] = values[1]
    return mask


def _doctor(path, *args):
    """(exit status, printed report) of the data doctor run in-process."""
    import contextlib
    import io

    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        status = check.main([str(path), "--no-progress", *args])
    return status, out.getvalue()


def _convert(root, out, *args):
    import contextlib
    import io

    from ocr_tf.data import convert

    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        status = convert.main(["folder", "--root", str(root), "--out", str(out), "--no-progress", *args])
    return status, err.getvalue()


def _labels(out, split="train"):
    from ocr_tf.data import records

    import tensorflow as tf

    labels = {}
    for path in sorted(tf.io.gfile.glob(f"{out}/{split}-*.tfrecord")):
        for raw in tf.data.TFRecordDataset(path):
            _, label, sid = records.decode_record(raw, 2)
            labels[sid.numpy().decode()] = label.numpy()
    return labels


def test_binary_0_255_masks_with_two_classes_stop_conversion_with_the_remap(tmp_path):
    root = _dataset(tmp_path / "d", [_binary(), _binary()])
    status, report = _doctor(root)
    assert status == 1
    assert "error: all 2 masks hold only 0 and 255 (e.g. " in report and "masks/0.png" in report
    assert "convert with --remap remap.txt holding the line '255 1'" in report
    status, err = _convert(root, tmp_path / "out")
    assert status == 1 and "hold only 0 and 255" in err and "'255 1'" in err and "--force" in err
    assert not os.path.exists(tmp_path / "out" / "train-00000-of-00001.tfrecord")  # nothing committed
    # The suggested fix works: foreground becomes class 1.
    (tmp_path / "remap.txt").write_text("255 1\n")
    assert _doctor(root, "--remap", str(tmp_path / "remap.txt"))[0] == 0
    assert _convert(root, tmp_path / "out", "--remap", str(tmp_path / "remap.txt"))[0] == 0
    np.testing.assert_array_equal(_labels(tmp_path / "out")["0"], _binary((0, 1)))
    # --force converts as is (foreground = ignore), as the user asked.
    assert _convert(root, tmp_path / "forced", "--force")[0] == 0
    np.testing.assert_array_equal(_labels(tmp_path / "forced")["1"], _binary())


def test_binary_0_1_masks(tmp_path):
    ok = _dataset(tmp_path / "two", [_binary((0, 1))])
    status, report = _doctor(ok)
    assert status == 0 and "binary 0/1 masks: 0 = background, 1 = object" in report
    wrong = _dataset(tmp_path / "three", [_binary((0, 1))], classes="a\nb\nc\n")
    status, report = _doctor(wrong)
    assert "warning: all masks hold only 0 and 1 (e.g. " in report and "the class list has 3 classes" in report
    one = _dataset(tmp_path / "one", [_binary((0, 1))], classes="object\n")
    status, report = _doctor(one)
    assert status == 1 and "add a first line 'background' to classes.txt" in report


def test_colour_masks_are_named_with_the_palette_found(tmp_path):
    rgb = np.zeros((24, 32, 3), np.uint8)
    rgb[:12] = (220, 20, 60)
    root = tmp_path / "d"
    _dataset(root, [rgb])
    status, report = _doctor(root)
    assert status == 1 and "masks/0.png is colour-coded (RGB)" in report
    assert "colours found: (0, 0, 0) 50.0%, (220, 20, 60) 50.0%" in report
    status, err = _convert(root, tmp_path / "out")
    assert status == 1 and "masks/0.png is colour-coded" in err and "(220, 20, 60)" in err
    # With every class's colour in classes.txt the colours are mapped to ids.
    (root / "classes.txt").write_text("background 0 0 0\nperson 220 20 60\n")
    assert _doctor(root)[0] == 0
    assert _convert(root, tmp_path / "out")[0] == 0
    np.testing.assert_array_equal(_labels(tmp_path / "out")["0"], (rgb[..., 0] == 220).astype(np.uint8))


def test_one_based_ids_get_the_exact_remap(tmp_path):
    mask = np.zeros((24, 32), np.uint8)
    mask[:8], mask[8:16] = 1, 2  # 0 = unlabelled, 1..2 = the two classes
    root = _dataset(tmp_path / "d", [mask])
    status, report = _doctor(root)
    assert status == 1 and "hold ids outside the class list (0..1, 255 = ignore), e.g. " in report
    assert "masks/0.png: ids 2" in report
    assert "ids look 1-based (0 = unlabelled, 1..2 = classes): convert with --remap remap.txt holding the lines " \
           "'0 255', '1 0', '2 1'" in report
    status, err = _convert(root, tmp_path / "out")
    assert status == 1 and "label " in err and "masks/0.png has ids [2] outside" in err and "'0 255'" in err
    (tmp_path / "remap.txt").write_text("0 255\n1 0\n2 1\n")
    assert _doctor(root, "--remap", str(tmp_path / "remap.txt"))[0] == 0
    # --force: ids outside the class list become ignore.
    assert _convert(root, tmp_path / "forced", "--force")[0] == 0
    expected = mask.copy()
    expected[mask == 2] = 255
    np.testing.assert_array_equal(_labels(tmp_path / "forced")["0"], expected)


def test_size_mismatch_and_truncated_files_are_named(tmp_path):
    root = _dataset(tmp_path / "d", [_binary((0, 1)), _binary((0, 1))])
    Image.fromarray(np.zeros((20, 32), np.uint8)).save(root / "masks" / "1.png")
    status, report = _doctor(root)
    assert status == 1 and "size mismatch: image " in report and "images/1.png is 32x24 (WxH) but label " in report
    data = (root / "images" / "0.png").read_bytes()
    (root / "images" / "0.png").write_bytes(data[: len(data) // 2])
    status, report = _doctor(root)
    assert "cannot read image " in report and "images/0.png: truncated" in report
    status, err = _convert(root, tmp_path / "out")
    assert status == 1 and "images/0.png: truncated" in err and "--skip-bad" in err


def test_16_bit_images_duplicates_and_absent_classes_are_reported(tmp_path):
    same = RNG.integers(0, 256, (24, 32, 3), dtype=np.uint8)
    root = _dataset(tmp_path / "d", [_binary((0, 1))] * 2, classes="background\nobject\nsky\n", image=same)
    Image.fromarray(np.full((24, 32), 2000, np.uint16)).save(root / "images" / "2.png")  # 12-bit data, dark
    Image.fromarray(_binary((0, 1))).save(root / "masks" / "2.png")
    status, report = _doctor(root)
    assert status == 0
    assert "warning: 1 image(s) are 16-bit (e.g. " in report and "stored as 8-bit by value // 256" in report
    assert "come out dark (e.g. " in report and "brightest 7/255" in report
    assert "warning: 2 images are byte-identical copies in 1 group(s), e.g. " in report
    assert "images/0.png = " in report and "images/1.png" in report
    assert "warning: 1 of 3 classes never appear in the masks: sky" in report


def test_class_weights_are_median_frequency_balancing():
    checker = check.DatasetChecker(3, ["a", "b", "c"])
    masks = [np.array([[0, 0, 0, 1]], np.uint8), np.array([[0, 2, 2, 255]], np.uint8)]
    for k, mask in enumerate(masks):
        checker.add(f"{k}.png", mask_path=f"{k}.png", raw_mask=mask, label=mask)
    # freq_c = pixels of c / labelled pixels of the images containing c (NumPy reference by hand):
    # a: 4 / (4 + 3), b: 1 / 4, c: 2 / 3; median 4/7.
    freq = np.array([4 / 7, 1 / 4, 2 / 3])
    np.testing.assert_allclose(checker.class_weights(), np.round(np.median(freq) / freq, 4))
    np.testing.assert_allclose(checker.frequencies(), [4 / 7, 1 / 7, 2 / 7])


def test_converted_info_holds_the_suggested_weights(tmp_path):
    root = _dataset(tmp_path / "d", [_binary((0, 1))])
    assert _convert(root, tmp_path / "out")[0] == 0
    info = json.loads((tmp_path / "out" / "train-info.json").read_text())
    fg = 8 * 12 / (24 * 32)
    np.testing.assert_allclose(info["suggested_class_weights"],
                               np.round(np.median([1 - fg, fg]) / np.array([1 - fg, fg]), 4))
    assert info["class_weight_formula"].startswith("median frequency balancing")


def test_records_doctor_names_damaged_shards_and_bad_labels(tmp_path):
    from ocr_tf.data import records

    out = tmp_path / "records"
    with records.ShardedWriter(str(out), "train", 2, num_classes=2) as writer:
        for k in range(4):
            label = _binary((0, 1)) if k != 3 else _binary((0, 7))  # id 7: not a class
            writer.add(RNG.integers(0, 256, (24, 32, 3), dtype=np.uint8), label, f"img{k}")
    status, report = _doctor(f"{out}/train-*.tfrecord")
    assert status == 1 and "4 image(s) checked" in report
    assert "record 1 of " in report and "train-00001-of-00002.tfrecord (img3): ids 7" in report
    shard = out / "train-00000-of-00002.tfrecord"
    shard.write_bytes(shard.read_bytes()[:-20])  # cut short: the info file's size says so
    status, report = _doctor(f"{out}/train-*.tfrecord")
    assert f"error: shard {shard} is " in report and "truncated or modified" in report
    (out / "junk-00000-of-00001.tfrecord").write_bytes(RNG.bytes(500))
    status, report = _doctor(out / "junk-00000-of-00001.tfrecord", "--num-classes", "2")
    assert status == 1 and "junk-00000-of-00001.tfrecord is damaged at record 0" in report
    assert "corrupted record at 0" in report


def test_doctor_cli_on_a_folder_needs_no_tensorflow(tmp_path):
    root = _dataset(tmp_path / "d", [_binary()])
    # As a user runs it (`python -m`, where `import ocr_tf` skips registering its Keras classes).
    result = subprocess.run([sys.executable, "-X", "importtime", "-m", "ocr_tf.data.check", str(root), "--no-progress"],
                            capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 1, result.stderr[-3000:]
    imported = {line.split("|")[-1].strip() for line in result.stderr.splitlines() if "|" in line}
    assert "hold only 0 and 255" in result.stdout and "tensorflow" not in imported
    missing = subprocess.run([sys.executable, "-m", "ocr_tf.data.check", str(tmp_path / "nope*.tfrecord")],
                             capture_output=True, text=True, cwd=ROOT)
    assert missing.returncode == 2 and "error: no TFRecord files match" in missing.stderr
    assert "Traceback" not in missing.stderr


@pytest.mark.parametrize("ids, classes, expected", [
    ({0, 255}, 2, "'255 1'"),
    ({0, 1, 2, 3}, 3, "'0 255', '1 0', '2 1', '3 2'"),
    (set(range(8)), 7, "'0 255', '1 0', '2 1', ... '7 6'"),
    ({0, 7}, 3, ""),
])
def test_remap_hints(ids, classes, expected):
    hint = check.remap_hint(ids, classes)
    assert (expected in hint) if expected else hint == ""
