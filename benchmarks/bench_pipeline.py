"""Images per second of the training input pipeline (decode + full augmentation + batching).

  python benchmarks/bench_pipeline.py                  # both recipes, all cores
  python benchmarks/bench_pipeline.py --threads 1      # per core: tf.data limited to one thread

cityscapes: 20 synthetic 1024x2048 PNG records (smooth scenes + noise, ~Cityscapes-sized PNGs),
crop 512x1024, scale 0.5-2.0, flip, brightness, batch 2. demo: the built-in demo dataset at its
recipe (96x128 images, crop 96x128, batch 16). Numbers go to BENCHMARKS.md; nothing is asserted.
"""

import argparse
import io
import os
import tempfile
import time

import numpy as np


def make_cityscapes_like(folder, count=20, seed=0):
    """1024x2048 records: demo scenes upscaled (smooth regions, as in real photos) plus noise."""
    from PIL import Image

    from ocr_tf.data import records
    from ocr_tf.data.datasets import demo

    rng = np.random.default_rng(seed)
    with records.ShardedWriter(folder, "train", 4, num_classes=19) as writer:
        for k in range(count):
            image, label = demo.make_scene(rng)
            big = np.asarray(Image.fromarray(image).resize((2048, 1024), Image.BILINEAR), np.int16)
            big = np.clip(big + rng.normal(0, 2, big.shape), 0, 255).astype(np.uint8)
            big_label = np.asarray(Image.fromarray(label).resize((2048, 1024), Image.NEAREST))
            big_label = np.where(big_label == 255, 255, big_label * 2).astype(np.uint8)
            # PIL's default PNG compression, like the real leftImg8bit files (decode cost).
            buf = io.BytesIO()
            Image.fromarray(big).save(buf, format="PNG")
            writer.add(buf.getvalue(), big_label, f"synthetic-{k}")
    shard_bytes = sum(os.path.getsize(p) for p in writer.final_paths)
    return os.path.join(folder, "train-*.tfrecord"), shard_bytes / count


def measure(ds, batch_size, warmup_batches, batches):
    iterator = iter(ds)
    for _ in range(warmup_batches):
        next(iterator)
    start, cpu_start = time.perf_counter(), time.process_time()
    for _ in range(batches):
        next(iterator)
    elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    # images per CPU-second (all threads of this process): the per-core rate, which stays
    # meaningful when other processes share the machine.
    return batches * batch_size / elapsed, batches * batch_size / cpu


def with_threads(ds, threads):
    if not threads:
        return ds
    import tensorflow as tf

    options = tf.data.Options()
    options.threading.private_threadpool_size = threads
    options.threading.max_intra_op_parallelism = 1
    return ds.with_options(options)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipes", nargs="+", default=["cityscapes", "demo"], choices=["cityscapes", "demo"])
    parser.add_argument("--threads", type=int, default=0, help="tf.data threads (0 = TF default: all cores)")
    parser.add_argument("--cityscapes-batches", type=int, default=20)
    parser.add_argument("--demo-batches", type=int, default=150)
    args = parser.parse_args()

    import tensorflow as tf

    from ocr_tf.data import pipeline
    from ocr_tf.data.datasets import demo

    print(f"TF {tf.__version__}, {os.cpu_count()} CPU cores visible, tf.data threads: {args.threads or 'default'}")
    if "cityscapes" in args.recipes:
        with tempfile.TemporaryDirectory() as folder:
            pattern, avg_bytes = make_cityscapes_like(folder)
            ds = pipeline.make_dataset(pattern, num_classes=19, training=True, batch_size=2,
                                       crop_size=(512, 1024), shuffle_buffer=8, seed=0)
            rate, per_cpu = measure(with_threads(ds, args.threads), 2, 3, args.cityscapes_batches)
            print(f"cityscapes recipe (1024x2048 PNG ~{avg_bytes / 1e6:.1f} MB, crop 512x1024, batch 2): "
                  f"{rate:.1f} images/s wall, {per_cpu:.1f} images per CPU-second")
    if "demo" in args.recipes:
        info = demo.prepare_demo()
        ds = pipeline.make_dataset(info["train"], num_classes=info["num_classes"], training=True,
                                   batch_size=16, crop_size=(demo.HEIGHT, demo.WIDTH), seed=0)
        rate, per_cpu = measure(with_threads(ds, args.threads), 16, 5, args.demo_batches)
        print(f"demo recipe (96x128, crop 96x128, batch 16): {rate:.0f} images/s wall, "
              f"{per_cpu:.0f} images per CPU-second")


if __name__ == "__main__":
    main()
