"""ONNX export of a segmenter, for ONNX Runtime, TensorRT and OpenVINO, and a runner for it.

The ONNX model is the same inference graph as the SavedModel and TFLite exports
(`ocr_tf.export.make_inference_fn`): uint8 RGB images [batch, height, width, 3] in, any batch,
height and width (or a fixed [1, H, W, 3] with `input_size`, for dilated backbones), normalisation inside, the model, the logits resized to the input size (bilinear,
align_corners as trained) and argmax -> "labels" int32 [batch, height, width]; with
`with_logits`, also "logits" float32 [batch, h, w, K] at feature resolution.

Route, chosen by measurement (BENCHMARKS.md, "ONNX export"): tf2onnx's `convert.from_function`
on the inference function traced over a `keras.export.ExportArchive`. Keras' own
`model.export(format="onnx")` runs the very same converter on the TensorFlow backend (it calls
`tf2onnx.convert.from_function` on the model's call), so both give the same ONNX operators, the
same Resize node and the same labels; but Keras' route exports only a model's `call`, so the
uint8-in/labels-out graph would have to be wrapped in a throwaway `keras.Model`, it monkeypatches
tf2onnx for NumPy 2 (which tf2onnx 1.17 no longer needs), picks its own opset, and writes the file
itself (no in-memory model to name the dynamic axes, add metadata and write atomically). Calling
tf2onnx directly converted the phone model in less time too (measured numbers in BENCHMARKS.md).

The align_corners resize (`tf.compat.v1.image.resize_bilinear(align_corners=True)`) converts to
the standard ONNX `Resize` (mode "linear", coordinate_transformation_mode "align_corners"); every
node must be in the standard ONNX domain (checked here, as `check_builtin_only` does for TFLite),
so the file runs on any ONNX runtime without custom-op libraries.
"""

import json
import os

import numpy as np

from ocr_tf.files import write_atomic

# Opset 17: ONNX Runtime, TensorRT >= 8.6 and OpenVINO >= 2022.3 all read it; Resize with
# coordinate_transformation_mode "align_corners" exists since opset 11.
DEFAULT_OPSET = 17
STANDARD_DOMAINS = ("", "ai.onnx")
_MISSING = "ONNX export needs onnx and tf2onnx (pip install 'ocr_tf[onnx]'); {err}"


def _require(module):
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise ImportError(_MISSING.format(err=err)) from err


def labels_path(onnx_path):
    """The labels file written beside an .onnx: model.onnx -> model.labels.txt."""
    root, _ = os.path.splitext(str(onnx_path))
    return root + ".labels.txt"


def _load(model):
    onnx = _require("onnx")
    if isinstance(model, (str, os.PathLike)):
        return onnx.load(str(model))
    return model


def resize_nodes(model):
    """The Resize nodes of an ONNX model (proto or path) as dicts of their attributes
    (mode, coordinate_transformation_mode, ...; strings decoded)."""
    onnx = _require("onnx")
    nodes = []
    for node in _load(model).graph.node:
        if node.op_type == "Resize":
            attributes = {}
            for attribute in node.attribute:
                value = onnx.helper.get_attribute_value(attribute)
                attributes[attribute.name] = value.decode() if isinstance(value, bytes) else value
            nodes.append(attributes)
    return nodes


def check_standard_ops(model):
    """Raise ValueError naming any node outside the standard ONNX domain; return the op types."""
    graph = _load(model).graph
    custom = sorted({f"{node.domain}:{node.op_type}" for node in graph.node if node.domain not in STANDARD_DOMAINS})
    if custom:
        raise ValueError(f"ONNX model uses non-standard ops {custom}; plain ONNX runtimes would not run it.")
    return sorted({node.op_type for node in graph.node})


def _name_dynamic_axes(model_proto, with_logits):
    """Give the dynamic axes readable shared names (tf2onnx writes unk__N), so that tools that
    ask for shape ranges (TensorRT profiles, OpenVINO reshape) show batch/height/width and the
    labels' axes are visibly the input's."""
    names = {
        "images": ("batch", "height", "width", None),
        "labels": ("batch", "height", "width"),
        "logits": ("batch", "feature_height", "feature_width", None),
    }
    for value in list(model_proto.graph.input) + list(model_proto.graph.output):
        wanted = names.get(value.name)
        if wanted is None:
            continue
        for dim, name in zip(value.type.tensor_type.shape.dim, wanted):
            if name is not None and not dim.HasField("dim_value"):
                dim.dim_param = name


def _metadata(model, class_names, align_corners):
    """What a user of the ONNX file needs to know, as ONNX metadata_props (strings)."""
    from ocr_tf.preprocessing import IMAGENET_MEAN, IMAGENET_STD

    meta = {
        "producer": "ocr_tf",
        "input": "images: uint8 RGB [batch, height, width, 3], normalisation inside",
        "labels": "int32 [batch, height, width]: class id per pixel",
        "align_corners": json.dumps(bool(align_corners)),
        "mean": json.dumps(list(getattr(model, "mean", None) or IMAGENET_MEAN)),
        "std": json.dumps(list(getattr(model, "std", None) or IMAGENET_STD)),
    }
    if class_names is not None:
        meta["class_names"] = json.dumps(list(class_names))
    for key in ("model_name", "dataset"):
        value = getattr(model, key, None)
        if value is not None:
            meta[key] = str(value)
    provenance = getattr(model, "provenance", None)
    if provenance:
        meta["provenance"] = json.dumps(provenance, default=str)
    return meta


