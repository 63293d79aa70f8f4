"""Export a segmenter for TF Serving (SavedModel) and for phones (TFLite / LiteRT).

Both exports take uint8 RGB images and do everything else inside the graph: ImageNet
normalisation, the model, bilinear resize of the logits to the input size (align_corners as the
model was trained) and `tf.math.argmax` (which, unlike `keras.ops.argmax`, quantizes).

SavedModel (`export_saved_model`), TF Serving's layout `<export_dir>/<version>/`, signatures:
  serving_default  images uint8 [B, H, W, 3], any H, W -> labels int32 [B, H, W]
                   (+ probabilities float32 [B, H, W, K] if exported with_probabilities)
  serve_bytes      encoded_images string [B] (JPEG/PNG) -> the same outputs
  serve_examples   serialized tf.Examples string [B] (tf-models keys, `image/encoded`) -> same
The version directory is written under a temporary name and renamed when complete, so TF Serving
(which only loads numeric directories) never sees a half-written model.

TFLite (`export_tflite`): fixed input uint8 [1, H, W, 3] -> labels int32 [1, H, W] and logits
[1, h, w, K] at feature resolution; TFLite builtin ops only (checked from the flatbuffer); the
quantization names are tf-models': none | fp16 | dynamic | int8 | int8_full.

A Segmenter (`ocr_tf.Segmenter`) exports with its own normalisation, align_corners and class
names; its metadata (class names, palette, normalisation, provenance) goes to
`assets.extra/segmenter.json` beside `labels.txt`, which `python -m ocr_tf.predict` reads.

CLI: `python -m ocr_tf.export --help` (`ocr_tf.cli.export`).
"""

if __name__ == "__main__":  # `python -m ocr_tf.export`: parse arguments before TensorFlow loads
    from ocr_tf.cli.export import main

    raise SystemExit(main())

import glob
import os
import json
import re
import shutil
import tempfile

import keras
import numpy as np
import tensorflow as tf
from tqdm import tqdm

from ocr_tf.data import records
from ocr_tf.errors import MissingFileError, UserError
from ocr_tf.files import write_atomic
from ocr_tf.layers.common import resize_bilinear
from ocr_tf.layers.conv_grad import keras_conv_ops
from ocr_tf.preprocessing import normalize_image
from ocr_tf.tflite_utils import check_builtin_only
from ocr_tf.temporaries import remove_stale

QUANTIZE_MODES = ("none", "fp16", "dynamic", "int8", "int8_full")
# Ops that quantize="int8" (float fallback allowed) keeps in float32. BATCH_MATMUL of two int8
# activations runs on XNNPACK only when the second operand's zero point is 0, which post-ReLU
# activations never have (asymmetric, zero point -128); it then falls back to LiteRT's own int8
# kernel, ~10x slower than XNNPACK's float one. With the phone OCR model's three matmuls (gather,
# relation, context) in float, its int8 latency over the FCN model's drops from +22% to +6.5% at
# 512x1024, 1 thread (BENCHMARKS.md, issue 7).
INT8_FLOAT_OPS = ("BATCH_MATMUL",)


# ----------------------------------------------------------------------------------------------
# The inference graph shared by both exports


def _align_corners(model, align_corners):
    """The caller's choice, else the Segmenter's own, else True ([HR])."""
    return bool(getattr(model, "align_corners", True)) if align_corners is None else bool(align_corners)


def make_inference_fn(model, *, align_corners=None, with_probabilities=False, with_logits=False):
    """uint8 images [B, H, W, 3] -> {"labels": int32 [B, H, W], optional "probabilities"
    float32 [B, H, W, K] at the input size, optional "logits" at feature resolution}.

    A Segmenter normalises with its own mean/std and resizes with its own align_corners. For
    exports: the model is traced with the standard conv ops (`keras_conv_ops`)."""
    align_corners = _align_corners(model, align_corners)
    normalize = getattr(model, "normalize", normalize_image)

    def infer(images):
        with keras_conv_ops():  # the exported graph gets the standard conv op (other runtimes' kernels)
            logits = model(normalize(images), training=False)["logits"]
        logits = tf.cast(logits, tf.float32)
        upsampled = resize_bilinear(logits, tf.shape(images)[1:3], align_corners)
        outputs = {"labels": tf.math.argmax(upsampled, axis=-1, output_type=tf.int32)}
        if with_probabilities:
            outputs["probabilities"] = tf.nn.softmax(upsampled, axis=-1)
        if with_logits:
            outputs["logits"] = logits
        return outputs

    return infer


