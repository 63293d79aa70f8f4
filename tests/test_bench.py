"""The Table 4 bench: its FLOP counter against tf.profiler and hand counts, OCR's graph count
against the analytic one, and the CLI end to end at a tiny size (numbers, never timings)."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

import keras
import tensorflow as tf
from tensorflow.python.profiler import model_analyzer, option_builder

from ocr_tf import bench


def graph_of(fn, *shapes):
    return tf.function(fn).get_concrete_function(*[tf.TensorSpec(s) for s in shapes]).graph


def test_conv_flops_agree_with_tf_profiler():
    conv = keras.layers.Conv2D(7, 3, padding="same")
    graph = graph_of(lambda x: conv(x), (1, 11, 13, 5))
    ours, per_type = bench.count_graph_flops(graph)
    opts = option_builder.ProfileOptionBuilder.float_operation()
    opts["output"] = "none"
    report = model_analyzer.profile(graph, options=opts)
    profiler_conv = sum(c.float_ops for c in report.children if c.name.endswith("convolution"))
    assert per_type == {"Conv2D": 2 * 11 * 13 * 9 * 5 * 7} and ours == profiler_conv


def test_a_training_step_counts_each_conv_gradient_as_its_forward():
    conv = keras.layers.Conv2D(7, 3, strides=2, padding="same", use_bias=False)
    conv.build((1, 12, 14, 5))

    def step(x):
        with tf.GradientTape() as tape:
            tape.watch(x)
            loss = tf.reduce_sum(conv(x) ** 2)
        return tape.gradient(loss, [x, conv.kernel])

    _, per_type = bench.count_graph_flops(graph_of(step, (1, 12, 14, 5)))
    forward = 2 * 6 * 7 * 9 * 5 * 7  # 6 x 7 outputs (stride 2), 3 x 3 x 5 inputs each, 7 channels
    assert per_type == {"Conv2D": forward, "Conv2DBackpropInput": forward, "Conv2DBackpropFilter": forward}


def test_dilated_conv_counts_the_model_output_not_the_space_to_batch_padding():
    conv = keras.layers.Conv2D(4, 3, dilation_rate=5)  # valid: 23 x 19 -> 13 x 9
    graph = graph_of(lambda x: conv(x), (1, 23, 19, 3))
    useful, _ = bench.count_graph_flops(graph)
    executed, _ = bench.count_graph_flops(graph, executed=True)
    assert useful == 2 * 13 * 9 * 9 * 3 * 4
    # TensorFlow tiles 25 x 20 (multiples of 5) into 25 blocks of 5 x 4 -> 3 x 2 outputs each.
    assert executed == 2 * 25 * 3 * 2 * 9 * 3 * 4


def test_einsum_and_matmul_flops():
    graph = graph_of(
        lambda a, b, m: (
            tf.einsum("bnk,bnc->bkc", a, b),
            tf.matmul(m, m, transpose_a=True),
            tf.matmul(a, b, adjoint_a=True),
        ),
        (2, 30, 4),
        (2, 30, 6),
        (8, 3),
    )
    total, per_type = bench.count_graph_flops(graph)
    einsum = 2 * 2 * 30 * 4 * 6  # b, n, k, c: n contracted
    matmul = 2 * 3 * 3 * 8  # (3 x 8) @ (8 x 3)
    batch_matmul = 2 * 2 * 4 * 6 * 30
    contractions = sum(per_type.get(op, 0) for op in ("Einsum", "BatchMatMulV2", "BatchMatMulV3"))
    assert contractions == einsum + batch_matmul
    assert per_type["MatMul"] == matmul and total == einsum + matmul + batch_matmul


def test_ocr_graph_flops_equal_the_analytic_count():
    features, regions = tf.random.normal((1, 5, 5, 24)), tf.random.normal((1, 5, 5, 3))
    fn, inputs, params, weight_bytes = bench.build_module("ocr", features, regions, num_classes=3)
    graph = fn.get_concrete_function(*[tf.TensorSpec(x.shape, x.dtype) for x in inputs]).graph
    flops, _ = bench.count_graph_flops(graph)
    assert flops == bench.ocr_analytic_flops(5, in_channels=24, num_classes=3)
    # Params: stem conv3x3 (bias) + BN, OCR convs with bias (openseg), classifier.
    cbn = lambda i, o, k=1: k * k * i * o + o + 2 * o  # noqa: E731
    attention = 2 * (cbn(512, 256) + cbn(256, 256)) + cbn(512, 256) + cbn(256, 512)  # phi, psi, delta, rho
    assert params == cbn(24, 512, 3) + attention + cbn(1024, 512) + 512 * 3 + 3
    bn_stats = 2 * (512 + 2 * (256 + 256) + 256 + 512 + 512)  # moving mean and variance of each BN
    assert weight_bytes == 4 * (params + bn_stats)
    # At Table 4's input: 10.6M parameters and 338 GFLOPs against the paper's 10.5M and 340G.
    n = 128 * 128  # MACs term by term: stem, gather, phi, psi, delta, relation, context, rho, g, cls
    macs = n * 9 * 2048 * 512 + n * 19 * 512 + n * 196_608 + 19 * 196_608 + 19 * 131_072
    macs += 2 * n * 19 * 256 + n * 131_072 + n * 524_288 + n * 512 * 19
    assert bench.ocr_analytic_flops(128) == 2 * macs == 338_123_685_888  # 0.55% under 340G


def test_stem_taps_is_the_stem_conv_as_matmuls():
    x = tf.random.normal((1, 5, 7, 16))
    fn, inputs, params, _ = bench.build_module("stem_taps", x, None, num_classes=3)
    concrete = fn.get_concrete_function(tf.TensorSpec(x.shape))
    flops, per_type = bench.count_graph_flops(concrete.graph)
    assert params == 9 * 16 * 512 and per_type == {"Einsum": 2 * 5 * 7 * 9 * 16 * 512}
    (variable,) = concrete.variables
    want = tf.nn.relu(tf.nn.conv2d(x, variable, 1, "SAME"))
    np.testing.assert_allclose(fn(*inputs).numpy(), want.numpy(), rtol=1e-4, atol=1e-5)


def test_cli_end_to_end(tmp_path):
    out = tmp_path / "table4.json"
    md = tmp_path / "table4.md"
    cmd = [
        sys.executable, "-m", "ocr_tf.bench", "context", "--size", "6", "--channels", "32",
        "--heads", "double_attention", "stem", "--warmup", "1", "--repeats", "2",
        "--matmul-size", "64", "--threads", "1", "--clock", "cpu", "--json", str(out), "--markdown", str(md),
    ]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k != "TF_CPU_ALLOCATOR_USE_BFC"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert list(result["heads"]) == ["ocr", "double_attention", "stem"]  # OCR always, first
    ocr, da = result["heads"]["ocr"], result["heads"]["double_attention"]
    assert result["ocr"]["graph_matches_analytic"] is True
    assert ocr["gflops"] == pytest.approx(bench.ocr_analytic_flops(6, in_channels=32) / 1e9)
    # Double attention at C = 32: stem conv3x3 + BN, A2 block, fuse, classifier (context.py docstring).
    assert da["params"] == (9 * 32 * 512 + 1024) + (512 * 256 + 512) + 2 * (512 * 64 + 64) + (256 * 512 + 1024) + (
        1024 * 512 + 1024
    ) + (512 * 19 + 19)
    for r in (ocr, da):
        # Measured by the allocator: the call's intermediates and output, at least the output.
        assert r["peak_extra_mib"] * 2**20 >= 4 * 6 * 6 * 19
        assert len(r["cpu_ms_all"]) == len(r["wall_ms_all"]) == 2
        assert r["latency_ms"] == r["cpu_ms"] == pytest.approx(np.median(r["cpu_ms_all"]))
    assert result["threads"] == 1 and result["clock"] == "cpu"
    assert result["matmul_peak_gflops"] == result["matmul_peak_gflops_by_clock"]["cpu"] > 0
    assert "| double_attention | 10.303 |" not in md.read_text()  # C = 32, not 2048
    assert md.read_text().startswith("| head |") and "| ocr |" in proc.stdout


def test_bad_arguments_are_refused(capsys):
    with pytest.raises(SystemExit):
        bench.parse_args(["context", "--heads", "ocr", "fcn"])
    assert "unknown heads ['fcn']" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        bench.parse_args(["context", "--size", "0"])


def test_xla_compiled_module_computes_what_the_graph_computes():
    features, regions = tf.random.normal((1, 6, 5, 24)), tf.random.normal((1, 6, 5, 3))
    outputs = {}
    for jit in (False, True):
        keras.utils.set_random_seed(7)  # the same weights in both builds
        fn, inputs, _, _ = bench.build_module("ocr", features, regions, num_classes=3, jit_compile=jit)
        outputs[jit] = fn(*inputs).numpy()
        if jit:  # really XLA: the function lowers to HLO with the stem's convolution in it
            assert "convolution" in fn.experimental_get_compiler_ir(*inputs)(stage="hlo")
    assert outputs[True].shape == (1, 6, 5, 3)
    np.testing.assert_allclose(outputs[True], outputs[False], rtol=1e-4, atol=1e-4)


def test_matmul_peak_is_the_best_of_tensorflow_and_xla():
    detail = {}
    peak = bench.matmul_peak_gflops(64, repeats=2, detail=detail)
    assert set(detail) == {"function", "xla"}
    for clock in ("wall", "cpu"):
        assert peak[clock] == max(d[clock] for d in detail.values()) > 0


def test_compile_flag():
    assert bench.parse_args(["context"]).compile == "function"
    assert bench.parse_args(["context", "--compile", "xla"]).compile == "xla"
    with pytest.raises(SystemExit):
        bench.parse_args(["context", "--compile", "eager"])
