"""Benchmarks. `python -m ocr_tf.bench context` reproduces the paper's Table 4 on this machine.

For OCR and each compared head (`ocr_tf.layers.context.CONTEXT_HEADS`) at input 1 x S x S x 2048,
K = 19, the context module alone (the deep-supervision branch every method shares is left out;
OCR gets its soft object regions as an input, as it reuses that branch's output):

* parameters: trainable weights of the module;
* FLOPs: counted per op from the traced graph of the module's `tf.function` (Conv2D, MatMul,
  BatchMatMul and Einsum, 2 x multiply-adds from their static shapes; softmax, BN, resize and
  element-wise ops are not counted, as is usual for FLOPs tables; tf.profiler's float_ops
  agrees on convs but skips Einsum, hence our own count). OCR's count is checked against
  `ocr_analytic_flops`. Dilated convs (ASPP) count the model's output; TensorFlow on CPU runs
  them through space-to-batch tiles that also compute padding, reported as `gflops_executed`;
* peak memory: what the module holds at its peak: its weights and input (their sizes) plus the
  rise of TensorFlow's CPU allocator during one call (intermediates, output), measured with
  `tf.config.experimental.get_memory_info`, whose statistics only the BFC allocator keeps on CPU
  (TF_CPU_ALLOCATOR_USE_BFC=true, which `import ocr_tf` sets). The paper's is GPU memory;
* latency: median over `--repeats` rounds after `--warmup` calls; every round calls every head
  once, so a shared machine's load changes hit all heads alike. `--clock cpu` times by the
  process's CPU time instead of the wall clock (with `--threads 1`: one core's compute time,
  which other processes' load hardly changes);
* the machine's float32 matmul peak (best of a few n x n matmuls, each run both by TensorFlow's
  own kernel, oneDNN's GEMM by default, and by XLA, whichever is faster: the peak does not depend
  on `--compile`, but `TF_ENABLE_ONEDNN_OPTS=0` takes oneDNN's faster GEMM away) and OCR's
  latency against its roofline FLOPs / peak;
* `--compile`: how every module runs: `function` (a `tf.function` graph with TensorFlow's
  kernels, oneDNN's by default on x86) or `xla` (`tf.function(jit_compile=True)`, XLA's CPU
  code). On x86 CPUs TensorFlow's oneDNN Conv2D runs a 3x3 conv with 2048 input channels at
  less than half the matmul peak and XLA's near it (BENCHMARKS.md, issue 8); Keras does not
  pick XLA by itself on a CPU-only machine (`jit_compile="auto"` is off there).

For profiling, "stem" times the 3x3 2048->512 conv alone, which OCR and every relational head
share, and "stem_taps" the same conv as 9 shifted matmuls.
"""

import argparse
import gc
import json
import os
import platform
import statistics
import sys
import time

import numpy as np

from ocr_tf.files import write_atomic

# Table 4 of the paper (P40, input 1 x 2048 x 128 x 128): params (M), memory (MB), GFLOPs, ms.
PAPER_TABLE4 = {
    "ocr": (10.5, 202, 340, 45),
    "ppm": (23.1, 792, 619, 99),
    "aspp": (15.5, 284, 492, 97),
    "danet": (10.6, 2339, 1110, 121),
    "cc_attention": (10.6, 427, 804, 131),
    "self_attention": (10.5, 2168, 619, 96),
    "double_attention": (10.2, 209, 338, 46),
}
HEADS = ("ocr", "ppm", "aspp", "danet", "cc_attention", "self_attention", "double_attention")
PROFILE_MODULES = ("stem", "stem_taps")
COUNTED_OPS = ("Conv2D", "Conv2DBackpropInput", "Conv2DBackpropFilter", "MatMul", "BatchMatMul", "BatchMatMulV2",
               "BatchMatMulV3", "Einsum")


