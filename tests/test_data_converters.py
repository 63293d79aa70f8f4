"""Converters on tiny trees in each dataset's real layout: counts, label mapping, exact pixels."""

import glob
import json
import os

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from ocr_tf.data import convert, records
from ocr_tf.data.datasets import get_dataset_info

RNG = np.random.default_rng(0)


def _save(path, array, **kw):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(array).save(path, **kw)


def _image(h=12, w=16):
    return RNG.integers(0, 256, (h, w, 3), dtype=np.uint8)


def _read(out, split, num_classes):
    """{source_id: (image, label, stored image bytes)} of a converted split."""
    result = {}
    for path in sorted(glob.glob(os.path.join(out, f"{split}-*.tfrecord"))):
        for serialized in tf.data.TFRecordDataset(path):
            image, label, sid = records.decode_record(serialized, num_classes)
            raw = records.parse_record(serialized)[records.IMAGE_KEY].numpy()
            result[sid.numpy().decode()] = (image.numpy(), label.numpy(), raw)
    return result


def _run(*args):
    assert convert.main([*args, "--no-progress"]) == 0


def _check_info(out, split, num_classes, labels):
    with open(os.path.join(out, f"{split}-info.json")) as f:
        info = json.load(f)
    counts = np.bincount(np.concatenate([l.ravel() for l in labels]), minlength=256)
    assert info["class_pixel_counts"] == counts[:num_classes].tolist()
    np.testing.assert_allclose(info["class_frequencies"], counts[:num_classes] / counts[:num_classes].sum())
    assert info["ignore_pixels"] == counts[255]
    assert sum(s["num_records"] for s in info["shards"]) == info["num_records"] == len(labels)
    return info


def test_cityscapes_trainids_match_cityscapesscripts(tmp_path):
    from cityscapesscripts.helpers.labels import labels as cs_labels

    from ocr_tf.data.datasets import cityscapes

    # The table computed independently from cityscapesscripts' definitions.
    table = np.full(256, 255, np.uint8)
    for l in cs_labels:
        if 0 <= l.id < 256 and 0 <= l.trainId < 255:
            table[l.id] = l.trainId
    np.testing.assert_array_equal(cityscapes.label_id_to_train_id, table)
    assert table[7] == 0 and table[26] == 13 and table[33] == 18 and table[0] == 255  # road, car, bicycle
    for train_id in range(19):
        assert cityscapes.label_id_to_train_id[cityscapes.train_id_to_label_id[train_id]] == train_id
    info = get_dataset_info("cityscapes")
    assert info.class_names[13] == "car" and info.palette[0] == (128, 64, 128)

    root, out = tmp_path / "cityscapes", tmp_path / "out"
    sources = {}
    for split, cities in (("train", ("aachen", "bochum")), ("val", ("lindau",)), ("test", ("berlin",))):
        for city in cities:
            for k in range(2):
                stem = f"{city}_{k:06d}_000019"
                image = _image()
                label_ids = RNG.integers(0, 34, image.shape[:2], dtype=np.uint8)
                _save(f"{root}/leftImg8bit/{split}/{city}/{stem}_leftImg8bit.png", image)
                _save(f"{root}/gtFine/{split}/{city}/{stem}_gtFine_labelIds.png", label_ids)
                sources[stem] = (split, image, label_ids)
    _run("cityscapes", "--root", str(root), "--out", str(out), "--splits", "train", "val", "test",
         "--records-per-shard", "3")
    assert sorted(os.path.basename(p) for p in glob.glob(f"{out}/train-*.tfrecord")) == [
        "train-00000-of-00002.tfrecord", "train-00001-of-00002.tfrecord"]
    for split, count in (("train", 4), ("val", 2), ("test", 2)):
        got = _read(out, split, 19)
        assert len(got) == count
        for stem, (image, label, _) in got.items():
            src_split, src_image, src_ids = sources[stem]
            assert src_split == split
            np.testing.assert_array_equal(image, src_image)
            expected = table[src_ids] if split != "test" else np.full(src_ids.shape, 255, np.uint8)
            np.testing.assert_array_equal(label, expected)
        if split != "test":
            _check_info(out, split, 19, [table[sources[s][2]] for s in got])


