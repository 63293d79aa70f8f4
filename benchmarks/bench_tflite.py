"""LiteRT (TFLite) latency of the phone models: MobileNetV2 FCN vs MobileNetV2 + OCR, float32 vs int8.

Each model is exported with `ocr_tf.export.export_tflite` (uint8 input, preprocessing, resize to
the input size and argmax inside, exactly what a phone runs) and timed with LiteRT's interpreter
(XNNPACK, LiteRT's default CPU delegate) at 1 and 2 threads. Random weights: latency does not
depend on the weight values. int8 is calibrated on a few images (demo set when available).

    python benchmarks/bench_tflite.py                       # 512x1024, both models, float32 + int8
    python benchmarks/bench_tflite.py --input-size 256x512 --runs 5 --models mobilenetv2_ocr

Prints a Markdown table (and writes --json). The 1-minute load average is recorded before and
after each model so a busy machine shows in the results.
"""

import argparse
import json
import os
import platform
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402

from ocr_tf import models  # noqa: E402
from ocr_tf.export import INT8_FLOAT_OPS, export_tflite, parse_input_size  # noqa: E402
from ocr_tf.tflite_utils import TFLiteSegmenter, count_macs  # noqa: E402


def calibration_set(input_size, count, seed=0):
    """Demo images when the demo set can be made, else random uint8 images (fine for latency)."""
    try:
        from ocr_tf.data.datasets.demo import prepare_demo

        return prepare_demo()["train"]
    except ImportError:
        rng = np.random.default_rng(seed)
        return [rng.integers(0, 256, (*input_size, 3), dtype=np.uint8) for _ in range(count)]


def cpu_name():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def time_model(path, threads, warmup, runs, image):
    segmenter = TFLiteSegmenter(path, num_threads=threads)
    for _ in range(warmup):
        segmenter(image)
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        segmenter(image)
        times.append((time.perf_counter() - start) * 1000.0)
    return {"median_ms": float(np.median(times)), "min_ms": float(np.min(times)), "mean_ms": float(np.mean(times))}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=["mobilenetv2_fcn", "mobilenetv2_ocr"])
    parser.add_argument("--input-size", default="512x1024", help="HEIGHTxWIDTH (default 512x1024)")
    parser.add_argument("--num-classes", type=int, default=19, help="default 19 (Cityscapes)")
    parser.add_argument("--alpha", type=float, default=1.0, help="MobileNetV2 width multiplier (default 1.0)")
    parser.add_argument("--quantize", nargs="+", default=["none", "int8"], help="export modes to time")
    parser.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--num-calibration", type=int, default=8)
    parser.add_argument("--int8-float-ops", nargs="*", default=None, metavar="OP",
                        help="TFLite ops int8 export keeps in float (default: export.INT8_FLOAT_OPS, "
                        "BATCH_MATMUL); give the flag alone to quantize every op")
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args(argv)
    size = parse_input_size(args.input_size)
    image = np.random.default_rng(1).integers(0, 256, (*size, 3), dtype=np.uint8)
    calibration = calibration_set(size, args.num_calibration)

    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models:
            model = models.build_model(name, args.num_classes, alpha=args.alpha)
            for quantize in args.quantize:
                path = os.path.join(tmp, f"{name}_{quantize}.tflite")
                float_ops = INT8_FLOAT_OPS if args.int8_float_ops is None else tuple(args.int8_float_ops)
                export_tflite(model, path, input_size=size, quantize=quantize, calibration_data=calibration,
                              num_calibration=args.num_calibration, float_ops=float_ops)
                gmacs = sum(count_macs(path).values()) / 1e9
                for threads in args.threads:
                    load_before = os.getloadavg()[0]
                    timing = time_model(path, threads, args.warmup, args.runs, image)
                    row = dict(model=name, quantize=quantize, threads=threads, gmacs=gmacs, size_mb=os.path.getsize(path) / 2**20,
                               load_before=load_before, load_after=os.getloadavg()[0], **timing)
                    results.append(row)
                    print(f"{name} {quantize} threads={threads}: median {row['median_ms']:.1f} ms "
                          f"(min {row['min_ms']:.1f}), load {load_before:.2f}->{row['load_after']:.2f}", flush=True)

    float_ops = INT8_FLOAT_OPS if args.int8_float_ops is None else tuple(args.int8_float_ops)
    print(f"\nLiteRT (XNNPACK), input {size[0]}x{size[1]}, alpha {args.alpha}, {args.num_classes} classes, "
          f"{args.runs} runs after {args.warmup} warm-up; int8 keeps {list(float_ops) or 'no op'} in float; "
          f"{cpu_name()}, {os.cpu_count()} logical CPUs\n")
    print("| model | weights/activations | threads | median ms | min ms | GMACs | .tflite MB | load avg before/after |")
    print("|---|---|---|---|---|---|---|---|")
    for r in results:
        print(f"| {r['model']} | {'float32' if r['quantize'] == 'none' else r['quantize']} | {r['threads']} | "
              f"{r['median_ms']:.1f} | {r['min_ms']:.1f} | {r['gmacs']:.2f} | {r['size_mb']:.2f} | "
              f"{r['load_before']:.2f} / {r['load_after']:.2f} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
