"""ocr_tf against the official PyTorch HRNet-OCR on this machine, in one run (issue 13).

    python benchmarks/compare_official.py --official-repo DIR [--threads 1] [--rounds 2] [--out r.json]
    python benchmarks/compare_official.py --official-repo DIR --quick      # tiny widths, seconds

DIR is a checkout of HRNet/HRNet-Semantic-Segmentation, branch HRNet-OCR (not bundled; as
`python -m ocr_tf.convert --official-repo`). Random weights, the same random inputs on both sides.

Work items (W48, K = 19; `--quick`: the demo-sized HRNet and small inputs):
  infer_512x1024, infer_1024x2048  whole-image inference, batch 1: network + resize to the input
                                   (align_corners=True) + argmax; ocr_tf through
                                   `ocr_tf.inference.predict_labels` on a tf.function of the network
  train_b1, train_b2               one training step at 512x1024: forward, loss 1.0 * CE(final) +
                                   0.4 * CE(aux) (ignore 255), backward, SGD update; ocr_tf through
                                   `SegmentationTrainer.train_on_batch` as `fit` compiles it
  table4                           the paper's Table 4 context module (conv3x3 2048->512 + gather +
                                   OCR + classifier) on 1 x 2048 x 128 x 128
Each measurement is its own process (fresh allocator, ru_maxrss = that side's peak memory, and
the minor page faults of its timed calls: memory taken fresh from the kernel), both
sides with the same intra-/inter-op thread counts; the sides alternate (A B, then B A, ...) so a
shared machine's load changes hit both alike. Each process times `--repeats` calls after one
warm-up call and reports the median. Also printed: the roofline of each ocr_tf item (the FLOPs of
its TensorFlow graph with standard convs, a training step's with their input and kernel gradients,
over the measured float32 matmul peak at the same thread count), the FLOPs ocr_tf executes (fewer
where Winograd convs run), the CPU model and its ISA flags.
"""

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
ITEMS = ("infer_512x1024", "infer_1024x2048", "train_b1", "train_b2", "table4")
ISA_FLAGS = ("sse4_2", "avx", "avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_bf16", "asimd", "sve")
NUM_CLASSES = 19


def sizes(quick):
    """The item -> shape table: full W48 sizes, or tiny ones for --quick."""
    if quick:
        return {"model": "hrnet_tiny_ocr", "extra": "tiny", "head": (32, 16), "infer_512x1024": (32, 64),
                "infer_1024x2048": (64, 128), "train": (32, 64), "table4": (64, 16), "num_classes": 5}
    return {"model": "hrnet_w48_ocr", "extra": "w48", "head": (512, 256), "infer_512x1024": (512, 1024),
            "infer_1024x2048": (1024, 2048), "train": (512, 1024), "table4": (2048, 128), "num_classes": NUM_CLASSES}


def cpu_info():
    """CPU model name and the ISA flags that decide which kernels win (from /proc/cpuinfo)."""
    model, flags = platform.processor() or platform.machine(), set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() == "model name" and model in ("", platform.machine(), platform.processor()):
                    model = value.strip()
                elif key.strip() in ("flags", "Features") and not flags:
                    flags = set(value.split())
    except OSError:
        pass
    return {"model": model, "isa": [f for f in ISA_FLAGS if f in flags], "cpus": os.cpu_count()}


def _inputs(shape_table, item, seed=0):
    import numpy as np

    rng = np.random.default_rng(seed)
    k = shape_table["num_classes"]
    if item.startswith("infer"):
        h, w = shape_table[item]
        return {"x": rng.normal(size=(1, h, w, 3)).astype("float32")}
    if item.startswith("train"):
        h, w = shape_table["train"]
        b = int(item[len("train_b"):])
        y = rng.integers(0, k, size=(b, h, w)).astype("int32")
        y[:, : h // 8] = 255
        return {"x": rng.normal(size=(b, h, w, 3)).astype("float32"), "y": y}
    c, s = shape_table["table4"]
    return {"x": rng.normal(size=(1, s, s, c)).astype("float32"), "regions": rng.normal(size=(1, s, s, k)).astype("float32")}


def _median_time(fn, repeats, extra=None):
    """(median seconds of `repeats` calls after a warm-up, `extra` + the minor page faults per
    timed call: memory the allocator took fresh from the kernel, zeroed on first touch)."""
    fn()  # warm-up (tracing, oneDNN/cuDNN primitive creation)
    times = []
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    faults = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults) / repeats
    return statistics.median(times), dict(extra or {}, minor_faults_per_call=faults)


