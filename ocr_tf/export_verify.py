"""Export fidelity report: does an exported segmenter label pixels as the Keras model does?

`verify_export(model, artefact)` runs the Keras model and the exported artefact on the same
images and reports:
  * label agreement: the fraction of pixels whose exported label equals the Keras label, overall
    and per class (of the pixels Keras gives class c, the fraction the export also gives c);
  * per-class IoU of the exported labels against the Keras labels;
  * the max logit difference where the artefact outputs logits (TFLite, ONNX with_logits), or the
    max probability difference (SavedModel with_probabilities);
  * latency per image (median, one image per call, after a warm-up call) of the artefact in its
    runtime and of the Keras model (a `tf.function`) in this process.

Artefacts and runtimes (the format is read from the path):
  saved_model  a version directory of `export.export_saved_model`, run in a FRESH Python process
               that imports only TensorFlow, through its `serving_default` signature (so the
               export does not lean on anything of this process, e.g. ocr_tf's registered layers);
  tflite       a `.tflite` file, run with LiteRT's interpreter (`ai_edge_litert`); its fixed input
               size decides the images' size (they are resized to it, for both sides);
  onnx         an `.onnx` file, run with ONNX Runtime (images resized too if its size is fixed).

The Keras reference is computed independently of the exported graph: normalisation in NumPy with
the model's mean/std (a `Segmenter`'s, or ImageNet's), the network, the repo's align_corners resize
and NumPy's argmax; an export with wrong preprocessing or resize therefore disagrees.

The report is written beside the artefact, atomically: `model.tflite` -> `model.verify.json` and
`model.model_card.md` (same for .onnx); a SavedModel version directory gets
`assets.extra/verify.json` and `assets.extra/model_card.md` (TF Serving ignores assets.extra, and
the report travels with the version). Below the agreement threshold (defaults: 99.9% for float
exports, 98% for int8-quantized TFLite) the report says FAILED and `VerificationFailed` is raised
(the artefact stays).
"""

import datetime
import glob
import json
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time

import numpy as np

DEFAULT_MIN_AGREEMENT = {"float": 0.999, "int8": 0.98}
FORMATS = ("saved_model", "tflite", "onnx")
DEFAULT_NUM_IMAGES = 16


class VerificationFailed(Exception):
    """The export disagrees with the Keras model (or could not be run); the message is one line.
    Commands exit with `exit_code` (1) after printing it."""

    exit_code = 1


# ----------------------------------------------------------------------------------------------
# What is verified


def detect_format(artefact):
    """'saved_model' for a directory holding saved_model.pb, 'tflite' / 'onnx' by file extension."""
    path = str(artefact)
    if os.path.isdir(path):
        if os.path.isfile(os.path.join(path, "saved_model.pb")):
            return "saved_model"
        raise ValueError(f"{path} is a directory without saved_model.pb; expected a SavedModel version directory.")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"No exported model at {path}.")
    extension = os.path.splitext(path)[1].lower()
    if extension in (".tflite", ".onnx"):
        return extension[1:]
    raise ValueError(f"{path}: cannot tell the export format; expected a SavedModel directory, .tflite or .onnx.")


def report_paths(artefact, fmt=None):
    """(json path, model card path) of the report written beside `artefact`."""
    fmt = fmt or detect_format(artefact)
    if fmt == "saved_model":
        extra = os.path.join(str(artefact), "assets.extra")
        return os.path.join(extra, "verify.json"), os.path.join(extra, "model_card.md")
    root, _ = os.path.splitext(str(artefact))
    return root + ".verify.json", root + ".model_card.md"


def tflite_quantization(path):
    """The quantization of a TFLite file, read from its tensor types: 'int8' (int8 activations),
    'dynamic' (int8 weights, float activations), 'fp16' (float16 weights) or 'none'."""
    from ai_edge_litert import schema_py_generated as schema

    from ocr_tf.tflite_utils import list_ops

    with open(path, "rb") as f:
        parsed = schema.ModelT.InitFromPackedBuf(f.read(), 0)
    names = list_ops(path)
    weights, activations, all_types = set(), set(), set()
    for graph in parsed.subgraphs:
        for op in graph.operators:
            if names[op.opcodeIndex] in ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED"):
                activations.add(graph.tensors[op.inputs[0]].type)
                weights.add(graph.tensors[op.inputs[1]].type)
        all_types.update(tensor.type for tensor in graph.tensors)
    t = schema.TensorType
    if t.INT8 in activations:
        return "int8"
    if t.INT8 in weights:
        return "dynamic"
    if t.FLOAT16 in weights or t.FLOAT16 in all_types:
        return "fp16"
    return "none"


