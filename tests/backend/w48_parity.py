"""HRNet-W48-OCR built on JAX / PyTorch loads weights saved on TensorFlow and gives TensorFlow's
outputs (issue 14's done-when, with random weights standing in for the converted official
checkpoint, which cannot be downloaded here). A measurement script, not collected by pytest:

    python tests/backend/w48_parity.py [--size 64] [--backends jax torch]

The TensorFlow process (this one) builds `hrnet_w48_ocr` (K=19), gives every BatchNorm random
statistics, saves `.weights.h5` and its outputs on a random 1 x size x size image; then one
subprocess per backend builds the same model, loads the file, runs it and reports the largest
error relative to the largest output (must be < 1e-4) and the seconds each phase took.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path[:0] = [ROOT]


def tensorflow_side(folder, size):
    import keras
    import numpy as np

    from ocr_tf.models import build_model

    model = build_model("hrnet_w48_ocr", 19)
    rng = np.random.default_rng(0)
    for w in model.weights:  # BatchNorm statistics and gammas away from their identity init
        if w.path.endswith(("moving_variance", "gamma")):
            w.assign(rng.uniform(0.5, 1.5, tuple(w.shape)).astype("float32"))
        elif w.path.endswith(("moving_mean", "beta")):
            w.assign(rng.normal(0, 0.2, tuple(w.shape)).astype("float32"))
    x = rng.normal(size=(1, size, size, 3)).astype("float32")
    out = model(x, training=False)
    model.save_weights(os.path.join(folder, "w48.weights.h5"))
    np.savez(os.path.join(folder, "w48.npz"), x=x, **{k: keras.ops.convert_to_numpy(v) for k, v in out.items()})


def backend_side(folder):
    start = time.perf_counter()
    import keras
    import numpy as np

    import ocr_tf  # noqa: F401  (as the done-when line: import ocr_tf, then build)
    from ocr_tf.models import build_model

    times = {"import": time.perf_counter() - start}
    t = time.perf_counter()
    model = build_model("hrnet_w48_ocr", 19)
    times["build"] = time.perf_counter() - t
    t = time.perf_counter()
    model.load_weights(os.path.join(folder, "w48.weights.h5"))
    times["load_weights"] = time.perf_counter() - t
    data = np.load(os.path.join(folder, "w48.npz"))
    t = time.perf_counter()
    out = model(data["x"], training=False)
    times["first_call"] = time.perf_counter() - t
    errors = {}
    for k in ("logits", "aux_logits"):
        got = np.asarray(keras.ops.convert_to_numpy(out[k]), np.float64)
        want = data[k].astype(np.float64)
        errors[k] = float(np.max(np.abs(got - want)) / np.max(np.abs(want)))
    print(json.dumps({"backend": keras.backend.backend(), "params": model.count_params(),
                      "rel_err": errors, "seconds": {k: round(v, 1) for k, v in times.items()}}))
    return max(errors.values()) < 1e-4


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--backends", nargs="+", default=["jax", "torch"])
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        return 0 if backend_side(args.child) else 1
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    with tempfile.TemporaryDirectory() as folder:
        t = time.perf_counter()
        tensorflow_side(folder, args.size)
        print(json.dumps({"backend": "tensorflow", "build_run_save_s": round(time.perf_counter() - t, 1)}))
        status = 0
        for backend in args.backends:
            env = dict(os.environ, KERAS_BACKEND=backend, TF_CPP_MIN_LOG_LEVEL="3")
            if backend == "jax":
                env["JAX_PLATFORMS"] = "cpu"
            t = time.perf_counter()
            run = subprocess.run([sys.executable, __file__, "--child", folder], env=env, capture_output=True, text=True)
            print(run.stdout.strip().splitlines()[-1] if run.stdout.strip() else run.stderr[-3000:])
            print(json.dumps({"backend": backend, "process_s": round(time.perf_counter() - t, 1), "rc": run.returncode}))
            status |= run.returncode
    return status


if __name__ == "__main__":
    raise SystemExit(main())