def ocr_analytic_flops(size, in_channels=2048, mid=512, key=256, num_classes=19):
    """2 x multiply-adds of the OCR module at an S x S input (Table 4's OCR row):
    stem conv3x3, gather (eq. 4), phi on pixels, psi and delta on the K regions, relation and
    context (eqs. 5, 3), rho, fuse g (eq. 6), classifier."""
    n, k = size * size, num_classes
    macs = (
        n * 9 * in_channels * mid  # conv3x3_ocr
        + n * k * mid  # f_k = sum_i m_ki x_i
        + n * (mid * key + key * key)  # phi: two conv1x1 on the pixels
        + k * (mid * key + key * key)  # psi: two conv1x1 on the K region vectors
        + k * mid * key  # delta on the regions
        + n * k * key  # phi(x)^T psi(f)
        + n * k * key  # sum_k w_ik delta(f_k)
        + n * key * mid  # rho
        + n * 2 * mid * mid  # g on [context, pixels]
        + n * mid * num_classes  # classifier
    )
    return 2 * macs


def _dilated_conv_output(op):
    """TensorFlow runs a dilated conv on CPU as SpaceToBatchND -> Conv2D -> BatchToSpaceND; the
    conv then also computes the padding of the space-to-batch tiles. The cropped output is the
    model's; None for an ordinary conv."""
    if op.inputs[0].op.type != "SpaceToBatchND":
        return None
    for consumer in op.outputs[0].consumers():
        if consumer.type == "BatchToSpaceND":
            return consumer.outputs[0].shape.as_list()
    return None


def count_graph_flops(graph, executed=False):
    """2 x multiply-adds of the conv / matmul / einsum ops of a graph with static shapes, and the
    count per op type. A dilated conv counts its model output (what the paper counts) unless
    `executed`, then the padded space-to-batch output TensorFlow computes. A conv's input and
    kernel gradients (a training step's graph) count the forward's multiply-adds each."""
    per_type = {}
    for op in graph.get_operations():
        if op.type not in COUNTED_OPS:
            continue
        out = op.outputs[0].shape.as_list()
        shapes = [t.shape.as_list() for t in op.inputs]
        if None in out or any(None in s for s in shapes):
            raise ValueError(f"op {op.name} ({op.type}) has an unknown static shape: {shapes} -> {out}.")
        if op.type == "Conv2D":
            kh, kw, cin, _ = shapes[1]
            if not executed:
                out = _dilated_conv_output(op) or out
            flops = 2 * int(np.prod(out)) * kh * kw * cin
        elif op.type.startswith("Conv2DBackprop"):
            # Inputs (x or its sizes, kernel or its sizes, dy): dy has the forward's output shape.
            kernel = shapes[1] if op.type == "Conv2DBackpropInput" else out
            kh, kw, cin, _ = kernel
            flops = 2 * int(np.prod(shapes[2])) * kh * kw * cin
        elif op.type == "MatMul":
            a = shapes[0]
            inner = a[0] if op.get_attr("transpose_a") else a[1]
            flops = 2 * int(np.prod(out)) * inner
        elif op.type.startswith("BatchMatMul"):
            a = shapes[0]
            adj = op.get_attr("adj_x")
            inner = a[-2] if adj else a[-1]
            flops = 2 * int(np.prod(out)) * inner
        else:  # Einsum
            flops = _einsum_flops(op.get_attr("equation").decode(), shapes)
        per_type[op.type] = per_type.get(op.type, 0) + flops
    return sum(per_type.values()), per_type


def _einsum_flops(equation, shapes):
    inputs, output = equation.replace(" ", "").split("->")
    dims = {}
    for labels, shape in zip(inputs.split(","), shapes):
        if "." in labels:
            raise ValueError(f"ellipsis einsum {equation!r} is not counted.")
        for label, dim in zip(labels, shape):
            dims[label] = dim
    contracted = set(dims) - set(output)
    total = int(np.prod([dims[label] for label in dims]))
    return 2 * total if contracted else total