def default_min_agreement(quantize):
    """0.98 for int8 quantization (int8, int8_full, dynamic), 0.999 otherwise."""
    return DEFAULT_MIN_AGREEMENT["int8" if str(quantize).startswith(("int8", "dynamic")) else "float"]


def verification_images(data=None, num_images=DEFAULT_NUM_IMAGES, input_size=None):
    """Up to `num_images` uint8 (H, W, 3) images and a description of where they came from.

    Args:
        data: a glob of TFRecords (tf-models keys, read round-robin over the shards), an iterable of
            uint8 images, or None: the demo's validation TFRecords if they were generated
            (`ocr_tf.data.datasets.demo.prepare_demo`), otherwise demo scenes made in memory.
        num_images: how many images (>= 1).
        input_size: (H, W) to resize every image to (TFLite's fixed input), or None to keep sizes.
    """
    from ocr_tf import export
    from ocr_tf.data.datasets import demo

    num_images = int(num_images)
    if num_images < 1:
        raise ValueError(f"num_images must be >= 1, got {num_images}.")
    if data is None:
        pattern = os.path.join(demo.default_cache_dir(), f"v{demo.VERSION}-seed0", "val-*.tfrecord")
        if glob.glob(pattern):
            data, source = pattern, f"demo validation TFRecords ({pattern})"
        else:
            rng = np.random.default_rng(12345)  # not the demo's training seed
            data = [demo.make_scene(rng)[0] for _ in range(num_images)]
            source = "demo scenes generated in memory (no demo TFRecords found)"
    elif isinstance(data, (str, os.PathLike)):
        source = f"TFRecords {data}"
    else:
        source = "images given by the caller"
    # 255 classes: the labels are not used, only checked to be < 255 or the ignore label.
    images = list(export.calibration_images(data, input_size, num_images, num_classes=255))
    if not images:
        raise ValueError(f"No images to verify with from {source}.")
    return images, source


# ----------------------------------------------------------------------------------------------
# The two sides


def _median_ms(seconds):
    return round(1000.0 * float(statistics.median(seconds)), 3) if seconds else None


def keras_reference(model, images, *, align_corners=True, mean=None, std=None):
    """Per image: {"logits": float32 (h, w, K), "labels": int32 (H, W)} of the Keras model, and
    the per-image times of its forward pass (a `tf.function`, after a warm-up call).

    Normalisation in NumPy with `mean`/`std` (on RGB / 255; default ImageNet's), the network
    (a Segmenter's `.network`), `ocr_tf.layers.common.resize_bilinear` to the image size and
    NumPy's argmax (first maximum on ties, as tf.math.argmax and ONNX ArgMax).
    """
    import tensorflow as tf

    from ocr_tf.layers.common import resize_bilinear
    from ocr_tf.preprocessing import IMAGENET_MEAN, IMAGENET_STD

    network = getattr(model, "network", model)
    mean = np.asarray(IMAGENET_MEAN if mean is None else mean, np.float32)
    std = np.asarray(IMAGENET_STD if std is None else std, np.float32)

    @tf.function(reduce_retracing=True)
    def forward(x):
        logits = tf.cast(network(x, training=False)["logits"], tf.float32)
        return logits, resize_bilinear(logits, tf.shape(x)[1:3], align_corners)

    def normalise(image):
        return ((image.astype(np.float32) / 255.0 - mean) / std)[None]

    forward(normalise(images[0]))  # warm-up: tracing
    results, times = [], []
    for image in images:
        x = normalise(image)
        start = time.perf_counter()
        logits, upsampled = forward(x)
        logits, upsampled = logits.numpy(), upsampled.numpy()
        times.append(time.perf_counter() - start)
        results.append({"logits": logits[0], "labels": upsampled[0].argmax(-1).astype(np.int32)})
    return results, times


