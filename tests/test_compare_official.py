"""benchmarks/compare_official.py: the report's fields from a --quick run against the official code.

The official code is not bundled: the run needs OCR_TF_OFFICIAL_REPO (a checkout of
HRNet/HRNet-Semantic-Segmentation, branch HRNet-OCR), as tests/test_convert_official.py.
"""

import importlib.util
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REPO = os.environ.get("OCR_TF_OFFICIAL_REPO")


def load_script():
    spec = importlib.util.spec_from_file_location("compare_official", os.path.join(ROOT, "benchmarks", "compare_official.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_cpu_info_names_the_model_and_known_isa_flags():
    info = load_script().cpu_info()
    assert info["model"] and info["cpus"] >= 1
    assert set(info["isa"]) <= set(load_script().ISA_FLAGS)


def test_a_folder_without_the_official_code_is_refused(tmp_path, capsys):
    assert load_script().main(["--official-repo", str(tmp_path), "--quick"]) == 2
    assert "seg_hrnet_ocr.py not found" in capsys.readouterr().err


@pytest.mark.slow  # 5 fresh processes (TensorFlow and PyTorch start-up each)
@pytest.mark.skipif(not REPO, reason="set OCR_TF_OFFICIAL_REPO to a checkout of the official code")
def test_quick_run_reports_times_ratios_memory_and_roofline():
    script = load_script()
    lines = []
    items = ("infer_512x1024", "train_b1", "table4")
    report = script.compare(REPO, items=items, quick=True, rounds=1, log=lines.append)
    assert report["matmul_peak_gflops"] > 0
    assert report["cpu"]["model"]
    for item in items:
        e = report["items"][item]
        for side in ("ocr_tf", "official"):
            assert e[side]["seconds"] > 0 and e[side]["max_rss_mib"] > 50  # a Python + framework process
            assert e[side]["minor_faults_per_call"] >= 0
        assert e["ratio"] == pytest.approx(e["ocr_tf"]["seconds"] / e["official"]["seconds"])
        assert e["gflops"] > 0 and e["ocr_tf_over_roofline"] == pytest.approx(e["ocr_tf"]["seconds"] / e["roofline_s"])
        assert e["official_over_roofline"] == pytest.approx(e["official"]["seconds"] / e["roofline_s"])
    # A training step (same input size as the inference item here) counts the forward, the input
    # gradients (all but the stem's first conv) and the kernel gradients: just under 3x.
    assert 2.5 < report["items"]["train_b1"]["gflops"] / report["items"]["infer_512x1024"]["gflops"] <= 3.0
    # the Table 4 module's FLOPs counted from the graph equal the analytic count at --quick's widths
    from ocr_tf.bench import ocr_analytic_flops

    c, s = script.sizes(True)["table4"]
    mid, key = script.sizes(True)["head"]
    assert report["items"]["table4"]["gflops"] * 1e9 == pytest.approx(
        ocr_analytic_flops(s, c, mid, key, script.sizes(True)["num_classes"]), rel=1e-9)
    assert len(lines) == 3 and "ratio" in lines[0] and "faults/call" in lines[0]
