"""ONNX export run with ONNX Runtime: labels and logits equal to the Keras model on the demo
validation images, dynamic batch/height/width, the align_corners resize as a standard ONNX Resize
(read from the graph), standard ops only, metadata and labels file, and the CLI with --verify."""

import json
import os
import subprocess
import sys

import numpy as np
import onnx  # the [onnx] extra, part of [test]: a missing install fails here rather than skipping
import pytest
from ocr_reference import resize_bilinear as np_resize_bilinear
from test_export import CLASS_NAMES, ENV, NUM_CLASSES, assert_labels_match, reference, tiny_segmenter

from ocr_tf import export_verify
from ocr_tf.data.datasets.demo import prepare_demo
from ocr_tf.onnx_export import (
    ONNXSegmenter,
    check_standard_ops,
    export_onnx,
    labels_path,
    read_metadata,
    resize_nodes,
)
from ocr_tf.preprocessing import normalize_image


@pytest.fixture(scope="module")
def model():
    return tiny_segmenter()


@pytest.fixture(scope="module")
def onnx_with_logits(model, tmp_path_factory):
    path = tmp_path_factory.mktemp("onnx") / "tiny_ocr.onnx"
    assert export_onnx(model, str(path), with_logits=True, class_names=CLASS_NAMES) == str(path)
    return str(path)


@pytest.fixture(scope="module")
def demo_val_images():
    images, _ = export_verify.verification_images(prepare_demo()["val"], 16)
    return np.stack(images)


def test_labels_and_logits_agree_with_keras_on_demo_images(model, onnx_with_logits, demo_val_images):
    images = demo_val_images
    out = ONNXSegmenter(onnx_with_logits)(images)
    ref_labels, _, margin = reference(model, images)
    assert out["labels"].shape == images.shape[:3] and out["labels"].dtype == np.int32
    assert (out["labels"] == ref_labels).mean() >= 0.999
    assert_labels_match(out["labels"], ref_labels, margin)
    # Non-degenerate on these images: several classes, so a label mix-up would show.
    assert (np.bincount(ref_labels.ravel(), minlength=NUM_CLASSES) > 0.01 * ref_labels.size).sum() >= 3
    ref_logits = model(normalize_image(images), training=False)["logits"].numpy()
    assert out["logits"].shape == ref_logits.shape == (16, 24, 32, NUM_CLASSES)
    np.testing.assert_allclose(out["logits"], ref_logits, atol=1e-4 * np.ptp(ref_logits))


def test_any_batch_height_and_width(model, onnx_with_logits):
    segmenter = ONNXSegmenter(onnx_with_logits)
    rng = np.random.default_rng(7)
    for shape in [(2, 37, 50, 3), (1, 24, 64, 3)]:  # odd and even sizes, batch 2 and 1
        images = rng.integers(0, 256, shape, dtype=np.uint8)
        labels = segmenter(images)["labels"]
        ref_labels, _, margin = reference(model, images)
        assert labels.shape == shape[:3]
        assert_labels_match(labels, ref_labels, margin)
    single = segmenter(images[0])  # (H, W, 3) in, batch axis dropped
    assert single["labels"].shape == shape[1:3]
    with pytest.raises(ValueError, match=r"expected uint8 images .* got shape \(2, 8, 8, 3\) and dtype float32"):
        segmenter(np.zeros((2, 8, 8, 3), np.float32))


def test_graph_has_standard_ops_an_align_corners_resize_and_named_dynamic_axes(onnx_with_logits):
    proto = onnx.load(onnx_with_logits)
    ops = check_standard_ops(proto)
    assert {"Conv", "MatMul", "Softmax", "Resize", "ArgMax"} <= set(ops)
    # The logits' resize to the input size: a standard Resize, linear, align_corners coordinates.
    resizes = resize_nodes(proto)
    assert resizes and all(
        node["mode"] == "linear" and node["coordinate_transformation_mode"] == "align_corners" for node in resizes
    )
    (images,) = proto.graph.input
    tensor_type = onnx.TensorProto
    assert images.name == "images" and images.type.tensor_type.elem_type == tensor_type.UINT8
    dims = [d.dim_param or d.dim_value for d in images.type.tensor_type.shape.dim]
    assert dims == ["batch", "height", "width", 3]
    outputs = {o.name: o.type.tensor_type for o in proto.graph.output}
    assert outputs["labels"].elem_type == tensor_type.INT32
    assert [d.dim_param for d in outputs["labels"].shape.dim] == ["batch", "height", "width"]
    assert outputs["logits"].elem_type == tensor_type.FLOAT and outputs["logits"].shape.dim[3].dim_value == NUM_CLASSES
    meta = read_metadata(onnx_with_logits)
    assert json.loads(meta["class_names"]) == CLASS_NAMES and json.loads(meta["align_corners"]) is True
    assert json.loads(meta["mean"]) == pytest.approx([0.485, 0.456, 0.406])
    with open(labels_path(onnx_with_logits)) as f:
        assert f.read().splitlines() == CLASS_NAMES