# Runs in a fresh process that imports only TensorFlow: loads the SavedModel and answers every
# image through serving_default (batch of one), timing each call after a warm-up call.
_SAVED_MODEL_RUNNER = """
import sys, time
import numpy as np, tensorflow as tf
path, inputs, out = sys.argv[1:4]
data = np.load(inputs)
count = int(data["count"])
serve = tf.saved_model.load(path).signatures["serving_default"]
serve(images=tf.constant(data["image0"][None]))
results, times = {}, []
for i in range(count):
    x = tf.constant(data[f"image{i}"][None])
    start = time.perf_counter()
    answer = {name: value.numpy() for name, value in serve(images=x).items()}
    times.append(time.perf_counter() - start)
    for name, value in answer.items():
        results[f"{name}/{i}"] = value[0]
np.savez(out, times=np.array(times), **results)
"""


def run_saved_model(path, images, timeout=1800):
    """Run a SavedModel's serving_default on each image in a fresh process; returns (list of
    output dicts without the batch axis, per-image seconds)."""
    with tempfile.TemporaryDirectory(prefix="ocr-tf-verify-") as work:
        inputs, out = os.path.join(work, "inputs.npz"), os.path.join(work, "outputs.npz")
        np.savez(inputs, count=len(images), **{f"image{i}": image for i, image in enumerate(images)})
        env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
        proc = subprocess.run(
            [sys.executable, "-c", textwrap.dedent(_SAVED_MODEL_RUNNER), str(path), inputs, out],
            capture_output=True, text=True, env=env, timeout=timeout,
        )
        if proc.returncode != 0:
            lines = [line for line in proc.stderr.strip().splitlines() if line.strip()]
            raise VerificationFailed(
                f"the SavedModel {path} failed in a fresh process (exit {proc.returncode}): "
                f"{lines[-1] if lines else 'no message'}"
            )
        with np.load(out) as answers:
            outputs = [{} for _ in images]
            for key in answers.files:
                if key != "times":
                    name, index = key.rsplit("/", 1)
                    outputs[int(index)][name] = answers[key]
            return outputs, list(answers["times"])


def _run_in_process(segmenter, images):
    segmenter(images[0])  # warm-up
    outputs, times = [], []
    for image in images:
        start = time.perf_counter()
        outputs.append(segmenter(image))
        times.append(time.perf_counter() - start)
    return outputs, times


def run_tflite(path, images, num_threads=None):
    """LiteRT interpreter on each image (at the model's input size): (outputs, seconds)."""
    from ocr_tf.tflite_utils import TFLiteSegmenter

    return _run_in_process(TFLiteSegmenter(path, num_threads=num_threads), images)


def run_onnx(path, images, num_threads=None):
    """ONNX Runtime (CPU) on each image: (outputs, seconds)."""
    from ocr_tf.onnx_export import ONNXSegmenter

    return _run_in_process(ONNXSegmenter(path, num_threads=num_threads), images)


def _runtime_name(fmt):
    import importlib.metadata as metadata

    package = {"saved_model": "tensorflow", "tflite": "ai-edge-litert", "onnx": "onnxruntime"}[fmt]
    where = " (fresh process)" if fmt == "saved_model" else ""
    return f"{package} {metadata.version(package)}{where}"


# ----------------------------------------------------------------------------------------------
# Comparison