# ------------------------------------------------------------------------------------ ocr_tf side


def model_and_executed_gflops(python_fn, *args):
    """GFLOPs of `python_fn(*args)` traced with the standard conv ops (the network's own work: the
    roofline's numerator) and as ocr_tf runs it (Winograd convs multiply less,
    `ocr_tf/layers/winograd.py`)."""
    import tensorflow as tf

    from ocr_tf import bench
    from ocr_tf.layers.conv_grad import keras_conv_ops

    def gflops():
        graph = tf.function(python_fn, autograph=False).get_concrete_function(*args).graph
        return bench.count_graph_flops(graph)[0] / 1e9

    with keras_conv_ops():
        model = gflops()
    return {"gflops": model, "gflops_executed": gflops()}


def ocr_tf_child(item, quick, threads, repeats):
    import ocr_tf  # noqa: F401  first, as a user's script: its import picks the CPU allocator (ocr_tf/runtime.py)
    import keras
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(threads)
    tf.config.threading.set_inter_op_parallelism_threads(threads)
    table = sizes(quick)
    k = table["num_classes"]
    data = _inputs(table, item)
    mid, key = table["head"]
    extra = {}
    if item == "table4":
        from ocr_tf import bench
        from ocr_tf.layers import OCRHead
        from ocr_tf.layers.context import TABLE4_OCR_CONFIG

        inputs = (tf.constant(data["x"]), tf.constant(data["regions"]))
        # The module as `python -m ocr_tf.bench context` times it, at --quick's widths when asked.
        head = OCRHead(k, **dict(TABLE4_OCR_CONFIG, mid_channels=mid, key_channels=key))
        head.build((None, None, None, data["x"].shape[-1]))

        @tf.function(autograph=False)
        def fn(x, regions):
            feats = head.conv3x3_ocr(x, training=False)
            return head.cls_head(head.ocr(feats, head.gather(feats, regions), training=False))

        run = lambda: fn(*inputs).numpy()  # noqa: E731
        extra.update(model_and_executed_gflops(fn.python_function, *inputs))
        return _median_time(run, repeats, extra)

    from ocr_tf.models import build_model

    overrides = {"mid_channels": mid, "key_channels": key}
    network = build_model(table["model"], k, **overrides)
    if item.startswith("infer"):
        from ocr_tf.inference import predict_labels

        x = tf.constant(data["x"])
        graph_fn = tf.function(lambda t: network(t, training=False), autograph=False)
        run = lambda: predict_labels(graph_fn, x, num_classes=k).numpy()  # noqa: E731
        extra.update(model_and_executed_gflops(graph_fn.python_function, x))
        return _median_time(run, repeats, extra)

    from ocr_tf import train
    from ocr_tf.config import load_config
    from ocr_tf.losses import SegmentationLoss
    from ocr_tf.optim import build_optimizer
    from ocr_tf.training_model import SegmentationTrainer

    cfg = load_config(train.DEFAULT_CONFIG, ["train.warmup_steps=0", "train.lr=0.01", "train.iterations=1000"])
    trainer = SegmentationTrainer(network, SegmentationLoss(k, 255, aux_weight=0.4), k, 255)
    trainer.compile(optimizer=build_optimizer(cfg.train), jit_compile=train.JIT_COMPILE)
    run = lambda: trainer.train_on_batch(data["x"], data["y"])  # noqa: E731

    def gradients(x):  # the step's convs and matmuls: forward, input and kernel gradients
        with tf.GradientTape() as tape:
            out = network(x, training=True)
            loss = tf.reduce_sum(out["logits"]) + tf.reduce_sum(out["aux_logits"])
        return tape.gradient(loss, network.trainable_weights)

    extra.update(model_and_executed_gflops(gradients, tf.constant(data["x"])))
    keras.utils.set_random_seed(0)
    return _median_time(run, repeats, extra)


# ------------------------------------------------------------------------------------ official side