def extra_memory_mib(fn, inputs):
    """MiB TensorFlow's CPU allocator peaks at during one call above what it held before (the
    call's intermediates and output), or None when the allocator keeps no statistics
    (TensorFlow made its CPU allocator before `import ocr_tf`, or TF_CPU_ALLOCATOR_USE_BFC=false)."""
    import tensorflow as tf

    gc.collect()
    try:
        tf.config.experimental.reset_memory_stats("CPU:0")
        before = tf.config.experimental.get_memory_info("CPU:0")["current"]
    except (ValueError, tf.errors.OpError):
        return None
    np.asarray(fn(*inputs))
    return (tf.config.experimental.get_memory_info("CPU:0")["peak"] - before) / 2**20


def timed_call(fn, inputs):
    """(wall, CPU) seconds of one call; CPU is the process's time on all its threads."""
    wall, cpu = time.perf_counter(), time.process_time()
    np.asarray(fn(*inputs))
    return time.perf_counter() - wall, time.process_time() - cpu


def matmul_peak_gflops(n, repeats=5, detail=None):
    """Best float32 n x n matmul throughput of this machine, GFLOP/s by the wall and CPU clocks:
    the best of TensorFlow's own matmul kernel (oneDNN's GEMM on x86 by default) and XLA's, so
    that the roofline is the fastest matmul this process can run whichever way the heads run.
    `detail`, a dict, receives each way's figures."""
    import tensorflow as tf

    a = tf.random.normal((n, n))
    b = tf.random.normal((n, n))
    best = {"wall": 0.0, "cpu": 0.0}
    for way, jit in (("function", False), ("xla", True)):
        matmul = tf.function(lambda x, y: tf.matmul(x, y), jit_compile=jit)
        timed_call(matmul, (a, b))  # trace (and compile)
        times = [timed_call(matmul, (a, b)) for _ in range(repeats)]
        gflops = {clock: 2 * n**3 / min(t[i] for t in times) / 1e9 for i, clock in enumerate(("wall", "cpu"))}
        if detail is not None:
            detail[way] = gflops
        best = {clock: max(best[clock], gflops[clock]) for clock in best}
    return best


def n_weights(layers, trainable=True):
    weights = [w for layer in layers for w in (layer.trainable_weights if trainable else layer.weights)]
    return int(sum(int(np.prod(w.shape)) for w in weights))


def build_module(name, features, region_logits, num_classes, jit_compile=False):
    """(tf.function of the context module, its inputs, trainable parameters, bytes of all its
    weights) for one head on NHWC `features`; OCR also takes the soft region logits.
    `jit_compile=True` compiles the function with XLA."""
    import tensorflow as tf

    from ocr_tf.layers import OCRHead
    from ocr_tf.layers.common import ConvBN
    from ocr_tf.layers.context import CONTEXT_HEADS, TABLE4_OCR_CONFIG

    channels = features.shape[-1]
    inputs = (features,)
    if name == "ocr":
        head = OCRHead(num_classes, **TABLE4_OCR_CONFIG)
        head.build((None, None, None, channels))

        def module(x, regions):
            feats = head.conv3x3_ocr(x, training=False)
            feats = head.ocr(feats, head.gather(feats, regions), training=False)
            return head.cls_head(feats)

        layers, inputs = [head.conv3x3_ocr, head.ocr, head.cls_head], (features, region_logits)
    elif name == "stem":
        stem = ConvBN(TABLE4_OCR_CONFIG["mid_channels"], 3, use_bias=True, name="stem")
        stem.build((None, None, None, channels))

        def module(x):
            return stem(x, training=False)

        layers = [stem]
    elif name == "stem_taps":
        # The stem's conv3x3 as 9 shifted 1x1 matmuls: the same math, to compare TF's Conv2D
        # kernel with the matmul peak (BN folded away: inference BN is a per-channel affine).
        kernel = tf.Variable(tf.random.normal((3, 3, channels, TABLE4_OCR_CONFIG["mid_channels"]), stddev=0.01))

        def module(x):
            h, w = x.shape[1], x.shape[2]
            padded = tf.pad(x, [[0, 0], [1, 1], [1, 1], [0, 0]])
            taps = [
                tf.einsum("bhwc,co->bhwo", padded[:, i : i + h, j : j + w, :], kernel[i, j])
                for i in range(3)
                for j in range(3)
            ]
            return tf.nn.relu(tf.add_n(taps))

        fn = tf.function(module, autograph=False, jit_compile=jit_compile)
        return fn, inputs, int(np.prod(kernel.shape)), 4 * int(np.prod(kernel.shape))
    elif name in CONTEXT_HEADS:
        head = CONTEXT_HEADS[name](num_classes)
        head.build((None, None, None, channels))

        def module(x):
            return head.context_logits(x, training=False)

        params = n_weights([head]) - n_weights([head.aux_head])
        weights = n_weights([head], trainable=False) - n_weights([head.aux_head], trainable=False)
        return tf.function(module, autograph=False, jit_compile=jit_compile), inputs, params, 4 * weights
    else:
        raise ValueError(f"Unknown head {name!r}; known: ocr, stem, {', '.join(CONTEXT_HEADS)}.")
    fn = tf.function(module, autograph=False, jit_compile=jit_compile)
    return fn, inputs, n_weights(layers), 4 * n_weights(layers, trainable=False)


