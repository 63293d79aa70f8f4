"""A/B of training-step variants in one process (issue 13): the same network and batch through
`SegmentationTrainer.train_on_batch`, variants alternating, process CPU time and wall per step.

    taskset -c 0 python benchmarks/bench_train_step_variants.py --model hrnet_w48_ocr --size 256 512 \
        --rounds 3 --variants keras_bn fused_bn

Variants: keras_bn (Keras' BatchNormalization code), fused_bn (ocr_tf's FusedBatchNormalization on
TensorFlow's FusedBatchNormV3, the default), and with --mode infer folded_bn (`fold_batch_norm`
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
    p.add_argument("--variants", nargs="+", default=["keras_bn", "fused_bn"])
    p.add_argument("--set", nargs="*", default=[], help="model overrides key=int")
    p.add_argument("--mode", choices=("train", "infer"), default="train",
                   help="infer: a tf.function of network(x, training=False) (variant folded_bn: fold_batch_norm)")
    a = p.parse_args(argv)

    import keras
    import numpy as np
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(a.threads)
    tf.config.threading.set_inter_op_parallelism_threads(a.threads)
    from ocr_tf.layers import batch_norm

    def set_variant(v):  # read when a variant's graph is traced (its first call)
        batch_norm.USE_FUSED[0] = v != "keras_bn"
    from ocr_tf.losses import SegmentationLoss
    from ocr_tf.models import build_model
    from ocr_tf.training_model import SegmentationTrainer

    k = 19
    overrides = {kv.split("=")[0]: int(kv.split("=")[1]) for kv in a.set}
    rng = np.random.default_rng(0)
    x = rng.normal(size=(a.batch, *a.size, 3)).astype(np.float32)
    y = rng.integers(0, k, size=(a.batch, *a.size)).astype(np.int32)
    trainers = {}
    for v in a.variants:
        set_variant(v)
        keras.utils.set_random_seed(0)
        net = build_model(a.model, k, **overrides)
        if a.mode == "infer":
            if v == "folded_bn":
                from ocr_tf.fold_bn import fold_batch_norm

                net = fold_batch_norm(net)
            fn = tf.function(lambda t, net=net: net(t, training=False)["logits"], autograph=False)
            t = type("Infer", (), {"train_on_batch": staticmethod(lambda x, y, fn=fn: fn(tf.constant(x)).numpy())})
        else:
            t = SegmentationTrainer(net, SegmentationLoss(k, 255, aux_weight=0.4), k, 255)
            t.compile(optimizer=keras.optimizers.SGD(0.01, momentum=0.9), jit_compile=False)
        t0 = time.perf_counter()
        t.train_on_batch(x, y)  # trace + first step
        print(f"{v}: first step {time.perf_counter() - t0:.1f} s", flush=True)
        trainers[v] = t
    times = {v: [] for v in a.variants}
    for r in range(a.rounds):
        order = a.variants if r % 2 == 0 else a.variants[::-1]
        for v in order:
            c0, w0 = time.process_time(), time.perf_counter()
            trainers[v].train_on_batch(x, y)
            times[v].append((time.process_time() - c0, time.perf_counter() - w0))
    base = statistics.median(c for c, _ in times[a.variants[0]])
    for v in a.variants:
        cpu = statistics.median(c for c, _ in times[v])
        wall = statistics.median(w for _, w in times[v])
        print(f"{v:10s} cpu {cpu:7.2f} s  wall {wall:7.2f} s  ({cpu / base:.2f}x cpu of {a.variants[0]})")


if __name__ == "__main__":
    main()