def official_child(item, quick, threads, repeats, official_repo):
    import numpy as np
    import torch
    import torch.nn.functional as F

    from ocr_tf.backbones.hrnet import HRNET_CONFIGS
    from ocr_tf.official import _import_official, build_official

    torch.set_num_threads(threads)
    torch.set_num_interop_threads(threads)
    table = sizes(quick)
    k = table["num_classes"]
    data = _inputs(table, item)
    mid, key = table["head"]
    nchw = lambda a: torch.from_numpy(np.ascontiguousarray(np.transpose(a, (0, 3, 1, 2))))  # noqa: E731
    if item == "table4":
        official = _import_official(official_repo)
        c = data["x"].shape[-1]
        conv3x3 = torch.nn.Sequential(torch.nn.Conv2d(c, mid, 3, padding=1), torch.nn.BatchNorm2d(mid), torch.nn.ReLU())
        gather = official.SpatialGather_Module(k)
        ocr = official.SpatialOCR_Module(in_channels=mid, key_channels=key, out_channels=mid, scale=1, dropout=0.05)
        cls = torch.nn.Conv2d(mid, k, 1)
        modules = torch.nn.ModuleList([conv3x3, gather, ocr, cls]).eval()
        x, regions = nchw(data["x"]), nchw(data["regions"])

        def run():
            with torch.no_grad():
                feats = conv3x3(x)
                return cls(ocr(feats, gather(feats, regions)))

        del modules
        return _median_time(run, repeats)

    model = build_official(official_repo, HRNET_CONFIGS[table["extra"]], k, mid, key)
    x = nchw(data["x"])
    h, w = x.shape[2:]
    if item.startswith("infer"):
        model.eval()

        def run():
            with torch.no_grad():
                out = F.interpolate(model(x)[1], size=(h, w), mode="bilinear", align_corners=True)
                return out.argmax(1)

        return _median_time(run, repeats)
    model.train()
    y = torch.from_numpy(data["y"]).long()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)

    def run():
        opt.zero_grad(set_to_none=True)
        aux, out = model(x)
        loss = 0
        for weight, logits in ((0.4, aux), (1.0, out)):
            logits = F.interpolate(logits, size=(h, w), mode="bilinear", align_corners=True)
            loss = loss + weight * F.cross_entropy(logits, y, ignore_index=255)
        loss.backward()
        opt.step()
        return loss.item()

    return _median_time(run, repeats)


# ------------------------------------------------------------------------------------ driver


def matmul_peak_child(threads, quick):
    import tensorflow as tf

    from ocr_tf import bench

    tf.config.threading.set_intra_op_parallelism_threads(threads)
    tf.config.threading.set_inter_op_parallelism_threads(threads)
    return bench.matmul_peak_gflops(512 if quick else 2048, repeats=3)["wall"]


def _child_main(spec):
    kind = spec["kind"]
    if kind == "ocr_tf":
        seconds, extra = ocr_tf_child(spec["item"], spec["quick"], spec["threads"], spec["repeats"])
    elif kind == "official":
        seconds, extra = official_child(spec["item"], spec["quick"], spec["threads"], spec["repeats"], spec["official_repo"])
    else:
        seconds, extra = None, {"matmul_peak_gflops": matmul_peak_child(spec["threads"], spec["quick"])}
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print("RESULT " + json.dumps({"seconds": seconds, "max_rss_mib": rss / 2**20, **extra}), flush=True)


