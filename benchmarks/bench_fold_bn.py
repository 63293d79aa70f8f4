"""Inference with and without BatchNorm folding, timed in alternation in one process (issue 13).

    python benchmarks/bench_fold_bn.py [--model hrnet_w18s_ocr] [--size 256x512] [--rounds 7] [--threads 1]

Both variants are `tf.function`s of the network (inference mode); each round calls the unfolded
then the folded one (order swapped every round), so a shared machine's load hits both alike.
Reports the median wall and CPU seconds per call of each and their ratio (folded / unfolded).
"""

import argparse
import json
import os
import statistics
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="hrnet_w18s_ocr")
    p.add_argument("--num-classes", type=int, default=19)
    p.add_argument("--size", default="256x512", help="HxW")
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    import numpy as np
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(args.threads)
    tf.config.threading.set_inter_op_parallelism_threads(args.threads)
    from ocr_tf.fold_bn import fold_batch_norm
    from ocr_tf.models import build_model

    h, w = (int(v) for v in args.size.split("x"))
    model = build_model(args.model, args.num_classes)
    folded = fold_batch_norm(model)
    x = tf.constant(np.random.default_rng(0).normal(size=(1, h, w, 3)).astype("float32"))
    fns = {name: tf.function(lambda t, m=m: m(t, training=False)["logits"], autograph=False)
           for name, m in (("unfolded", model), ("folded", folded))}
    err = float(np.max(np.abs(fns["folded"](x).numpy() - fns["unfolded"](x).numpy())))
    times = {name: {"wall": [], "cpu": []} for name in fns}
    for r in range(args.rounds):
        for name in (("unfolded", "folded") if r % 2 == 0 else ("folded", "unfolded")):
            wall, cpu = time.perf_counter(), time.process_time()
            fns[name](x).numpy()
            times[name]["wall"].append(time.perf_counter() - wall)
            times[name]["cpu"].append(time.process_time() - cpu)
    result = {"model": args.model, "size": [h, w], "threads": args.threads, "rounds": args.rounds,
              "load_average": os.getloadavg(), "max_abs_diff": err}
    for clock in ("wall", "cpu"):
        med = {name: statistics.median(t[clock]) for name, t in times.items()}
        result[clock] = {**med, "folded_over_unfolded": med["folded"] / med["unfolded"]}
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
