"""Where a training step's time goes (issue 13): one `SegmentationTrainer.train_on_batch` step under
`tf.profiler`, its TensorFlow op events summed by op type (and by op name with --by name).

    taskset -c 0 python benchmarks/profile_train_step.py --model hrnet_w48_ocr --size 256 512 --top 25

The trace is also left in --logdir for TensorBoard's profile plugin. Op times are the op kernels'
own wall time on one thread (--threads 1), so they add up to about the step's time.
"""

import argparse
import collections
import glob
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def op_times(logdir, by="type"):
    """Sum the host op events of the newest xplane.pb under `logdir` -> {op type or name: seconds}."""
    from tensorflow.tsl.profiler.protobuf import xplane_pb2

    path = sorted(glob.glob(os.path.join(logdir, "**", "*.xplane.pb"), recursive=True))[-1]
    space = xplane_pb2.XSpace()
    with open(path, "rb") as f:
        space.ParseFromString(f.read())
    totals = collections.Counter()
    for plane in space.planes:
        if not plane.name.startswith("/host:CPU"):
            continue
        names = {k: m.name for k, m in plane.event_metadata.items()}
        for line in plane.lines:
            if line.name not in ("TensorFlow Ops", "TensorFlow Name Scope") and "tf_Compute" not in line.name and "tf_" not in line.name:
                continue
            for event in line.events:
                name = names.get(event.metadata_id, "?")
                if ":" not in name or name.endswith(":Process"):  # op events are "op_name:OpType"
                    continue
                op_name, op_type = name.rsplit(":", 1)
                totals[op_type if by == "type" else op_name] += event.duration_ps * 1e-12
    return totals


def set_threads(threads):
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(threads)
    tf.config.threading.set_inter_op_parallelism_threads(threads)


def make_step(network, mode, batch, size, num_classes=19):
    """A no-argument callable running one step on a fixed random batch: `train` = one
    `SegmentationTrainer.train_on_batch` (forward, loss 1.0 CE + 0.4 aux CE, backward, SGD),
    `infer` = a tf.function of network(x, training=False) and its logits fetched."""
    import keras
    import numpy as np
    import tensorflow as tf

    rng = np.random.default_rng(0)
    x = rng.normal(size=(batch, *size, 3)).astype(np.float32)
    if mode == "infer":
        fn = tf.function(lambda t: network(t, training=False)["logits"], autograph=False)
        return lambda: fn(tf.constant(x)).numpy()
    from ocr_tf.losses import SegmentationLoss
    from ocr_tf.training_model import SegmentationTrainer

    y = rng.integers(0, num_classes, size=(batch, *size)).astype(np.int32)
    trainer = SegmentationTrainer(network, SegmentationLoss(num_classes, 255, aux_weight=0.4), num_classes, 255)
    trainer.compile(optimizer=keras.optimizers.SGD(0.01, momentum=0.9), jit_compile=False)
    return lambda: trainer.train_on_batch(x, y)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="hrnet_w48_ocr")
    p.add_argument("--size", type=int, nargs=2, default=(256, 512))
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--top", type=int, default=25)
    p.add_argument("--by", choices=("type", "name"), default="type")
    p.add_argument("--mode", choices=("train", "infer"), default="train")
    p.add_argument("--logdir", default=None)
    a = p.parse_args(argv)

    import tensorflow as tf

    set_threads(a.threads)
    import keras

    from ocr_tf.models import build_model

    keras.utils.set_random_seed(0)
    step = make_step(build_model(a.model, 19), a.mode, a.batch, a.size)
    step()
    step()
    logdir = a.logdir or tempfile.mkdtemp(prefix="ocr_tf_profile_")
    t0 = time.perf_counter()
    tf.profiler.experimental.start(logdir)
    step()
    tf.profiler.experimental.stop()
    wall = time.perf_counter() - t0
    totals = op_times(logdir, a.by)
    total = sum(totals.values())
    print(f"{a.model} {a.mode} {a.batch}x{a.size[0]}x{a.size[1]}: step {wall:.2f} s wall (profiled), op time {total:.2f} s; trace in {logdir}")
    for name, sec in totals.most_common(a.top):
        print(f"  {sec:8.3f} s  {100 * sec / total:5.1f}%  {name}")


if __name__ == "__main__":
    main()