def run_child(spec):
    """One measurement in a fresh process -> its RESULT dict (raises with the child's last lines)."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [REPO, os.environ.get("PYTHONPATH")])))
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    proc = subprocess.run([sys.executable, os.path.abspath(__file__), "--child", json.dumps(spec)],
                          capture_output=True, text=True, env=env, cwd=REPO)
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT "):])
    tail = " | ".join((proc.stderr or proc.stdout).strip().splitlines()[-3:])
    raise RuntimeError(f"{spec['kind']} {spec.get('item')} failed (exit {proc.returncode}): {tail}")


def compare(official_repo, items=ITEMS, quick=False, threads=1, rounds=2, repeats=1, log=None):
    """Run every item on both sides in alternation; returns the report dict. `log(line)`
    receives each item's line as soon as it is measured (default: print, flushed)."""
    log = log or (lambda line: print(line, flush=True))
    source = os.path.join(official_repo, "lib", "models", "seg_hrnet_ocr.py")
    if not os.path.isfile(source):
        raise FileNotFoundError(f"{source} not found: --official-repo must be a checkout of "
                                "HRNet/HRNet-Semantic-Segmentation, branch HRNet-OCR.")
    base = {"quick": quick, "threads": threads, "repeats": repeats, "official_repo": os.path.abspath(official_repo)}
    report = {"cpu": cpu_info(), "threads": threads, "rounds": rounds, "repeats": repeats, "quick": quick,
              "load_average_at_start": os.getloadavg(), "items": {}}
    report["matmul_peak_gflops"] = run_child(dict(base, kind="peak"))["matmul_peak_gflops"]
    for item in items:
        runs = {"ocr_tf": [], "official": []}
        for r in range(rounds):
            for kind in (("ocr_tf", "official") if r % 2 == 0 else ("official", "ocr_tf")):
                runs[kind].append(run_child(dict(base, kind=kind, item=item)))
        entry = {}
        for kind, results in runs.items():
            entry[kind] = {"seconds": statistics.median(r["seconds"] for r in results),
                           "max_rss_mib": max(r["max_rss_mib"] for r in results),
                           "minor_faults_per_call": statistics.median(r["minor_faults_per_call"] for r in results)}
        entry["ratio"] = entry["ocr_tf"]["seconds"] / entry["official"]["seconds"]
        gflops = runs["ocr_tf"][0].get("gflops")
        if gflops:
            entry["gflops"] = gflops
            entry["gflops_executed"] = runs["ocr_tf"][0].get("gflops_executed")
            entry["roofline_s"] = gflops / report["matmul_peak_gflops"]
            entry["ocr_tf_over_roofline"] = entry["ocr_tf"]["seconds"] / entry["roofline_s"]
            entry["official_over_roofline"] = entry["official"]["seconds"] / entry["roofline_s"]
        report["items"][item] = entry
        log(format_line(item, entry))
    report["load_average_at_end"] = os.getloadavg()
    return report


def format_line(item, e):
    side = lambda k: (f"{e[k]['seconds']:8.3f} s ({e[k]['max_rss_mib']:7.0f} MiB, "  # noqa: E731
                      f"{e[k]['minor_faults_per_call'] / 1000:.1f}k faults/call)")
    line = f"{item:<16s} ocr_tf {side('ocr_tf')}  official {side('official')}  ratio {e['ratio']:.2f}x"
    if "roofline_s" in e:
        line += (f"  [{e['gflops']:.1f} GFLOP, roofline {e['roofline_s']:.3f} s: ocr_tf {e['ocr_tf_over_roofline']:.2f}x, "
                 f"official {e['official_over_roofline']:.2f}x")
        if e.get("gflops_executed"):
            line += f"; executed {e['gflops_executed']:.1f} GFLOP"
        line += "]"
    return line


def main(argv=None):
    p = argparse.ArgumentParser(description="ocr_tf vs the official PyTorch HRNet-OCR, alternating processes.")
    p.add_argument("--official-repo", help="checkout of HRNet/HRNet-Semantic-Segmentation, branch HRNet-OCR")
    p.add_argument("--items", default=",".join(ITEMS), help=f"comma-separated subset of {', '.join(ITEMS)}")
    p.add_argument("--threads", type=int, default=1, help="intra- and inter-op threads of each side (default 1)")
    p.add_argument("--rounds", type=int, default=2, help="alternations per item (default 2: A B then B A)")
    p.add_argument("--repeats", type=int, default=1, help="timed calls per process after one warm-up (median)")
    p.add_argument("--quick", action="store_true", help="tiny widths and sizes: a smoke run in seconds")
    p.add_argument("--out", help="also write the report as JSON here")
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        _child_main(json.loads(args.child))
        return 0
    if not args.official_repo:
        p.error("--official-repo is required")
    items = [i for i in args.items.split(",") if i]
    unknown = [i for i in items if i not in ITEMS]
    if unknown:
        p.error(f"--items: unknown {', '.join(unknown)}; known: {', '.join(ITEMS)}")
    cpu = cpu_info()
    print(f"CPU: {cpu['model']} ({cpu['cpus']} logical), ISA: {' '.join(cpu['isa'])}; threads {args.threads} each side; "
          f"load {os.getloadavg()[0]:.1f}")
    try:
        report = compare(args.official_repo, items, args.quick, args.threads, args.rounds, args.repeats)
    except FileNotFoundError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"float32 matmul peak ({args.threads} thread(s)): {report['matmul_peak_gflops']:.1f} GFLOP/s; "
          f"load {report['load_average_at_end'][0]:.1f} at the end")
    if args.out:
        tmp = args.out + ".tmp"
        with open(tmp, "w") as f:
            json.dump(report, f, indent=1)
        os.replace(tmp, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
