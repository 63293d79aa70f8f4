"""Latency of one segmenter in each export runtime: Keras, SavedModel, TFLite (LiteRT) and ONNX Runtime.

The model is exported by `ocr_tf.export` / `ocr_tf.onnx_export` (uint8 input, normalisation,
network, resize of the logits to the input size and argmax inside, all three the same graph) and
each runtime labels the same uint8 image at the same size, batch 1, on the CPU:
  keras        `export.make_inference_fn` as a `tf.function` in this process
  saved_model  `tf.saved_model.load(...).signatures["serving_default"]` in this process
  tflite       LiteRT's interpreter (XNNPACK), float32
  onnx         ONNX Runtime, CPUExecutionProvider
Every timed round calls every runtime once (in turn), so a busy machine's load hits all alike.
`--threads` sets TensorFlow's intra-op threads, LiteRT's num_threads and ONNX Runtime's
intra_op_num_threads alike.

    python benchmarks/bench_export.py --model mobilenetv2_ocr --input-size 512x1024
    python benchmarks/bench_export.py --weights runs/demo/checkpoints/best.keras --input-size 96x128

Prints a Markdown table (and writes --json) with the 1-minute load average before and after.
"""

import argparse
import json
import os
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from bench_tflite import cpu_name  # noqa: E402

from ocr_tf import export  # noqa: E402
from ocr_tf.onnx_export import ONNXSegmenter, export_onnx  # noqa: E402
from ocr_tf.tflite_utils import TFLiteSegmenter  # noqa: E402


def runners(model, size, threads, work):
    """name -> (callable on a uint8 (H, W, 3) image returning labels (H, W), artefact MB or None)."""
    infer = tf.function(export.make_inference_fn(model))
    found = {"keras": (lambda image: infer(tf.constant(image[None]))["labels"].numpy()[0], None)}

    saved = export.export_saved_model(model, os.path.join(work, "saved_model"))
    serve = tf.saved_model.load(saved).signatures["serving_default"]
    found["saved_model"] = (lambda image: serve(images=tf.constant(image[None]))["labels"].numpy()[0], saved)

    tflite_path = export.export_tflite(model, os.path.join(work, "model.tflite"), input_size=size)
    tflite = TFLiteSegmenter(tflite_path, num_threads=threads)
    found["tflite"] = (lambda image: tflite(image)["labels"], tflite_path)

    onnx_path = export_onnx(model, os.path.join(work, "model.onnx"))
    onnx_runner = ONNXSegmenter(onnx_path, num_threads=threads)
    found["onnx"] = (lambda image: onnx_runner(image)["labels"], onnx_path)
    return found


def size_mb(path):
    if path is None:
        return None
    if os.path.isdir(path):
        return sum(os.path.getsize(os.path.join(r, n)) for r, _, names in os.walk(path) for n in names) / 2**20
    return os.path.getsize(path) / 2**20


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--weights", help="a .keras model (default: --model with random weights)")
    parser.add_argument("--model", default="mobilenetv2_ocr", help="registered model name (default mobilenetv2_ocr)")
    parser.add_argument("--num-classes", type=int, default=19, help="for --model (default 19)")
    parser.add_argument("--input-size", default="512x1024", help="HEIGHTxWIDTH (default 512x1024)")
    parser.add_argument("--threads", type=int, default=1, help="threads of every runtime (default 1)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args(argv)
    tf.config.threading.set_intra_op_parallelism_threads(args.threads)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    size = export.parse_input_size(args.input_size)
    model = export.load_model(args.weights, args.model, args.num_classes)
    name = os.path.basename(args.weights) if args.weights else args.model
    image = np.random.default_rng(1).integers(0, 256, (*size, 3), dtype=np.uint8)

    with tempfile.TemporaryDirectory() as work:
        found = runners(model, size, args.threads, work)
        labels = {}
        for runtime, (call, _) in found.items():
            for _ in range(args.warmup):
                labels[runtime] = call(image)
        times = {runtime: [] for runtime in found}
        load_before = os.getloadavg()[0]
        for _ in range(args.runs):
            for runtime, (call, _) in found.items():
                start = time.perf_counter()
                call(image)
                times[runtime].append((time.perf_counter() - start) * 1000.0)
        load_after = os.getloadavg()[0]
        results = [
            dict(model=name, runtime=runtime, input_size=list(size), threads=args.threads,
                 median_ms=float(np.median(times[runtime])), min_ms=float(np.min(times[runtime])),
                 size_mb=size_mb(path), agreement_with_keras=float((labels[runtime] == labels["keras"]).mean()),
                 load_before=load_before, load_after=load_after)
            for runtime, (_, path) in found.items()
        ]

    print(f"\n{name}, input {size[0]}x{size[1]}, batch 1, {args.threads} thread(s), {args.runs} rounds after "
          f"{args.warmup} warm-up; {cpu_name()}, {os.cpu_count()} logical CPUs, load {load_before:.2f} -> {load_after:.2f}\n")
    print("| runtime | median ms | min ms | artefact MB | labels = Keras |")
    print("|---|---|---|---|---|")
    for r in results:
        mb = "-" if r["size_mb"] is None else f"{r['size_mb']:.2f}"
        print(f"| {r['runtime']} | {r['median_ms']:.1f} | {r['min_ms']:.1f} | {mb} | {100 * r['agreement_with_keras']:.2f}% |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
