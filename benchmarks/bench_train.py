"""Training benchmarks (results go to BENCHMARKS.md, never asserted in tests).

  throughput  training images/s of `fit` steps (forward, loss, backward, SGD update) on
              synthetic batches, so the input pipeline is not measured (see bench_pipeline.py):
                python benchmarks/bench_train.py throughput                       # demo model
                python benchmarks/bench_train.py throughput --model hrnet_w48_ocr \
                    --crop 512 1024 --batch 1 --steps 3 --warmup 1
  compare     OCR vs the FCN baseline (same tiny HRNet backbone, same schedule) on the demo
              dataset through `ocr_tf.train.run`; prints each one's validation mIoU and time:
                python benchmarks/bench_train.py compare

Wall-clock and process CPU seconds are both reported: on a shared machine the wall clock
depends on the other processes, the CPU time much less.
"""

import argparse
import json
import os
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
DEMO = os.path.join(ROOT, "configs", "demo", "default.yaml")


def _cpu():
    t = os.times()
    return t.user + t.system


def throughput(args):
    import numpy as np
    import tensorflow as tf

    from ocr_tf.config import load_config
    from ocr_tf.train import build_trainer

    overrides = list(args.set or [])
    if args.model:
        overrides += [f"model.name={args.model}", "model.overrides={}"]
        if args.num_classes:
            overrides.append(f"data.num_classes={args.num_classes}")
    if args.crop:
        overrides.append(f"data.crop_size=[{args.crop[0]}, {args.crop[1]}]")
    if args.batch:
        overrides.append(f"train.batch_size={args.batch}")
    if args.mixed_precision:
        overrides.append(f"train.mixed_precision={args.mixed_precision}")
    cfg = load_config(args.config, overrides)
    if cfg.train.mixed_precision:
        import keras

        keras.mixed_precision.set_global_policy(f"mixed_{cfg.train.mixed_precision}")
    h, w = cfg.data.crop_size
    b, k = cfg.train.batch_size, cfg.data.num_classes
    rng = np.random.default_rng(0)
    x = rng.normal(size=(b, h, w, 3)).astype(np.float32)
    y = rng.integers(0, k, (b, h, w)).astype(np.int32)
    ds = tf.data.Dataset.from_tensors((x, y)).repeat()
    network, trainer = build_trainer(cfg, tf.distribute.get_strategy())
    t0 = time.time()
    trainer.fit(ds, epochs=1, steps_per_epoch=args.warmup, verbose=0, shuffle=False)  # trace + warm up
    trace = time.time() - t0
    wall0, cpu0 = time.time(), _cpu()
    trainer.fit(ds, epochs=1, steps_per_epoch=args.steps, verbose=0, shuffle=False)
    wall, cpu = time.time() - wall0, _cpu() - cpu0
    result = {
        "model": cfg.model.name, "params": network.count_params(), "crop": [h, w], "batch": b,
        "precision": cfg.train.mixed_precision or "float32", "steps": args.steps,
        "s_per_step": wall / args.steps, "cpu_s_per_step": cpu / args.steps,
        "images_per_s": args.steps * b / wall, "first_steps_s": trace,
        "load_avg_1min": os.getloadavg()[0], "cpus": os.cpu_count(),
    }
    print(json.dumps(result))
    return result


def compare(args):
    from ocr_tf.config import load_config
    from ocr_tf.train import run

    out = args.out or tempfile.mkdtemp(prefix="bench_train_compare_")
    base = list(args.set or []) + ["output.export_dir=null", "train.verbose=2"]
    variants = {
        "ocr": ["model.name=hrnet_tiny_ocr"],
        # The HRNet FCN head returns its logits as aux_logits too: no aux loss for it.
        "fcn": ["model.name=hrnet_tiny_fcn", "model.overrides.key_channels=null", "loss.aux_weight=0.0"],
    }
    rows = {}
    for name in args.heads:
        overrides = base + variants[name] + [f"output.dir={os.path.join(out, name)}"]
        cfg = load_config(args.config, overrides)
        if cfg.model.overrides.get("key_channels") is None:
            cfg.model.overrides.pop("key_channels", None)
        wall0, cpu0 = time.time(), _cpu()
        summary = run(cfg)
        rows[name] = {
            "model": cfg.model.name, "steps": summary["steps"], "val_miou": summary["miou"],
            "per_class_iou": summary["eval"]["per_class_iou"], "wall_s": time.time() - wall0,
            "cpu_s": _cpu() - cpu0, "load_avg_1min": os.getloadavg()[0],
        }
        print(json.dumps({name: rows[name]}), flush=True)
    return rows


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    t = sub.add_parser("throughput", help="training images/s on synthetic batches")
    t.add_argument("--config", default=DEMO)
    t.add_argument("--model", help="registered model name (drops the config's model overrides)")
    t.add_argument("--num-classes", type=int, default=19, help="classes when --model is given")
    t.add_argument("--crop", type=int, nargs=2, metavar=("H", "W"))
    t.add_argument("--batch", type=int)
    t.add_argument("--mixed-precision", choices=("float16", "bfloat16"))
    t.add_argument("--steps", type=int, default=20)
    t.add_argument("--warmup", type=int, default=3)
    t.add_argument("--set", nargs="+", help="config overrides as in python -m ocr_tf.train")
    c = sub.add_parser("compare", help="OCR vs FCN on the demo dataset at the same budget")
    c.add_argument("--config", default=DEMO)
    c.add_argument("--heads", nargs="+", default=["ocr", "fcn"], choices=("ocr", "fcn"))
    c.add_argument("--out", help="run folders (default: a temporary folder)")
    c.add_argument("--set", nargs="+", help="config overrides applied to both runs")
    args = p.parse_args(argv)
    return throughput(args) if args.command == "throughput" else compare(args)


if __name__ == "__main__":
    main()