def test_align_corners_false_converts_to_half_pixel(model, tmp_path):
    path = export_onnx(model, str(tmp_path / "half_pixel.onnx"), align_corners=False)
    modes = [node["coordinate_transformation_mode"] for node in resize_nodes(path)]
    assert modes == ["half_pixel"]  # the tiny model's only resize is the export's own
    segmenter = ONNXSegmenter(path)
    assert segmenter.output_names == ["labels"]  # no logits unless asked for
    images = np.random.default_rng(3).integers(0, 256, (1, 29, 41, 3), dtype=np.uint8)
    logits = model(normalize_image(images), training=False)["logits"].numpy().astype(np.float64)
    up = np_resize_bilinear(logits, images.shape[1:3], align_corners=False)
    top2 = np.sort(up, axis=-1)[..., -2:]
    assert_labels_match(segmenter(images)["labels"], up.argmax(-1), top2[..., 1] - top2[..., 0])
    assert os.listdir(tmp_path) == ["half_pixel.onnx"]  # no temporary file left, no labels without names


def test_check_standard_ops_refuses_custom_domains():
    helper = onnx.helper
    node = helper.make_node("Inverse", ["x"], ["y"], domain="com.microsoft")
    graph = helper.make_graph(
        [node], "g", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [2, 2])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [2, 2])],
    )
    with pytest.raises(ValueError, match=r"non-standard ops \['com.microsoft:Inverse'\]"):
        check_standard_ops(helper.make_model(graph))


@pytest.mark.slow  # a fresh process: TensorFlow start, conversion and verification (~55 s on a busy 2-core box)
def test_cli_exports_onnx_and_verifies_it(model, tmp_path):
    model.save(tmp_path / "tiny.keras")
    classes = tmp_path / "classes.txt"
    classes.write_text("\n".join(CLASS_NAMES) + "\n")
    out = tmp_path / "out" / "tiny.onnx"
    cmd = [sys.executable, "-m", "ocr_tf.export", "--weights", str(tmp_path / "tiny.keras"), "--format", "onnx",
           "--dataset", str(classes), "--output", str(out), "--verify", "--num-images", "4"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=ENV, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip().splitlines()[-1] == str(out)
    assert "verification PASSED" in proc.stderr
    with open(tmp_path / "out" / "tiny.verify.json") as f:
        report = json.load(f)
    assert report["status"] == "PASSED" and report["format"] == "onnx" and report["agreement"] >= 0.999
    assert report["data"]["num_images"] == 4 and report["class_names"] == CLASS_NAMES
    assert report["runtime"].startswith("onnxruntime ")
    assert report["max_logit_difference"] is None  # the labels-only export has no logits
    card = (tmp_path / "out" / "tiny.model_card.md").read_text()
    assert "**Export verification: PASSED**" in card and "| road |" in card


def test_fixed_input_size_folds_dilated_convs(tmp_path):
    """A dilated conv reaches tf2onnx as SpaceToBatchND -> Conv -> BatchToSpaceND: with any input
    size it stays a SpaceToDepth/DepthToSpace chain, with a fixed size it becomes one Conv."""
    import keras

    from ocr_tf.layers import ConvBN, OCRHead

    keras.utils.set_random_seed(2)
    inputs = keras.Input((None, None, 3))
    x = ConvBN(8, 3, strides=2)(inputs)
    x = keras.layers.Conv2D(8, 3, padding="same", dilation_rate=2)(x)
    model = keras.Model(inputs, OCRHead(3, mid_channels=8, key_channels=4)(x))
    dynamic = onnx.load(export_onnx(model, str(tmp_path / "dynamic.onnx")))
    fixed_path = export_onnx(model, str(tmp_path / "fixed.onnx"), input_size="32x48")
    fixed = onnx.load(fixed_path)
    assert "SpaceToDepth" in {n.op_type for n in dynamic.graph.node}
    assert "SpaceToDepth" not in {n.op_type for n in fixed.graph.node}
    dilated = [n for n in fixed.graph.node if n.op_type == "Conv"
               and any(a.name == "dilations" and list(a.ints) == [2, 2] for a in n.attribute)]
    assert len(dilated) == 1
    segmenter = ONNXSegmenter(fixed_path)
    assert segmenter.fixed_input_size == (32, 48) and ONNXSegmenter(str(tmp_path / "dynamic.onnx")).fixed_input_size is None
    images = np.random.default_rng(4).integers(0, 256, (1, 32, 48, 3), dtype=np.uint8)
    ref_labels, _, margin = reference(model, images)
    assert_labels_match(segmenter(images)["labels"], ref_labels, margin)
