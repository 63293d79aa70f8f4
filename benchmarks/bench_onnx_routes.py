"""The two ways to ONNX, measured on the same inference graph: Keras' `model.export(format="onnx")`
and tf2onnx's `convert.from_function` (what `ocr_tf.onnx_export.export_onnx` uses).

Keras exports a model's `call`, so for its route the uint8-in / labels-out graph
(`export.make_inference_fn`) is wrapped in a small `keras.Model`. Each route runs in its own fresh
process (so neither profits from the other's tracing or imports) and reports the conversion time,
the file size, the opset, the ONNX operators, the Resize nodes' coordinate modes, the label
agreement with Keras on a random image and ONNX Runtime's median latency (batch 1, 1 thread).

    python benchmarks/bench_onnx_routes.py                       # MobileNetV2-0.35 + OCR, 96x128
    python benchmarks/bench_onnx_routes.py --model hrnet_tiny_ocr --input-size 96x128
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def convert(route, model_name, size, out_path):
    """Runs in the child process: build, convert by `route`, measure; returns a dict."""
    import keras
    import numpy as np
    import onnx
    import tensorflow as tf

    from ocr_tf import export, models
    from ocr_tf.onnx_export import ONNXSegmenter, resize_nodes

    keras.utils.set_random_seed(0)
    extra = {"alpha": 0.35, "mid_channels": 64, "key_channels": 32} if model_name.startswith("mobilenetv2") else {}
    model = models.build_model(model_name, 8, **extra)
    infer = export.make_inference_fn(model)
    signature = [tf.TensorSpec([None, None, None, 3], tf.uint8, name="images")]
    start = time.perf_counter()
    if route == "keras":

        class InferenceGraph(keras.Model):
            def __init__(self, network):
                super().__init__()
                self.network = network

            def call(self, images):
                return infer(images)

        wrapped = InferenceGraph(model)
        wrapped(tf.zeros([1, *size, 3], tf.uint8))
        wrapped.export(out_path, format="onnx", input_signature=signature, verbose=False)
    else:
        import tf2onnx

        archive = keras.export.ExportArchive()
        archive.track(model)
        function = archive.add_endpoint("serving_default", infer, input_signature=signature)
        tf2onnx.convert.from_function(function, input_signature=signature, opset=17, output_path=out_path)
    seconds = time.perf_counter() - start

    proto = onnx.load(out_path)
    image = np.random.default_rng(0).integers(0, 256, (1, *size, 3), dtype=np.uint8)
    reference = infer(tf.constant(image))["labels"].numpy()
    runner = ONNXSegmenter(out_path, num_threads=1)
    labels = runner(image)["labels"]
    times = []
    for _ in range(12):
        begin = time.perf_counter()
        runner(image)
        times.append(time.perf_counter() - begin)
    return {
        "route": route,
        "convert_s": round(seconds, 1),
        "size_mb": round(os.path.getsize(out_path) / 2**20, 3),
        "opset": [o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")],
        "ops": sorted({n.op_type for n in proto.graph.node}),
        "resize_modes": sorted({n["coordinate_transformation_mode"] for n in resize_nodes(proto)}),
        "agreement_with_keras": float((labels == reference).mean()),
        "ort_median_ms": round(1000 * float(np.median(times[2:])), 2),
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="mobilenetv2_ocr")
    parser.add_argument("--input-size", default="96x128")
    parser.add_argument("--routes", nargs="+", default=["keras", "tf2onnx"], choices=["keras", "tf2onnx"])
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    size = tuple(int(v) for v in args.input_size.lower().split("x"))
    if args.child:
        print(json.dumps(convert(args.child, args.model, size, os.environ["ROUTE_OUT"])))
        return
    results = []
    with tempfile.TemporaryDirectory() as work:
        for route in args.routes:
            env = dict(os.environ, ROUTE_OUT=os.path.join(work, f"{route}.onnx"))
            cmd = [sys.executable, __file__, "--child", route, "--model", args.model, "--input-size", args.input_size]
            proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
            if proc.returncode != 0:
                results.append({"route": route, "error": proc.stderr.strip().splitlines()[-1]})
            else:
                results.append(json.loads(proc.stdout.strip().splitlines()[-1]))
            print(json.dumps(results[-1]), flush=True)
    print(f"\n{args.model}, input {args.input_size}, load {os.getloadavg()[0]:.2f}\n")
    print("| route | convert s | MB | opset | Resize modes | labels = Keras | ORT ms | ops |")
    print("|---|---|---|---|---|---|---|---|")
    for r in results:
        if "error" in r:
            print(f"| {r['route']} | failed: {r['error']} |")
            continue
        print(f"| {r['route']} | {r['convert_s']} | {r['size_mb']} | {r['opset']} | {r['resize_modes']} | "
              f"{100 * r['agreement_with_keras']:.2f}% | {r['ort_median_ms']} | {len(r['ops'])} |")
    same = len({tuple(r.get("ops", ())) for r in results}) == 1
    print(f"\nsame operator set in every route: {same}")


if __name__ == "__main__":
    main()
