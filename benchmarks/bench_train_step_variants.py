"""A/B of training-step variants in one process (issue 13): the same network and batch through
`SegmentationTrainer.train_on_batch`, variants alternating, process CPU time and wall per step.

    taskset -c 0 python benchmarks/bench_train_step_variants.py --model hrnet_w48_ocr --size 256 512 \
        --rounds 3 --variants fused_bn default

Variants: keras_bn (Keras' BatchNormalization code), fused_bn (ocr_tf's FusedBatchNormalization on
TensorFlow's FusedBatchNormV3, with TensorFlow's own conv gradients), default (what ocr_tf runs:
fused BatchNorm, the stride-1 3x3 / 1x1 conv gradients of `ocr_tf/layers/conv_grad.py` and Winograd
3x3 convs (`ocr_tf/layers/winograd.py`) where they apply; no_winograd: default without Winograd;
no_xla: default with the Winograd input transform run op by op (`winograd.XLA`); no_gemm_pad:
default without the zero GEMM columns (`winograd.GEMM_PAD`); explicit_pad: default with stride-1
ConvBNs padded by a ZeroPadding2D before a 'valid' conv instead of inside a 'same' conv
(`common.PAD_INSIDE_CONV`);
fused_bn and the others run none of them), and with --mode infer folded_bn (`fold_batch_norm`
rebuilds the network with BatchNorm folded into the convs). Each variant is traced once into its own trainer; one thread.
"""

import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="hrnet_w48_ocr")
    p.add_argument("--size", type=int, nargs=2, default=(256, 512))
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--variants", nargs="+", default=["fused_bn", "default"],
                   choices=("keras_bn", "fused_bn", "default", "no_winograd", "no_xla", "no_gemm_pad", "explicit_pad", "folded_bn"))
    p.add_argument("--set", nargs="*", default=[], help="model overrides key=int")
    p.add_argument("--mode", choices=("train", "infer"), default="train",
                   help="infer: a tf.function of network(x, training=False) (variant folded_bn: fold_batch_norm)")
    a = p.parse_args(argv)

    import keras

    from profile_train_step import make_step, set_threads  # the same step, profiled there

    set_threads(a.threads)
    from ocr_tf.layers import batch_norm, common, conv_grad, winograd
    from ocr_tf.models import build_model

    overrides = {kv.split("=")[0]: int(kv.split("=")[1]) for kv in a.set}
    steps = {}
    for v in a.variants:
        # Read when the variant's graph is traced (its first call).
        batch_norm.USE_FUSED[0] = v != "keras_bn"
        conv_grad.ENABLED[0] = v in ("default", "no_winograd", "no_xla", "no_gemm_pad", "explicit_pad")
        winograd.ENABLED[0] = v in ("default", "no_xla", "no_gemm_pad", "explicit_pad")
        common.PAD_INSIDE_CONV[0] = v != "explicit_pad"
        winograd.XLA[0] = v != "no_xla"
        winograd.GEMM_PAD = 0 if v == "no_gemm_pad" else 16
        keras.utils.set_random_seed(0)
        net = build_model(a.model, 19, **overrides)
        if v == "folded_bn":
            from ocr_tf.fold_bn import fold_batch_norm

            net = fold_batch_norm(net)
        steps[v] = make_step(net, a.mode, a.batch, a.size)
        t0 = time.perf_counter()
        steps[v]()  # trace + first step
        print(f"{v}: first step {time.perf_counter() - t0:.1f} s", flush=True)
    times = {v: [] for v in a.variants}
    for r in range(a.rounds):
        order = a.variants if r % 2 == 0 else a.variants[::-1]
        for v in order:
            c0, w0 = time.process_time(), time.perf_counter()
            steps[v]()
            times[v].append((time.process_time() - c0, time.perf_counter() - w0))
    base = statistics.median(c for c, _ in times[a.variants[0]])
    for v in a.variants:
        cpu = statistics.median(c for c, _ in times[v])
        wall = statistics.median(w for _, w in times[v])
        print(f"{v:10s} cpu {cpu:7.2f} s  wall {wall:7.2f} s  ({cpu / base:.2f}x cpu of {a.variants[0]})")


if __name__ == "__main__":
    main()