def decode_images(encoded, what="serve_bytes"):
    """string [B] of JPEG/PNG bytes -> uint8 [B, H, W, 3]; all images must share one size."""
    tf.debugging.assert_greater(tf.size(encoded), 0, message=f"{what}: got an empty batch of images.")
    first_shape = tf.shape(tf.io.decode_image(encoded[0], channels=3, expand_animations=False))

    def decode(data):
        image = tf.io.decode_image(data, channels=3, expand_animations=False)
        same = tf.debugging.assert_equal(
            tf.shape(image),
            first_shape,
            message=f"{what}: all images of one request must have the same height and width "
            "(the first image's shape, then this one's)",
        )
        with tf.control_dependencies([same]):
            return tf.identity(image)

    return tf.map_fn(decode, encoded, fn_output_signature=tf.TensorSpec([None, None, 3], tf.uint8))


def parse_example_images(serialized):
    """Serialized tf.Examples [B] with the tf-models keys -> uint8 images [B, H, W, 3]."""
    features = tf.io.parse_example(serialized, {records.IMAGE_KEY: records.FEATURES[records.IMAGE_KEY]})
    return decode_images(features[records.IMAGE_KEY], what="serve_examples")


def _num_classes(model):
    """Channels of the model's "logits" (from its symbolic output, or one small call for
    subclassed models, which have none)."""
    try:
        outputs = model.output
    except (AttributeError, ValueError):
        outputs = model(tf.zeros([1, 64, 64, 3]), training=False)
    if not isinstance(outputs, dict) or "logits" not in outputs or outputs["logits"].shape[-1] is None:
        raise ValueError("The model must output a dict with 'logits' of known channel count (num_classes).")
    return int(outputs["logits"].shape[-1])


def _check_class_names(model, class_names):
    if class_names is None:
        return None
    class_names = [str(name) for name in class_names]
    if len(class_names) != _num_classes(model):
        raise UserError(
            f"class_names has {len(class_names)} names but the model has {_num_classes(model)} classes."
        )
    bad = [name for name in class_names if "\n" in name]
    if bad:
        raise UserError(f"class names must not contain newlines: {bad}")
    return class_names


def _write_labels(path, class_names):
    """One class name per line, line i = class id i, written atomically."""
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write("\n".join(class_names) + "\n")
    os.replace(tmp, path)


# ----------------------------------------------------------------------------------------------
# SavedModel for TF Serving


def _next_version(export_dir):
    versions = [int(n) for n in os.listdir(export_dir) if re.fullmatch(r"\d+", n)]
    return max(versions, default=0) + 1


