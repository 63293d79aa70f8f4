"""GPU figures for HRNet-W48-OCR: training images/s, inference fps, peak GPU memory (issue 13).

One script for one short run on a GPU machine, writing each figure as soon as it is measured (a
run cut short keeps what it has):

    python benchmarks/gpu_bench.py --out results.json [--official-repo DIR] [--budget-s 420]

What it measures, each in its own process (one precision per process, so the peak memory of one
precision is not the other's):
* ocr_tf (Keras 3, any backend): inference at 512x1024 and 1024x2048 (batch 1, network + resize to
  the input + argmax, as `ocr_tf.inference` does) and training steps at 512x1024 (batch 2 and 8;
  forward, loss 1.0 * CE(final) + 0.4 * CE(aux) with ignore label 255, backward, SGD momentum),
  float32 / mixed bfloat16 / mixed float16 (loss scaling), compiled with XLA (`jit_compile=True`)
  and without (`jit_compile=False`: eager on JAX and PyTorch, a tf.function on TensorFlow).
* the official PyTorch HRNet-OCR from `--official-repo` (a checkout of HRNet/HRNet-Semantic-
  Segmentation, branch HRNet-OCR; not bundled), the same work in float32 and torch.autocast.

Peak memory: `tf.config.experimental.get_memory_info` (TensorFlow), the device's
`peak_bytes_in_use` (JAX), `torch.cuda.max_memory_allocated` (PyTorch); on a CPU the process's
ru_maxrss. A process's peak only grows, so within one process the items run in an order of
increasing memory and each reading is the peak so far.

`--quick` runs the same code on the demo's tiny HRNet at 64x128 (a smoke test for the CPU).
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
NUM_CLASSES = 19  # Cityscapes, as mmsegmentation's published OCRNet figures


# ------------------------------------------------------------------------------------ helpers


def _peak_memory_bytes():
    """Peak accelerator memory of this process (bytes), or its peak RSS on a CPU."""
    import keras

    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        if tf.config.list_physical_devices("GPU"):
            return int(tf.config.experimental.get_memory_info("GPU:0")["peak"])
    elif backend == "jax":
        import jax

        device = jax.devices()[0]
        if device.platform != "cpu":
            return int(device.memory_stats().get("peak_bytes_in_use", 0))
    elif backend == "torch":
        import torch

        if torch.cuda.is_available():
            return int(torch.cuda.max_memory_allocated())
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _timed(fn, warmup, iters, min_seconds=0.0):
    """Seconds per call of `fn` (which must return only once the work is done) after `warmup`
    calls; at least `iters` calls and `min_seconds`. Returns (per_call_s, first_call_s)."""
    t0 = time.perf_counter()
    fn()
    first = time.perf_counter() - t0
    for _ in range(max(0, warmup - 1)):
        fn()
    n, t0 = 0, time.perf_counter()
    while n < iters or time.perf_counter() - t0 < min_seconds:
        fn()
        n += 1
    return (time.perf_counter() - t0) / n, first


# ------------------------------------------------------------------------------------ ocr_tf


def _keras_models(model_name, precision, overrides):
    """(network, inference model, training model) under the given precision policy."""
    import keras

    from ocr_tf.layers.common import ResizeTo
    from ocr_tf.models import build_model

    keras.mixed_precision.set_global_policy({"float32": "float32"}.get(precision, f"mixed_{precision}"))
    network = build_model(model_name, NUM_CLASSES, **overrides)
    image = keras.Input((None, None, 3), name="image")
    out = network(image)
    # Logits to the label size inside the model, so the loss and argmax see full-resolution maps.
    logits = ResizeTo(True, dtype="float32", name="logits")(out["logits"], image)
    aux = ResizeTo(True, dtype="float32", name="aux_logits")(out["aux_logits"], image)
    train_model = keras.Model(image, {"logits": logits, "aux_logits": aux})
    labels = keras.layers.Lambda(lambda t: keras.ops.argmax(t, axis=-1), dtype="float32", name="labels")(logits)
    infer_model = keras.Model(image, labels)
    return network, infer_model, train_model


def keras_worker(spec):
    """Run the items of one precision in this process; returns a list of result dicts."""
    import keras
    import numpy as np

    precision, jit_modes = spec["precision"], spec["jit"]
    network, infer_model, train_model = _keras_models(spec["model"], precision, spec.get("overrides", {}))
    rng = np.random.default_rng(0)
    results = []
    deadline = spec["deadline"]

    def record(item):
        item.update(framework=f"ocr_tf (Keras {keras.__version__}, {keras.backend.backend()})", precision=precision)
        item["peak_memory_gib_so_far"] = round(_peak_memory_bytes() / 2**30, 3)
        print(json.dumps(item), flush=True)
        results.append(item)

    for jit in jit_modes:
        for h, w in spec["infer_sizes"]:
            if time.time() > deadline:
                record({"work": f"inference 1x{h}x{w}", "jit_compile": jit, "skipped": "out of time"})
                continue
            x = rng.normal(size=(1, h, w, 3)).astype("float32")
            infer_model.compile(jit_compile=jit)
            step = lambda: infer_model.predict_on_batch(x)  # noqa: E731 (returns NumPy: synchronised)
            per, first = _timed(step, spec["warmup"], spec["iters"], spec["min_seconds"])
            record({"work": f"inference 1x{h}x{w}", "jit_compile": jit, "fps": round(1 / per, 3),
                    "ms_per_image": round(1000 * per, 2), "first_call_s": round(first, 2)})
        for batch in spec["train_batches"]:
            h, w = spec["train_size"]
            if time.time() > deadline:
                record({"work": f"training step {batch}x{h}x{w}", "jit_compile": jit, "skipped": "out of time"})
                continue
            x = rng.normal(size=(batch, h, w, 3)).astype("float32")
            y = rng.integers(0, NUM_CLASSES, size=(batch, h, w)).astype("int32")
            y[:, : h // 8] = 255  # some ignored pixels, as real labels have
            ce = keras.losses.SparseCategoricalCrossentropy(from_logits=True, ignore_class=255)
            train_model.compile(
                optimizer=keras.optimizers.SGD(0.01, momentum=0.9),
                loss={"logits": ce, "aux_logits": ce}, loss_weights={"logits": 1.0, "aux_logits": 0.4},
                jit_compile=jit,
            )
            labels = {"logits": y, "aux_logits": y}
            step = lambda: train_model.train_on_batch(x, labels)  # noqa: E731 (returns floats: synchronised)
            per, first = _timed(step, spec["warmup"], spec["train_iters"], spec["min_seconds"])
            record({"work": f"training step {batch}x{h}x{w}", "jit_compile": jit,
                    "images_per_s": round(batch / per, 3), "ms_per_step": round(1000 * per, 2),
                    "first_call_s": round(first, 2)})
    del network
    return results


# ------------------------------------------------------------------------------------ official


def official_worker(spec):
    """The official PyTorch HRNet-OCR (random weights), same work; returns result dicts."""
    import numpy as np
    import torch
    import torch.nn.functional as F

    from ocr_tf.backbones.hrnet import HRNET_CONFIGS
    from ocr_tf.official import build_official

    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    torch.backends.cudnn.benchmark = True  # the official training config sets CUDNN.BENCHMARK
    extra = HRNET_CONFIGS[spec["extra"]]
    model = build_official(spec["official_repo"], extra, NUM_CLASSES, *spec.get("head", (512, 256))).to(device)
    rng = np.random.default_rng(0)
    results = []

    def sync():
        if cuda:
            torch.cuda.synchronize()

    def peak():
        return torch.cuda.max_memory_allocated() if cuda else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

    def record(item, precision):
        item.update(framework=f"official PyTorch {torch.__version__}", precision=precision, jit_compile=False)
        item["peak_memory_gib_so_far"] = round(peak() / 2**30, 3)
        print(json.dumps(item), flush=True)
        results.append(item)

    autocast = {"float32": None, "bfloat16": torch.bfloat16, "float16": torch.float16}
    for precision in spec["precisions"]:
        dtype = autocast[precision]
        ctx = (lambda: torch.autocast(device.type, dtype=dtype)) if dtype else torch.enable_grad
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        model.eval()
        for h, w in spec["infer_sizes"]:
            if time.time() > spec["deadline"]:
                record({"work": f"inference 1x{h}x{w}", "skipped": "out of time"}, precision)
                continue
            x = torch.from_numpy(rng.normal(size=(1, 3, h, w)).astype("float32")).to(device)

            def infer():
                with torch.no_grad(), ctx():
                    out = model(x)[1]
                    out = F.interpolate(out.float(), size=(h, w), mode="bilinear", align_corners=True)
                    out.argmax(1)
                sync()

            per, first = _timed(infer, spec["warmup"], spec["iters"], spec["min_seconds"])
            record({"work": f"inference 1x{h}x{w}", "fps": round(1 / per, 3), "ms_per_image": round(1000 * per, 2),
                    "first_call_s": round(first, 2)}, precision)
        model.train()
        opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        scaler = torch.amp.GradScaler(device.type, enabled=precision == "float16")
        for batch in spec["train_batches"]:
            h, w = spec["train_size"]
            if time.time() > spec["deadline"]:
                record({"work": f"training step {batch}x{h}x{w}", "skipped": "out of time"}, precision)
                continue
            x = torch.from_numpy(rng.normal(size=(batch, 3, h, w)).astype("float32")).to(device)
            y = rng.integers(0, NUM_CLASSES, size=(batch, h, w))
            y[:, : h // 8] = 255
            y = torch.from_numpy(y).long().to(device)

            def train():
                opt.zero_grad(set_to_none=True)
                with ctx():
                    aux, out = model(x)
                    loss = 0
                    for weight, logits in ((0.4, aux), (1.0, out)):
                        logits = F.interpolate(logits.float(), size=(h, w), mode="bilinear", align_corners=True)
                        loss = loss + weight * F.cross_entropy(logits, y, ignore_index=255)
                scaler.scale(loss).backward()
                scaler.step(opt)
                scaler.update()
                loss.item()  # synchronises

            per, first = _timed(train, spec["warmup"], spec["train_iters"], spec["min_seconds"])
            record({"work": f"training step {batch}x{h}x{w}", "images_per_s": round(batch / per, 3),
                    "ms_per_step": round(1000 * per, 2), "first_call_s": round(first, 2)}, precision)
    return results


# ------------------------------------------------------------------------------------ driver


def _run_child(kind, spec, log):
    """Run one worker in a fresh process; returns its result dicts (or an error item)."""
    cmd = [sys.executable, os.path.abspath(__file__), "--child", kind, json.dumps(spec)]
    timeout = max(10, spec["deadline"] - time.time() + 60)
    try:
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [REPO, os.environ.get("PYTHONPATH")])))
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=REPO, env=env)
    except subprocess.TimeoutExpired:
        return [{"worker": kind, "precision": spec.get("precision"), "error": f"timed out after {timeout:.0f} s"}]
    log.write(proc.stdout + proc.stderr)
    log.flush()
    items = []
    for line in proc.stdout.splitlines():
        if line.startswith("{"):
            items.append(json.loads(line))
    if proc.returncode:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        items.append({"worker": kind, "precision": spec.get("precision"), "error": " | ".join(tail)})
    return items


def machine_info():
    """GPU/CPU names and library versions, for the record."""
    info = {"python": sys.version.split()[0]}
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=30)
        info["gpu"] = out.stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        info["gpu"] = None
    try:
        with open("/proc/cpuinfo") as f:
            info["cpu"] = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), None)
    except OSError:
        info["cpu"] = None
    return info


def plan(args):
    """The work items: (kind, spec) in the order they run (most wanted first)."""
    deadline = time.time() + args.budget_s
    if args.quick:
        model, overrides, extra = "hrnet_tiny_ocr", {"mid_channels": 32, "key_channels": 16}, "tiny"
        infer_sizes, train_size, batches = [(64, 128), (128, 256)], (64, 128), [1, 2]
        timing = {"warmup": 1, "iters": 2, "train_iters": 2, "min_seconds": 0.0}
        head = (32, 16)
    else:
        model, overrides, extra = "hrnet_w48_ocr", {}, "w48"
        infer_sizes, train_size, batches = [(512, 1024), (1024, 2048)], (512, 1024), [2, 8]
        timing = {"warmup": 3, "iters": 10, "train_iters": 5, "min_seconds": 2.0}
        head = (512, 256)
    common = dict(deadline=deadline, infer_sizes=infer_sizes, train_size=train_size, train_batches=batches, **timing)
    keras_items = [("keras", dict(common, model=model, overrides=overrides, precision=precision, jit=[True]))
                   for precision in args.precisions]
    if not args.no_eager and "float32" in args.precisions:  # last: eager first calls are slow to trace
        keras_items.append(("keras", dict(common, model=model, overrides=overrides, precision="float32", jit=[False])))
    items = keras_items[:1]
    if args.official_repo:
        items.append(("official", dict(common, official_repo=os.path.abspath(args.official_repo), extra=extra,
                                       head=head, precisions=args.precisions)))
    items += keras_items[1:]
    return items


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", help="JSON file of the results (rewritten after each process)")
    p.add_argument("--official-repo", help="checkout of the official HRNet-OCR code (branch HRNet-OCR)")
    p.add_argument("--precisions", default="float32,bfloat16,float16",
                   type=lambda s: [v for v in s.split(",") if v], help="comma-separated: float32,bfloat16,float16")
    p.add_argument("--budget-s", type=float, default=420, help="stop starting new items after this many seconds")
    p.add_argument("--no-eager", action="store_true", help="skip the jit_compile=False items")
    p.add_argument("--quick", action="store_true", help="tiny model and sizes (CPU smoke test)")
    p.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        kind, spec = args.child[0], json.loads(args.child[1])
        (official_worker if kind == "official" else keras_worker)(spec)
        return 0
    if not args.out:
        p.error("--out is required")
    for value in args.precisions:
        if value not in ("float32", "bfloat16", "float16"):
            p.error(f"--precisions: {value!r} is not one of float32, bfloat16, float16")
    report = {"machine": machine_info(), "keras_backend": os.environ.get("KERAS_BACKEND", "tensorflow"),
              "quick": args.quick, "results": []}
    log_path = os.path.splitext(args.out)[0] + ".log"
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(log_path, "w") as log:
        for kind, spec in plan(args):
            report["results"] += _run_child(kind, spec, log)
            tmp = args.out + ".tmp"
            with open(tmp, "w") as f:
                json.dump(report, f, indent=1)
            os.replace(tmp, args.out)
    for item in report["results"]:
        print(json.dumps(item))
    return 0


if __name__ == "__main__":
    sys.exit(main())