def test_ade20k_jpeg_bytes_kept_and_zero_ignored(tmp_path):
    root, out = tmp_path / "data", tmp_path / "out"
    base = root / "ADEChallengeData2016"
    files = {}
    for split, folder in (("train", "training"), ("val", "validation")):
        for k in range(3):
            stem = f"ADE_{folder[:5]}_{k:08d}"
            _save(f"{base}/images/{folder}/{stem}.jpg", _image(), quality=90)
            label = RNG.integers(0, 151, (12, 16), dtype=np.uint8)
            _save(f"{base}/annotations/{folder}/{stem}.png", label)
            files[stem] = (f"{base}/images/{folder}/{stem}.jpg", label)
    _run("ade20k", "--root", str(root), "--out", str(out))
    for split in ("train", "val"):
        got = _read(out, split, 150)
        assert len(got) == 3
        for stem, (image, label, raw) in got.items():
            path, src = files[stem]
            with open(path, "rb") as f:
                assert raw == f.read()  # stored byte for byte: no re-encoding loss
            np.testing.assert_array_equal(image, tf.io.decode_jpeg(raw, channels=3).numpy())
            expected = np.where(src == 0, 255, src.astype(np.int32) - 1).astype(np.uint8)
            np.testing.assert_array_equal(label, expected)


def test_lip_coco_stuff_pascal_context_mappings(tmp_path):
    # LIP: ids as they are.
    lip_root = tmp_path / "lip"
    lip_label = RNG.integers(0, 20, (12, 16), dtype=np.uint8)
    _save(f"{lip_root}/TrainVal_images/train_images/100_1.jpg", _image())
    _save(f"{lip_root}/TrainVal_parsing_annotations/train_segmentations/100_1.png", lip_label)
    _run("lip", "--root", str(lip_root), "--out", str(tmp_path / "lip_out"), "--splits", "train")
    np.testing.assert_array_equal(_read(tmp_path / "lip_out", "train", 20)["100_1"][1], lip_label)
    assert get_dataset_info("lip").flip_pairs == ((14, 15), (16, 17), (18, 19))
    assert get_dataset_info("lip").class_names[14:16] == ("left-arm", "right-arm")

    # COCO-Stuff 164k: 0..181 with 11 unused ids -> 171 train ids; 255 stays ignore.
    coco_root = tmp_path / "coco"
    coco_label = np.array([[0, 10, 11, 12, 89, 90], [91, 181, 255, 25, 24, 26]], np.uint8)
    _save(f"{coco_root}/images/val2017/000000000139.jpg", _image(2, 6))
    _save(f"{coco_root}/annotations/val2017/000000000139.png", coco_label)
    _run("coco_stuff", "--root", str(coco_root), "--out", str(tmp_path / "coco_out"), "--splits", "val")
    got = _read(tmp_path / "coco_out", "val", 171)["000000000139"][1]
    # 11 -> 12 is the first gap; 89 -> 79 ("toothbrush", last thing); 91 -> 80 ("banner"); 181 -> 170.
    np.testing.assert_array_equal(got, [[0, 10, 255, 11, 79, 255], [80, 170, 255, 255, 23, 24]])
    names = get_dataset_info("coco_stuff").class_names
    assert (names[79], names[80], names[170], len(names)) == ("toothbrush", "banner", "wood", 171)

    # PASCAL-Context 59: 0 (background) -> ignore, 1..59 -> 0..58; split from the list file.
    voc = tmp_path / "pc" / "VOCdevkit" / "VOC2010"
    pc_label = np.array([[0, 1, 59], [15, 2, 0]], np.uint8)
    for stem in ("2008_000002", "2008_000003"):
        _save(f"{voc}/JPEGImages/{stem}.jpg", _image(2, 3))
        _save(f"{voc}/SegmentationClassContext/{stem}.png", pc_label)
    os.makedirs(voc / "ImageSets" / "SegmentationContext")
    (voc / "ImageSets" / "SegmentationContext" / "val.txt").write_text("2008_000003\n")
    _run("pascal_context", "--root", str(tmp_path / "pc"), "--out", str(tmp_path / "pc_out"), "--splits", "val")
    got = _read(tmp_path / "pc_out", "val", 59)
    assert list(got) == ["2008_000003"]
    np.testing.assert_array_equal(got["2008_000003"][1], [[255, 0, 58], [14, 1, 255]])
    assert get_dataset_info("pascal_context").class_names[14] == "person"