def export_saved_model(
    model,
    export_dir,
    *,
    version=None,
    with_probabilities=False,
    align_corners=None,
    class_names=None,
    fold_bn=True,
):
    """Write `model` as a TF Serving SavedModel to `<export_dir>/<version>/` and return that path.

    `fold_bn` (default): the SavedModel serves `ocr_tf.fold_bn.fold_batch_norm(model)`, each
    conv-BatchNorm pair one conv (equal outputs to 1e-5; BENCHMARKS.md, issue 13); models that
    are not functional Keras models are exported as they are.

    `version` defaults to one more than the largest numeric version already there (1 if none).
    The model is written to a hidden temporary directory beside the version directory and renamed
    when complete; on failure the temporary directory is removed. `class_names` (optional) go to
    `assets.extra/labels.txt` (TF Serving ignores assets.extra); default: a Segmenter's own, whose
    metadata also goes to `assets.extra/segmenter.json`.
    """
    class_names = _check_class_names(model, class_names or getattr(model, "class_names", None))
    os.makedirs(export_dir, exist_ok=True)
    remove_stale(export_dir)  # hidden .tmp-* folders of killed exports
    if version is None:
        version = _next_version(export_dir)
    version = int(version)
    if version < 0:
        raise UserError(f"version must be a non-negative integer, got {version}.")
    final = os.path.join(export_dir, str(version))
    if os.path.exists(final):
        raise UserError(f"{final} already exists; TF Serving versions are immutable: pick another --version or omit it for the next one.")

    from ocr_tf.fold_bn import fold_batch_norm, is_foldable

    if fold_bn and is_foldable(model):
        model = fold_batch_norm(model)
    elif fold_bn and hasattr(model, "with_network") and is_foldable(model.network):
        model = model.with_network(fold_batch_norm(model.network))  # a Segmenter keeps its metadata
    infer = make_inference_fn(model, align_corners=align_corners, with_probabilities=with_probabilities)
    archive = keras.export.ExportArchive()
    archive.track(model)
    # Loaded signatures check only the dtype; EnsureShape refuses a wrong rank or channel count at
    # run time with a clear error (without it a rank-3 batch crashes the process inside the conv).
    def serve_images(images):
        return infer(tf.ensure_shape(images, [None, None, None, 3]))

    def serve_bytes(encoded_images):
        return infer(decode_images(tf.ensure_shape(encoded_images, [None])))

    def serve_examples(serialized_examples):
        return infer(parse_example_images(tf.ensure_shape(serialized_examples, [None])))

    archive.add_endpoint(
        "serving_default",
        serve_images,
        input_signature=[tf.TensorSpec([None, None, None, 3], tf.uint8, name="images")],
    )
    archive.add_endpoint(
        "serve_bytes", serve_bytes, input_signature=[tf.TensorSpec([None], tf.string, name="encoded_images")]
    )
    archive.add_endpoint(
        "serve_examples",
        serve_examples,
        input_signature=[tf.TensorSpec([None], tf.string, name="serialized_examples")],
    )

    # A name TF Serving ignores (not numeric), on the same filesystem so the rename is atomic.
    tmp = tempfile.mkdtemp(prefix=f".tmp-{version}-{os.getpid()}-", dir=export_dir)
    os.chmod(tmp, 0o755)  # mkdtemp makes it private; the serving process may run as another user
    try:
        archive.write_out(tmp, verbose=False)
        if class_names is not None:
            os.makedirs(os.path.join(tmp, "assets.extra"), exist_ok=True)
            _write_labels(os.path.join(tmp, "assets.extra", "labels.txt"), class_names)
        if hasattr(model, "metadata"):
            meta = {**model.metadata(), "class_names": class_names}
            with open(os.path.join(tmp, "assets.extra", "segmenter.json"), "w", encoding="utf-8") as f:
                json.dump(meta, f, indent=1)
        os.rename(tmp, final)  # fails rather than merging if another export took this version
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


# ----------------------------------------------------------------------------------------------
# TFLite


def _resize_uint8(image, input_size):
    image = tf.convert_to_tensor(image)
    if image.dtype != tf.uint8 or image.shape.rank != 3 or image.shape[-1] != 3:
        raise UserError(f"calibration images must be uint8 (H, W, 3), got {image.dtype.name} {image.shape}.")
    if input_size is not None and tuple(image.shape[:2]) != tuple(input_size):
        image = tf.image.resize(image, input_size, method="bilinear")
        image = tf.cast(tf.clip_by_value(tf.round(image), 0, 255), tf.uint8)
    return image


def calibration_images(calibration_data, input_size, num_samples, num_classes):
    """Yield up to `num_samples` uint8 (H, W, 3) images at `input_size` (None: as they are) from a
    glob of TFRecords (tf-models keys, validated by `records.decode_record`) or an iterable of
    uint8 images."""
    if not isinstance(calibration_data, (str, os.PathLike)):
        for i, image in enumerate(calibration_data):
            if i >= num_samples:
                return
            yield _resize_uint8(np.asarray(image), input_size).numpy()
        return
    files = sorted(glob.glob(str(calibration_data)))
    if not files:
        raise MissingFileError(f"no TFRecord files match the calibration glob {calibration_data!r}.")
    # Round-robin over the shards: the first records of one shard are often one city / scene.
    readers = [(path, enumerate(tf.data.TFRecordDataset(path))) for path in files]
    count = 0
    while readers and count < num_samples:
        for path, reader in list(readers):
            item = next(reader, None)
            if item is None:
                readers.remove((path, reader))
                continue
            index, serialized = item
            image, _, _ = records.decode_record(serialized, num_classes, file=path, index=index)
            yield _resize_uint8(image, input_size).numpy()
            count += 1
            if count >= num_samples:
                return


def _convert(converter, quantize, float_ops):
    """converter.convert(), keeping `float_ops` (TFLite op names) in float32 for quantize="int8"
    through TFLite's selective quantization (`tf.lite.experimental.QuantizationDebugger`'s
    denylisted_ops: calibrate, then quantize every op but those)."""
    if quantize != "int8" or not float_ops:
        return converter.convert()
    import warnings

    options = tf.lite.experimental.QuantizationDebugOptions(denylisted_ops=list(float_ops))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tf.lite.Interpreter's deprecation notice (the debugger's own)
        debugger = tf.lite.experimental.QuantizationDebugger(
            converter=converter, debug_dataset=converter.representative_dataset, debug_options=options
        )
        return debugger.get_nondebug_quantized_model()


