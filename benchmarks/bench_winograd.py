"""Eigen's 3x3 forward conv against Winograd F(2x2, 3x3) (`ocr_tf/layers/winograd.py`), per shape
(issue 13): process CPU time, median of --repeats calls after a warm-up, and each one's largest
error against a float64 conv relative to the largest output. One thread unless --threads.

    taskset -c 1 python benchmarks/bench_winograd.py 720x512x64x128 2048x512x128x128 48x48x128x256

Shapes are Cin x Cout x H x W (output size, batch 1; the input is padded by one pixel each side).
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("shapes", nargs="+", help="Cin x Cout x H x W, e.g. 720x512x64x128")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    a = p.parse_args(argv)

    import numpy as np
    import tensorflow as tf

    from bench_conv_grads import cpu_seconds
    from profile_train_step import set_threads

    set_threads(a.threads)
    from ocr_tf.layers import winograd

    eigen = tf.function(lambda x, k: tf.nn.convolution(x, k, padding="VALID"))
    ours = tf.function(winograd.conv3x3)
    print("Cin x Cout x H x W | Eigen conv | Winograd | ratio | error Eigen / Winograd")
    for shape in a.shapes:
        c_in, c_out, h, w = (int(v) for v in shape.lower().split("x"))
        rng = np.random.default_rng(0)
        x = rng.normal(size=(1, h + 2, w + 2, c_in))
        k = rng.normal(size=(3, 3, c_in, c_out)) / np.sqrt(9 * c_in)
        reference = tf.nn.convolution(tf.constant(x), tf.constant(k), padding="VALID").numpy()
        args = (tf.constant(x, tf.float32), tf.constant(k, tf.float32))
        errors = [np.abs(f(*args).numpy() - reference).max() / np.abs(reference).max() for f in (eigen, ours)]
        t_eigen, t_ours = cpu_seconds(eigen, args, a.repeats), cpu_seconds(ours, args, a.repeats)
        gflop = 2 * 9 * c_in * c_out * h * w / 1e9
        print(f"{shape} | {t_eigen * 1e3:.1f} ms ({gflop / t_eigen:.0f} GFLOP/s) | {t_ours * 1e3:.1f} ms "
              f"| {t_ours / t_eigen:.2f}x | {errors[0]:.1e} / {errors[1]:.1e}", flush=True)


if __name__ == "__main__":
    main()