def bench_heads(names, args):
    """Build, count and warm every head, then time them in rounds (every head once per round),
    so that a load change on a shared machine hits all heads alike."""
    import tensorflow as tf
    from tqdm import tqdm

    features = tf.random.normal((1, args.size, args.size, args.channels))
    regions = tf.random.normal((1, args.size, args.size, args.num_classes))
    modules, results = {}, {}
    for name in tqdm(names, desc="build, count, warm up", file=sys.stderr):
        fn, inputs, params, weight_bytes = build_module(
            name, features, regions, args.num_classes, jit_compile=args.compile == "xla"
        )
        graph = fn.get_concrete_function(*[tf.TensorSpec(x.shape, x.dtype) for x in inputs]).graph
        flops, per_type = count_graph_flops(graph)
        executed, _ = count_graph_flops(graph, executed=True)
        for _ in range(args.warmup):
            timed_call(fn, inputs)
        extra = extra_memory_mib(fn, inputs)
        input_bytes = sum(4 * int(np.prod(x.shape)) for x in inputs)
        modules[name] = (fn, inputs)
        results[name] = {
            "params": params,
            "gflops": flops / 1e9,
            "gflops_by_op": {k: v / 1e9 for k, v in per_type.items()},
            "gflops_executed": executed / 1e9,
            "peak_extra_mib": extra,
            # Everything the module holds at its peak: weights, input, intermediates, output.
            "peak_mib": None if extra is None else extra + (weight_bytes + input_bytes) / 2**20,
            "wall_ms_all": [],
            "cpu_ms_all": [],
        }
    for _ in tqdm(range(args.repeats), desc="timing rounds", file=sys.stderr):
        for name, (fn, inputs) in modules.items():
            wall, cpu = timed_call(fn, inputs)
            results[name]["wall_ms_all"].append(1e3 * wall)
            results[name]["cpu_ms_all"].append(1e3 * cpu)
    for r in results.values():
        r["wall_ms"] = statistics.median(r["wall_ms_all"])
        r["cpu_ms"] = statistics.median(r["cpu_ms_all"])
        r["latency_ms"] = r[f"{args.clock}_ms"]
    return results


def _fmt(value, spec):
    return "-" if value is None else format(value, spec)