def _configure_quantization(converter, quantize, representative):
    if quantize == "none":
        return
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if quantize == "fp16":
        converter.target_spec.supported_types = [tf.float16]
    elif quantize in ("int8", "int8_full"):
        converter.representative_dataset = representative
        if quantize == "int8_full":
            # Every op int8 (conversion fails otherwise); the logits output stays int8 too.
            converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
            converter.inference_output_type = tf.int8
    # "dynamic": Optimize.DEFAULT alone = int8 weights, float activations.


def parse_input_size(text):
    """'512x1024' -> (512, 1024) (height x width)."""
    match = re.fullmatch(r"\s*(\d+)\s*[xX,]\s*(\d+)\s*", str(text))
    if not match or min(int(match[1]), int(match[2])) < 1:
        raise UserError(f"input size must look like HEIGHTxWIDTH, e.g. 512x1024; got {text!r}.")
    return int(match[1]), int(match[2])


def labels_path(tflite_path):
    """The labels file written beside a .tflite: model.tflite -> model.labels.txt."""
    root, _ = os.path.splitext(str(tflite_path))
    return root + ".labels.txt"


def export_tflite(
    model,
    out_path,
    *,
    input_size,
    quantize="none",
    calibration_data=None,
    class_names=None,
    num_calibration=100,
    align_corners=None,
    float_ops=INT8_FLOAT_OPS,
):
    """Convert `model` to a TFLite file at `out_path` (written atomically) and return the path.

    Input uint8 [1, H, W, 3] with (H, W) = `input_size`; outputs "labels" int32 [1, H, W] and
    "logits" [1, h, w, K]. `quantize`: none (float32), fp16 (float16 weights), dynamic (int8
    weights), int8 (int8 weights and activations, calibrated, float fallback allowed; `float_ops`
    stay float), int8_full (int8 only, fails if an op has no int8 kernel; int8 logits). int8 modes need
    `calibration_data`: a glob of TFRecords or an iterable of uint8 images (resized to input_size).
    `class_names` are written one per line to `labels_path(out_path)`. `float_ops`: TFLite op
    names that quantize="int8" keeps in float32 (default `INT8_FLOAT_OPS`; () quantizes all).
    """
    if quantize not in QUANTIZE_MODES:
        raise UserError(f"quantize must be one of {QUANTIZE_MODES}, got {quantize!r}.")
    if quantize.startswith("int8") and calibration_data is None:
        raise UserError(f"quantize={quantize!r} needs calibration_data (a TFRecord glob or uint8 images).")
    input_size = parse_input_size(input_size) if isinstance(input_size, str) else tuple(int(s) for s in input_size)
    class_names = _check_class_names(model, class_names or getattr(model, "class_names", None))
    height, width = input_size

    def representative():
        count = 0
        images = calibration_images(calibration_data, input_size, num_calibration, _num_classes(model))
        # A glob gives up to num_calibration images (fewer if the records run out).
        sized = hasattr(calibration_data, "__len__") and not isinstance(calibration_data, (str, os.PathLike))
        total = min(num_calibration, len(calibration_data)) if sized else num_calibration
        for image in tqdm(images, desc="int8 calibration", total=total, unit="image"):
            count += 1
            yield [image[None]]
        if count == 0:
            raise UserError("the calibration data yielded no images.")

    infer = make_inference_fn(model, align_corners=align_corners, with_logits=True)
    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint(
        "serving_default", infer, input_signature=[tf.TensorSpec([1, height, width, 3], tf.uint8, name="images")]
    )
    out_dir = os.path.dirname(os.path.abspath(out_path))
    os.makedirs(out_dir, exist_ok=True)
    remove_stale(out_dir)  # .tflite-export-* folders and *.tflite.tmp-<pid> of killed exports
    # Keras 3 models convert reliably through a SavedModel (from_concrete_functions keeps variable
    # reads, which break int8 calibration).
    with tempfile.TemporaryDirectory(prefix=f".tflite-export-{os.getpid()}-", dir=out_dir) as saved:
        archive.write_out(saved, verbose=False)
        converter = tf.lite.TFLiteConverter.from_saved_model(saved, signature_keys=["serving_default"])
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
        _configure_quantization(converter, quantize, representative)
        flatbuffer = _convert(converter, quantize, float_ops)
    check_builtin_only(flatbuffer)

    write_atomic(out_path, flatbuffer)
    if class_names is not None:
        _write_labels(labels_path(out_path), class_names)
    return str(out_path)