def _softmax_at(logits, size, align_corners):
    """Softmax of Keras logits (h, w, K) resized to `size`: the SavedModel's "probabilities"."""
    from ocr_tf.layers.common import resize_bilinear

    up = resize_bilinear(logits[None], size, align_corners)[0].numpy().astype(np.float64)
    e = np.exp(up - up.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def agreement_report(reference_labels, labels, num_classes, class_names=None):
    """Agreement of `labels` (the export's) with `reference_labels` (Keras'), same shapes.

    Returns {"agreement": overall fraction, "num_pixels", "out_of_range_pixels" (export labels
    outside [0, K)), "per_class": [{"id", "name", "keras_pixels", "export_pixels", "agreement"
    (of the pixels Keras labels c, the fraction the export labels c; None if Keras has none),
    "iou" (None if neither labels c)}]}.
    """
    from ocr_tf.metrics import confusion_matrix_np

    reference = np.concatenate([np.asarray(r).ravel() for r in reference_labels]).astype(np.int64)
    exported = np.concatenate([np.asarray(e).ravel() for e in labels]).astype(np.int64)
    if reference.shape != exported.shape:
        raise ValueError(f"{exported.size} exported labels for {reference.size} Keras labels.")
    k = int(num_classes)
    # Export labels outside [0, K) (a broken export) count as disagreement, in a void column.
    out_of_range = (exported < 0) | (exported >= k)
    exported = np.where(out_of_range, -1, exported)
    cm = confusion_matrix_np(reference, exported, k, ignore_label=-1, void_predictions=True)
    tp = np.diag(cm[:, :k]).astype(np.float64)
    keras_pixels, export_pixels = cm.sum(axis=1), cm[:, :k].sum(axis=0)
    union = keras_pixels + export_pixels - tp
    names = list(class_names) if class_names is not None else [f"class {c}" for c in range(k)]
    per_class = []
    for c in range(k):
        per_class.append({
            "id": c,
            "name": names[c],
            "keras_pixels": int(keras_pixels[c]),
            "export_pixels": int(export_pixels[c]),
            "agreement": float(tp[c] / keras_pixels[c]) if keras_pixels[c] else None,
            "iou": float(tp[c] / union[c]) if union[c] else None,
        })
    return {
        "agreement": float(tp.sum() / reference.size),
        "num_pixels": int(reference.size),
        "out_of_range_pixels": int(out_of_range.sum()),
        "per_class": per_class,
    }


def _max_difference(reference, exported):
    """(max |a - b|, max |a - b| / value range of a) over all images; None if shapes differ."""
    diffs, lo, hi = [], np.inf, -np.inf
    for a, b in zip(reference, exported):
        if a.shape != b.shape:
            return None, None
        diffs.append(float(np.abs(a.astype(np.float64) - b.astype(np.float64)).max()))
        lo, hi = min(lo, float(a.min())), max(hi, float(a.max()))
    worst = max(diffs)
    return worst, (worst / (hi - lo) if hi > lo else None)


# ----------------------------------------------------------------------------------------------
# The report


def _class_names(model, artefact, fmt, num_classes, class_names):
    """Given names, else the model's (Segmenter), else the labels file written with the export."""
    if class_names is None:
        class_names = getattr(model, "class_names", None)
    if class_names is None:
        if fmt == "saved_model":
            path = os.path.join(str(artefact), "assets.extra", "labels.txt")
        else:
            path = os.path.splitext(str(artefact))[0] + ".labels.txt"
        if os.path.isfile(path):
            with open(path, encoding="utf-8") as f:
                class_names = f.read().splitlines()
    if class_names is not None and len(class_names) != num_classes:
        raise ValueError(f"{len(class_names)} class names for a model with {num_classes} classes.")
    return None if class_names is None else [str(name) for name in class_names]


def _size_bytes(path):
    if os.path.isdir(path):
        return sum(os.path.getsize(os.path.join(root, name)) for root, _, names in os.walk(path) for name in names)
    return os.path.getsize(path)


def _model_info(model, num_classes, align_corners, mean, std):
    info = {"num_classes": num_classes, "align_corners": bool(align_corners),
            "mean": [float(v) for v in mean], "std": [float(v) for v in std]}
    for key in ("model_name", "dataset", "model_overrides", "provenance"):
        value = getattr(model, key, None)
        if value:
            info[key] = value
    name = getattr(getattr(model, "network", model), "name", None)
    if name:
        info["network"] = name
    return info


def verify_export(
    model,
    artefact,
    *,
    data=None,
    images=None,
    num_images=DEFAULT_NUM_IMAGES,
    min_agreement=None,
    quantize=None,
    class_names=None,
    align_corners=None,
    num_threads=None,
    write=True,
):
    """Compare an exported artefact with the Keras model; write and return the report (a dict).

    Args:
        model: the keras.Model (or `ocr_tf.Segmenter`) that was exported. Its `mean`, `std`,
            `align_corners`, `class_names` and `provenance` are used when it has them.
        artefact: SavedModel version directory, .tflite or .onnx file (format from the path).
        data: where the images come from (see `verification_images`); ignored if `images`.
        images: optional list of uint8 (H, W, 3) images to use instead of `data`.
        num_images: how many images to use from `data` (default 16).
        min_agreement: pass threshold on the overall label agreement, a fraction in (0, 1];
            default 0.999, or 0.98 for int8-quantized TFLite (detected from the file).
        quantize: TFLite quantization mode for the report (default: detected from the file).
        class_names: names for the per-class rows (default: the model's, or the export's labels file).
        align_corners: default the model's `align_corners`, else True.
        num_threads: threads for LiteRT / ONNX Runtime (default: the runtime's choice).
        write: write the JSON report and the Markdown model card beside the artefact.

    Raises:
        VerificationFailed: agreement below `min_agreement`, or the artefact could not be run
            (the report, saying FAILED, is written first).
    """
    from ocr_tf import export
    from ocr_tf.preprocessing import IMAGENET_MEAN, IMAGENET_STD

    if min_agreement is not None and not 0.0 < float(min_agreement) <= 1.0:
        raise ValueError(f"min_agreement must be a fraction in (0, 1], got {min_agreement}.")
    artefact = str(artefact)
    fmt = detect_format(artefact)
    network = getattr(model, "network", model)
    num_classes = int(getattr(model, "num_classes", None) or export._num_classes(network))
    class_names = _class_names(model, artefact, fmt, num_classes, class_names)
    if align_corners is None:
        align_corners = getattr(model, "align_corners", True)
    mean = getattr(model, "mean", None) or IMAGENET_MEAN
    std = getattr(model, "std", None) or IMAGENET_STD
    if fmt == "tflite":
        quantize = quantize or tflite_quantization(artefact)
    if min_agreement is None:
        min_agreement = default_min_agreement(quantize if fmt == "tflite" else "none")
    min_agreement = float(min_agreement)

    input_size = None
    if fmt == "tflite":
        from ocr_tf.tflite_utils import TFLiteSegmenter

        input_size = tuple(TFLiteSegmenter(artefact).input_size)
    elif fmt == "onnx":
        from ocr_tf.onnx_export import ONNXSegmenter

        try:
            input_size = ONNXSegmenter(artefact).fixed_input_size
        except Exception:  # an unloadable file: the run below fails and reports it
            input_size = None
    if images is not None:
        images, source = verification_images(list(images), len(images), input_size)
        source = "images given by the caller"
    else:
        images, source = verification_images(data, num_images, input_size)

    reference, keras_times = keras_reference(model, images, align_corners=align_corners, mean=mean, std=std)
    report = {
        "status": None,
        "format": fmt,
        "artefact": os.path.abspath(artefact),
        "artefact_bytes": _size_bytes(artefact),
        "quantize": quantize if fmt == "tflite" else None,
        "runtime": _runtime_name(fmt),
        "model": _model_info(model, num_classes, align_corners, mean, std),
        "class_names": class_names,
        "data": {"source": source, "num_images": len(images),
                 "image_sizes": sorted({f"{i.shape[0]}x{i.shape[1]}" for i in images})},
        "min_agreement": min_agreement,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    try:
        if fmt == "saved_model":
            outputs, times = run_saved_model(artefact, images)
        elif fmt == "tflite":
            outputs, times = run_tflite(artefact, images, num_threads)
        else:
            outputs, times = run_onnx(artefact, images, num_threads)
        if any("labels" not in out for out in outputs):
            raise VerificationFailed(f"{artefact} has no 'labels' output.")
        labels = [out["labels"] for out in outputs]
        for ref, lab in zip(reference, labels):
            if lab.shape != ref["labels"].shape:
                raise VerificationFailed(
                    f"{artefact} returned labels of shape {lab.shape} for an image of {ref['labels'].shape}."
                )
    except Exception as err:  # the runtime could not run the artefact (ONNX Runtime's errors are plain Exceptions)
        report.update(status="FAILED", error=str(err).strip().splitlines()[0] if str(err).strip() else repr(err))
        if write:
            write_report(report, artefact, fmt)
        raise VerificationFailed(f"{fmt} export {artefact}: {report['error']}") from err

    report.update(agreement_report([r["labels"] for r in reference], labels, num_classes, class_names))
    if all("logits" in out for out in outputs):
        worst, relative = _max_difference([r["logits"] for r in reference], [out["logits"] for out in outputs])
        report["max_logit_difference"], report["max_logit_difference_relative"] = worst, relative
    else:
        report["max_logit_difference"] = None  # this export has no logits output
    if all("probabilities" in out for out in outputs):
        ref_probs = [_softmax_at(r["logits"], r["labels"].shape, align_corners) for r in reference]
        report["max_probability_difference"], _ = _max_difference(ref_probs, [out["probabilities"] for out in outputs])
    report["latency_ms"] = {"export": _median_ms(times), "keras": _median_ms(keras_times),
                            "note": "median per image, batch 1, after one warm-up call"}
    passed = report["agreement"] >= min_agreement
    report["status"] = "PASSED" if passed else "FAILED"
    if write:
        report["report_paths"] = list(report_paths(artefact, fmt))
        write_report(report, artefact, fmt)
    if not passed:
        worst = min((c for c in report["per_class"] if c["agreement"] is not None), key=lambda c: c["agreement"])
        raise VerificationFailed(
            f"{fmt} export {artefact} agrees with the Keras model on {100 * report['agreement']:.3f}% of pixels, "
            f"below the required {100 * min_agreement:.3f}% (worst class {worst['name']!r}: "
            f"{100 * worst['agreement']:.2f}%); report: {report_paths(artefact, fmt)[0]}"
        )
    return report


def _percent(value, digits=2):
    return "n/a" if value is None else f"{100 * value:.{digits}f}%"


def model_card(report):
    """The report as a Markdown model card."""
    model = report["model"]
    lines = [f"# Model card: {model.get('model_name') or model.get('network') or 'segmenter'} "
             f"({report['format']}{', ' + report['quantize'] if report.get('quantize') else ''})", ""]
    lines += [f"**Export verification: {report['status']}**"
              + (f" ({report['error']})" if report.get("error") else
                 f", label agreement with the Keras model {_percent(report.get('agreement'), 3)} "
                 f"(required {_percent(report['min_agreement'], 3)})"), ""]
    lines += ["## Model", ""]
    lines.append(f"- artefact: `{report['artefact']}` ({report['artefact_bytes'] / 1e6:.2f} MB), runtime {report['runtime']}")
    for key in ("model_name", "network", "dataset", "model_overrides"):
        if model.get(key):
            lines.append(f"- {key.replace('_', ' ')}: {model[key]}")
    lines.append(f"- classes ({model['num_classes']}): "
                 + (", ".join(report["class_names"]) if report.get("class_names") else "unnamed"))
    lines.append(f"- input: uint8 RGB; normalisation inside (mean {model['mean']}, std {model['std']} on RGB/255); "
                 f"logits resized with align_corners={model['align_corners']}")
    if model.get("provenance"):
        lines += ["", "### Provenance", ""]
        lines += [f"- {key}: {value}" for key, value in model["provenance"].items()] if isinstance(
            model["provenance"], dict) else [f"- {model['provenance']}"]
    data = report["data"]
    lines += ["", "## Verification", "",
              f"- data: {data['num_images']} images ({', '.join(data['image_sizes'])}) from {data['source']}",
              f"- created: {report['created']}"]
    if report.get("error") is None and report.get("agreement") is not None:
        lines.append(f"- pixels compared: {report['num_pixels']}; export labels outside the classes: "
                     f"{report['out_of_range_pixels']}")
        if report.get("max_logit_difference") is not None:
            rel = report.get("max_logit_difference_relative")
            lines.append(f"- max logit difference: {report['max_logit_difference']:.3g}"
                         + (f" ({100 * rel:.3g}% of the Keras logits' range)" if rel is not None else ""))
        if report.get("max_probability_difference") is not None:
            lines.append(f"- max probability difference: {report['max_probability_difference']:.3g}")
        latency = report["latency_ms"]
        lines.append(f"- latency per image: export {latency['export']} ms, Keras {latency['keras']} ms "
                     f"({latency['note']}; measured on the verifying machine, which may be busy)")
        lines += ["", "| class | Keras pixels | export pixels | agreement | IoU |", "|---|---:|---:|---:|---:|"]
        for c in report["per_class"]:
            lines.append(f"| {c['name']} | {c['keras_pixels']} | {c['export_pixels']} | "
                         f"{_percent(c['agreement'])} | {_percent(c['iou'])} |")
    return "\n".join(lines) + "\n"


def write_report(report, artefact, fmt=None):
    """Write `report` as JSON (NaN-free) and as a Markdown model card beside `artefact`, each
    atomically; return the two paths."""
    json_path, card_path = report_paths(artefact, fmt)
    os.makedirs(os.path.dirname(os.path.abspath(json_path)), exist_ok=True)
    from ocr_tf.files import write_atomic

    write_atomic(json_path, json.dumps(report, indent=1, allow_nan=False, default=str) + "\n")
    write_atomic(card_path, model_card(report))
    return json_path, card_path