def markdown_table(result):
    heads = result["heads"]
    ocr = heads.get("ocr")
    lines = [
        "| head | params (M) | paper | GFLOPs | paper | peak mem (MiB) | paper GPU mem (MB) "
        f"| latency (ms, {result['clock']}) | paper (ms) | latency / OCR | paper / OCR | GFLOP/s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in heads.items():
        paper = PAPER_TABLE4.get(name)
        ratio = r["latency_ms"] / ocr["latency_ms"] if ocr else None
        paper_ratio = paper[3] / PAPER_TABLE4["ocr"][3] if paper else None
        lines.append(
            f"| {name} | {r['params'] / 1e6:.3f} | {_fmt(paper and paper[0], '.1f')} | {r['gflops']:.1f} "
            f"| {_fmt(paper and paper[2], 'd')} | {_fmt(r['peak_mib'], '.0f')} | {_fmt(paper and paper[1], 'd')} "
            f"| {r['latency_ms']:.1f} | {_fmt(paper and paper[3], 'd')} | {_fmt(ratio, '.2f')} "
            f"| {_fmt(paper_ratio, '.2f')} "
            f"| {r['gflops'] / r['latency_ms'] * 1e3:.1f} |"
        )
    return "\n".join(lines)


def goals(result):
    """The issue's goals, evaluated on this run (None where the run cannot tell)."""
    heads, out = result["heads"], {}
    ocr = heads.get("ocr")
    if not ocr:
        return out
    table4 = result["size"] == 128 and result["channels"] == 2048 and result["num_classes"] == 19
    if table4:
        out["ocr_params_within_2pct_of_10.5M"] = abs(ocr["params"] / 10.5e6 - 1) <= 0.02
        out["ocr_flops_within_3pct_of_340G"] = abs(ocr["gflops"] / 340 - 1) <= 0.03
    for name in ("ppm", "aspp", "danet", "self_attention", "cc_attention"):
        if name in heads:
            out[f"ocr_2x_faster_than_{name}"] = heads[name]["latency_ms"] >= 2 * ocr["latency_ms"]
    out["ocr_within_1.25x_of_roofline"] = result["ocr"]["latency_over_roofline"] <= 1.25
    return out


def run_context(args):
    import tensorflow as tf

    names = list(dict.fromkeys(["ocr", *args.heads]))  # OCR first: ratios are to OCR
    peak_by_way = {}
    peak = matmul_peak_gflops(args.matmul_size, detail=peak_by_way)
    result = {
        "size": args.size,
        "channels": args.channels,
        "num_classes": args.num_classes,
        "threads": args.threads,
        "clock": args.clock,
        "compile": args.compile,
        "warmup": args.warmup,
        "repeats": args.repeats,
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(),
            "cpus": os.cpu_count(),
            "load_average_at_start": os.getloadavg(),
            "tensorflow": tf.__version__,
        },
        "matmul_size": args.matmul_size,
        "matmul_peak_gflops_by_clock": peak,
        "matmul_gflops_by_way": peak_by_way,
        "matmul_peak_gflops": peak[args.clock],
    }
    result["heads"] = bench_heads(names, args)
    result["machine"]["load_average_at_end"] = os.getloadavg()
    ocr = result["heads"]["ocr"]
    analytic = ocr_analytic_flops(args.size, args.channels, num_classes=args.num_classes) / 1e9
    roofline_ms = 1e3 * ocr["gflops"] / result["matmul_peak_gflops"]
    result["ocr"] = {
        "analytic_gflops": analytic,
        "graph_matches_analytic": abs(analytic - ocr["gflops"]) <= 1e-9 * analytic,
        "roofline_ms": roofline_ms,
        "latency_over_roofline": ocr["latency_ms"] / roofline_ms,
    }
    result["goals"] = goals(result)
    return result


