"""The demo training step and HRNet-W48-OCR inference on the current Keras backend.

    for b in tensorflow jax torch; do KERAS_BACKEND=$b python benchmarks/bench_backends.py; done

Prints one JSON line: backend, demo train step (hrnet_tiny_ocr with the demo config's widths,
batch 8 of 96x128, SegmentationTrainer + SGD + PolyLR through `fit`, mean over the second epoch)
and W48 inference (hrnet_w48_ocr, K=19, `predict` on 1 x --height x --width, median of --runs
after one warm-up call; the build and warm-up times are printed as partial lines as they finish).
Random data: speed only.
"""

import argparse
import json
import time

import keras
import numpy as np

from ocr_tf.losses import SegmentationLoss
from ocr_tf.models import build_model
from ocr_tf.optim import SGD, PolyLR
from ocr_tf.training_model import SegmentationTrainer


def demo_train_step(steps):
    """Seconds per `fit` step of the demo model (first epoch compiles, the second is timed)."""
    network = build_model("hrnet_tiny_ocr", 8, mid_channels=64, key_channels=32)
    trainer = SegmentationTrainer(network, SegmentationLoss(8), 8)
    trainer.compile(optimizer=SGD(PolyLR(0.05, 500, warmup_steps=20), momentum=0.9, weight_decay=1e-4))
    rng = np.random.default_rng(0)
    x = rng.normal(size=(8 * steps, 96, 128, 3)).astype(np.float32)
    y = rng.integers(0, 8, (8 * steps, 96, 128)).astype(np.int32)
    trainer.fit(x, y, batch_size=8, epochs=1, verbose=0)
    start = time.perf_counter()
    trainer.fit(x, y, batch_size=8, epochs=1, verbose=0)
    return (time.perf_counter() - start) / steps


def w48_inference(height, width, runs, report):
    """Median seconds of `predict` on one image, after a warm-up (compile) call; `report(key,
    seconds)` gets the build and warm-up times as they finish (JAX compiles for minutes)."""
    start = time.perf_counter()
    model = build_model("hrnet_w48_ocr", 19)
    report("w48_build_s", time.perf_counter() - start)
    x = np.random.default_rng(0).normal(size=(1, height, width, 3)).astype(np.float32)
    start = time.perf_counter()
    model.predict(x, verbose=0)
    report(f"w48_first_predict_1x{height}x{width}_s", time.perf_counter() - start)
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        model.predict(x, verbose=0)
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=5, help="timed demo train steps")
    p.add_argument("--height", type=int, default=512)
    p.add_argument("--width", type=int, default=1024)
    p.add_argument("--runs", type=int, default=3)
    args = p.parse_args()
    result = {"backend": keras.backend.backend()}

    def report(key, seconds):  # a partial line as each number is known, the whole one at the end
        result[key] = round(seconds, 3)
        print(json.dumps({"partial": True, key: result[key]}), flush=True)

    report("demo_train_step_s", demo_train_step(args.steps))
    result[f"w48_predict_1x{args.height}x{args.width}_s"] = round(w48_inference(args.height, args.width, args.runs, report), 3)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