def test_folder_with_remap_palette_masks_and_class_file(tmp_path):
    root, out = tmp_path / "mine", tmp_path / "out"
    os.makedirs(root)
    (root / "classes.txt").write_text("# my classes\nsoil\nweed 255 0 0\ncrop plant\n")
    (root / "remap.txt").write_text("0 255\n1 0\n2 1\n3 2\n")
    mask = np.array([[0, 1, 2, 3], [3, 2, 1, 0]], np.uint8)
    palette_mask = Image.fromarray(mask, mode="L").convert("P")  # palette PNGs hold ids too
    for split in ("train", "val"):
        _save(f"{root}/images/{split}/a.png", _image(2, 4))
        os.makedirs(root / "masks" / split, exist_ok=True)
        palette_mask.save(root / "masks" / split / "a.png")
    _run("folder", "--root", str(root), "--out", str(out), "--remap", str(root / "remap.txt"))
    for split in ("train", "val"):
        np.testing.assert_array_equal(_read(out, split, 3)["a"][1], [[255, 0, 1, 2], [2, 1, 0, 255]])
    # Converting again into the same folder with another shard count: refused unless --overwrite,
    # which leaves only the new shards (a glob must not read old and new together).
    args = ["folder", "--root", str(root), "--out", str(out), "--remap", str(root / "remap.txt"),
            "--splits", "train", "--shards", "1", "--no-progress"]
    assert convert.main(args) == 1
    second = _image(2, 4)
    _save(f"{root}/images/train/b.png", second)
    palette_mask.save(root / "masks" / "train" / "b.png")
    assert convert.main(args[:-2] + ["2", "--overwrite", "--no-progress"]) == 0
    assert sorted(os.path.basename(p) for p in glob.glob(f"{out}/train-*")) == [
        "train-00000-of-00002.tfrecord", "train-00001-of-00002.tfrecord", "train-info.json"]
    assert sorted(_read(out, "train", 3)) == ["a", "b"]

    from ocr_tf.data.datasets import DatasetInfo

    info = DatasetInfo.from_class_file(root / "classes.txt")
    assert info.class_names == ("soil", "weed", "crop plant") and info.palette[1] == (255, 0, 0)


def test_bad_pairs_error_or_skip_and_no_partial_shards(tmp_path):
    root, out = tmp_path / "mine", tmp_path / "out"
    os.makedirs(root)
    (root / "classes.txt").write_text("a\nb\n")
    for k in range(4):
        _save(f"{root}/images/{k}.png", _image(4, 5))
        _save(f"{root}/masks/{k}.png", RNG.integers(0, 2, (4, 5), dtype=np.uint8))
    _save(f"{root}/images/5.png", _image(4, 5))
    _save(f"{root}/masks/5.png", np.zeros((4, 6), np.uint8))  # size mismatch
    _save(f"{root}/images/6.png", _image(4, 5))
    _save(f"{root}/masks/6.png", np.full((4, 5), 7, np.uint8))  # id 7 is not a class
    _save(f"{root}/masks/7.png", np.zeros((4, 5), np.uint8))
    (root / "images" / "7.png").write_bytes(b"not an image")

    with pytest.raises(convert.ConversionError, match=r"size mismatch: image .*5\.png is 5x4 .* label .*5\.png is 6x4"):
        convert.convert_split(convert.get_module("folder"), convert.get_module("folder").load_info(str(root)),
                              {0: 0, 1: 1, 255: 255}, str(root), str(out), "train", progress=False)
    # The aborted conversion leaves nothing that looks complete.
    assert os.listdir(out) == []
    assert convert.main(["folder", "--root", str(root), "--out", str(out), "--no-progress"]) == 1

    _run("folder", "--root", str(root), "--out", str(out), "--skip-bad")
    with open(out / "train-info.json") as f:
        info = json.load(f)
    assert info["num_records"] == 4 and sorted(_read(out, "train", 2)) == ["0", "1", "2", "3"]
    errors = {s["source_id"]: s["error"] for s in info["skipped"]}
    assert sorted(errors) == ["5", "6", "7"]
    assert "ids [7] outside" in errors["6"] and "cannot read image" in errors["7"]
