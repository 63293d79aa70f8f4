"""Stride-1 conv gradients: TensorFlow's kernels vs `ocr_tf/layers/conv_grad.py`'s, per shape (issue 13).

    taskset -c 0 python benchmarks/bench_conv_grads.py 48x48x128x256 720x512x64x128 720x720x128x256x1

Each shape is CinxCoutxHxW[xK] (batch 1, output H x W, kernel K x K, 3 by default; a 3x3 conv's
input is padded by 1 as ConvBN does). For each: the forward conv, then the input gradient and the
kernel gradient, TensorFlow's (`Conv2DBackpropInput`, `Conv2DBackpropFilter`) and ocr_tf's
(`conv_valid`'s), each a `tf.function`; process CPU time, median of --repeats after a warm-up,
one thread. Prints whether TensorFlow runs oneDNN here (the rule keeps TensorFlow's gradients if so).
"""

import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def cpu_seconds(fn, args, repeats):
    fn(*args)
    times = []
    for _ in range(repeats):
        t0 = time.process_time()
        out = fn(*args)
        _ = [o.numpy() for o in (out if isinstance(out, (list, tuple)) else [out])]
        times.append(time.process_time() - t0)
    return statistics.median(times)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("shapes", nargs="+", help="CinxCoutxHxW[xK], e.g. 48x48x128x256 or 720x720x128x256x1")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    a = p.parse_args(argv)

    import tensorflow as tf
    from profile_train_step import set_threads

    set_threads(a.threads)
    from ocr_tf.layers.conv_grad import conv_valid, tensorflow_uses_onednn

    print(f"TensorFlow {tf.__version__}, oneDNN kernels: {tensorflow_uses_onednn()}, threads {a.threads}")

    def tf_grads(x, k, dy):
        with tf.GradientTape() as tape:
            tape.watch([x, k])
            y = tf.nn.convolution(x, k, padding="VALID")
        return tape.gradient(y, [x, k], output_gradients=dy)

    def our_grads(x, k, dy):
        with tf.GradientTape() as tape:
            tape.watch([x, k])
            y = conv_valid(x, k)
        return tape.gradient(y, [x, k], output_gradients=dy)

    fns = {
        "forward": tf.function(lambda x, k, dy: tf.nn.convolution(x, k, padding="VALID"), autograph=False),
        "tf_input_grad": tf.function(lambda x, k, dy: tf_grads(x, k, dy)[0], autograph=False),
        "tf_kernel_grad": tf.function(lambda x, k, dy: tf_grads(x, k, dy)[1], autograph=False),
        "our_input_grad": tf.function(lambda x, k, dy: our_grads(x, k, dy)[0], autograph=False),
        "our_kernel_grad": tf.function(lambda x, k, dy: our_grads(x, k, dy)[1], autograph=False),
    }
    print("| K x K conv, Cin -> Cout at H x W | forward | input grad TF / ours | kernel grad TF / ours | both, ours / TF |")
    print("|---|---:|---:|---:|---:|")
    for shape in a.shapes:
        c, o, h, w, k = ([int(v) for v in shape.split("x")] + [3])[:5]
        args = (tf.random.normal((1, h + k - 1, w + k - 1, c)), tf.random.normal((k, k, c, o), stddev=0.05),
                tf.random.normal((1, h, w, o)))
        t = {name: cpu_seconds(fn, args, a.repeats) * 1e3 for name, fn in fns.items()}
        ratio = (t["our_input_grad"] + t["our_kernel_grad"]) / (t["tf_input_grad"] + t["tf_kernel_grad"])
        print(f"| {k}x{k}, {c} -> {o} at {h} x {w} | {t['forward']:.1f} ms | {t['tf_input_grad']:.1f} / "
              f"{t['our_input_grad']:.1f} ms | {t['tf_kernel_grad']:.1f} / {t['our_kernel_grad']:.1f} ms | "
              f"{ratio:.2f}x |", flush=True)


if __name__ == "__main__":
    main()