def export_onnx(
    model, out_path, *, with_logits=False, align_corners=None, class_names=None, opset=DEFAULT_OPSET, input_size=None
):
    """Convert `model` to an ONNX file at `out_path` (written atomically) and return the path.

    Args:
        model: keras.Model (or `ocr_tf.Segmenter`): normalised float NHWC -> {"logits", ...}.
        out_path: the .onnx file to write; its folder is created.
        with_logits: also output "logits" float32 [batch, h, w, K] at feature resolution.
        align_corners: how to resize the logits (default: a Segmenter's own, else True).
        class_names: optional list, len == number of classes; written one per line to
            `labels_path(out_path)` and into the file's metadata ("class_names", JSON).
        opset: ONNX opset to target (default `DEFAULT_OPSET`).
        input_size: None (default) for dynamic batch, height and width, or (H, W) for a fixed
            input [1, H, W, 3] as TFLite's. Dilated convs (MobileNetV2 and ResNet at output stride
            8) reach tf2onnx as SpaceToBatchND -> Conv -> BatchToSpaceND; only with static shapes
            does tf2onnx fold them into one dilated Conv, otherwise they stay SpaceToDepth /
            DepthToSpace / Transpose chains that ran ONNX Runtime ~9x slower on MobileNetV2-0.35 +
            OCR at 96x128 (BENCHMARKS.md, issue 16). HRNet has no dilated convs.

    Input "images" uint8 [batch, height, width, 3] with dynamic batch, height and width; output
    "labels" int32 [batch, height, width] (+ "logits"). Only standard ONNX ops (checked).
    """
    import keras
    import tensorflow as tf

    from ocr_tf import export

    onnx = _require("onnx")
    tf2onnx = _require("tf2onnx")
    class_names = export._check_class_names(model, class_names)

    align_corners = export._align_corners(model, align_corners)  # the caller's, a Segmenter's, else True
    infer = export.make_inference_fn(model, align_corners=align_corners, with_logits=with_logits)
    if isinstance(input_size, str):
        input_size = export.parse_input_size(input_size)
    shape = [None, None, None, 3] if input_size is None else [1, *(int(v) for v in input_size), 3]
    signature = [tf.TensorSpec(shape, tf.uint8, name="images")]
    # The archive tracks the model's variables, so the traced function reads them as resources
    # that tf2onnx freezes into initializers (what Keras' own ONNX export does too).
    archive = keras.export.ExportArchive()
    archive.track(model)
    function = archive.add_endpoint("serving_default", infer, input_signature=signature)
    model_proto, _ = tf2onnx.convert.from_function(function, input_signature=signature, opset=int(opset))
    _name_dynamic_axes(model_proto, with_logits)
    for key, value in _metadata(model, class_names, align_corners).items():
        entry = model_proto.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.checker.check_model(model_proto)
    check_standard_ops(model_proto)

    os.makedirs(os.path.dirname(os.path.abspath(out_path)), exist_ok=True)
    write_atomic(out_path, model_proto.SerializeToString())
    if class_names is not None:
        export._write_labels(labels_path(out_path), class_names)
    return str(out_path)


def read_metadata(path):
    """The metadata_props of an ONNX file as a dict of strings."""
    return {entry.key: entry.value for entry in _load(path).metadata_props}


class ONNXSegmenter:
    """A segmenter exported by `export_onnx`, run with ONNX Runtime (CPU unless `providers`).

    `__call__(images)`: uint8 RGB (H, W, 3) or (B, H, W, 3), any size -> {"labels": int32
    ([B,] H, W), optional "logits" float32 ([B,] h, w, K)}, the batch axis dropped for a single image.
    """

    def __init__(self, model_path, providers=("CPUExecutionProvider",), num_threads=None):
        ort = _require("onnxruntime")
        options = ort.SessionOptions()
        if num_threads:
            options.intra_op_num_threads = int(num_threads)
        self.model_path = str(model_path)
        self.session = ort.InferenceSession(self.model_path, sess_options=options, providers=list(providers))
        (self.input,) = self.session.get_inputs()
        self.output_names = [output.name for output in self.session.get_outputs()]

    @property
    def fixed_input_size(self):
        """(H, W) of a model exported with a fixed input_size, None for any size."""
        height, width = self.input.shape[1:3]
        return (height, width) if isinstance(height, int) and isinstance(width, int) else None

    def __call__(self, images):
        images = np.asarray(images)
        single = images.ndim == 3
        if single:
            images = images[None]
        if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
            raise ValueError(
                f"{self.model_path}: expected uint8 images of shape (H, W, 3) or (B, H, W, 3), "
                f"got shape {images.shape} and dtype {images.dtype}."
            )
        outputs = self.session.run(self.output_names, {self.input.name: images})
        return {name: (value[0] if single else value) for name, value in zip(self.output_names, outputs)}