def print_report(result, stream=sys.stdout):
    print(
        f"Table 4 on this machine: input 1 x {result['size']} x {result['size']} x {result['channels']}, "
        f"K = {result['num_classes']}, threads {result['threads'] or 'default'}, "
        f"compiled as {result['compile']}; latency by the "
        f"{result['clock']} clock, median of {result['repeats']} rounds after {result['warmup']} warm-up",
        file=stream,
    )
    print(markdown_table(result), file=stream)
    ocr = result["ocr"]
    print(
        f"\nmatmul peak (float32, {result['matmul_size']}^3, {result['clock']} clock): "
        f"{result['matmul_peak_gflops']:.0f} GFLOP/s (best of "
        + ", ".join(f"{way} {g[result['clock']]:.0f}" for way, g in result["matmul_gflops_by_way"].items())
        + "); "
        f"OCR: {result['heads']['ocr']['gflops']:.2f} GFLOPs from the graph, {ocr['analytic_gflops']:.2f} "
        f"analytic (match: {ocr['graph_matches_analytic']}); roofline {ocr['roofline_ms']:.1f} ms, "
        f"measured / roofline = {ocr['latency_over_roofline']:.2f}",
        file=stream,
    )
    if result["goals"]:
        # Measurements against the paper's figures, not pass/fail checks of this run.
        print("\ncompared with the paper (Table 4):", file=stream)
        for goal, ok in result["goals"].items():
            print(f"  {goal.replace('_', ' ')}: {'met' if ok else 'not met on this machine'}", file=stream)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(prog="python -m ocr_tf.bench", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    ctx = sub.add_parser("context", help="Table 4: parameters, FLOPs, memory and latency of the context heads")
    ctx.add_argument("--size", type=int, default=128, help="input height = width (Table 4: 128)")
    ctx.add_argument("--channels", type=int, default=2048, help="input channels (Table 4: 2048)")
    ctx.add_argument("--num-classes", type=int, default=19, help="K (Table 4: 19)")
    ctx.add_argument(
        "--heads",
        nargs="+",
        default=list(HEADS) + ["stem"],
        help=f"heads to run (OCR always runs): {', '.join(HEADS)}; for profiling: stem (the conv3x3 "
        "2048->512 OCR and the relational heads share, alone), stem_taps (that conv as 9 matmuls)",
    )
    ctx.add_argument("--threads", type=int, default=0, help="intra-op threads (0: TensorFlow's default)")
    ctx.add_argument(
        "--clock",
        choices=("wall", "cpu"),
        default="wall",
        help="latency clock for ratios and goals: wall, or the process's CPU time, which a shared "
        "machine's other load does not inflate (use with --threads 1: with more threads it sums them)",
    )
    ctx.add_argument(
        "--compile",
        choices=("function", "xla"),
        default="function",
        help="how the modules run: function (tf.function graph, TensorFlow's kernels: oneDNN's on x86 "
        "by default) or xla (tf.function(jit_compile=True); on x86 it runs the 3x3 2048->512 conv "
        "about twice as fast as oneDNN, see BENCHMARKS.md)",
    )
    ctx.add_argument("--warmup", type=int, default=1, help="untimed calls per head before timing")
    ctx.add_argument("--repeats", type=int, default=5, help="timing rounds; the median is reported")
    ctx.add_argument("--matmul-size", type=int, default=4096, help="n of the n x n matmul measuring the peak")
    ctx.add_argument("--json", help="write the results as JSON to this path")
    ctx.add_argument("--markdown", help="write the results table (Markdown) to this path")
    args = parser.parse_args(argv)
    for flag in ("size", "channels", "num_classes", "repeats", "matmul_size"):
        if getattr(args, flag) < 1:
            parser.error(f"--{flag.replace('_', '-')} must be >= 1, got {getattr(args, flag)}")
    if args.warmup < 1:
        parser.error("--warmup must be >= 1 (the first call traces the graph)")
    unknown = [h for h in args.heads if h not in HEADS + PROFILE_MODULES]
    if unknown:
        parser.error(f"unknown heads {unknown}; choose from {', '.join(HEADS + PROFILE_MODULES)}")
    return args


def main(argv=None):
    args = parse_args(argv)
    # The statistics come from the BFC allocator, which `import ocr_tf` asked for (ocr_tf/runtime.py).
    import tensorflow as tf

    if args.threads:
        tf.config.threading.set_intra_op_parallelism_threads(args.threads)
        tf.config.threading.set_inter_op_parallelism_threads(1)
    result = run_context(args)
    print_report(result)
    if args.json:
        write_atomic(args.json, json.dumps(result, indent=2) + "\n")
    if args.markdown:
        write_atomic(args.markdown, markdown_table(result) + "\n")
    return result


if __name__ == "__main__":
    main()
