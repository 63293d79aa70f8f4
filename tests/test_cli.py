"""The commands as a user runs them: every user error one line `error: ...` naming the culprit,
exit 2, no traceback; a quiet start-up; `--help` without TensorFlow."""

import os
import subprocess
import sys

import keras
import numpy as np
import pytest
from PIL import Image

import ocr_tf
from ocr_tf.cli import evaluate, export, predict, train

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = {k: v for k, v in os.environ.items() if k not in ("TF_CPP_MIN_LOG_LEVEL", "OCR_TF_DEBUG")}
ENV["PYTHONPATH"] = ROOT


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("cli")
    keras.utils.set_random_seed(0)
    net = ocr_tf.build_model("hrnet_tiny_ocr", 8, mid_channels=8, key_channels=4)
    seg = ocr_tf.Segmenter(net, [f"c{i}" for i in range(8)], dataset="demo", model_name="hrnet_tiny_ocr",
                           model_overrides={"mid_channels": 8, "key_channels": 4})
    seg.save(tmp / "model.keras")
    net.save_weights(tmp / "model.weights.h5")
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(tmp / "img.png")
    (tmp / "a_file").write_text("not a folder")
    data = open(tmp / "model.keras", "rb").read()
    (tmp / "truncated.keras").write_bytes(data[: len(data) // 2])
    return tmp


def one_error_line(capsys, *needles):
    err = capsys.readouterr().err
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert lines and lines[-1].startswith("error: "), err
    assert "Traceback" not in err, err
    for needle in needles:
        assert needle in lines[-1], (needle, lines[-1])
    return lines[-1]


def test_user_errors_are_one_line_naming_the_culprit(files, capsys):
    t = files
    cases = [
        (export.main, ["--model", "hrnet_w99_ocr", "--format", "saved_model", "--output", str(t / "o")], ["hrnet_w99_ocr"]),
        (evaluate.main, ["--weights", str(t / "model.keras"), "--data", str(t / "nope-*.tfrecord")], ["nope-*.tfrecord"]),
        (predict.main, [str(t / "img.png"), "--weights", str(t / "model.keras"), "--dataset", "citiscapes"], ["citiscapes"]),
        (predict.main, [str(t / "missing.png"), "--weights", str(t / "model.keras")], ["missing.png"]),
        (predict.main, [str(t / "img.png"), "--weights", str(t / "truncated.keras")], ["truncated.keras"]),
        (predict.main, [str(t / "img.png"), "--weights", str(t / "model.weights.h5"), "--model", "hrnet_tiny_ocr",
                        "--dataset", "demo"], ["model.weights.h5", "hrnet_tiny_ocr"]),
        (predict.main, [str(t / "img.png"), "--weights", str(t / "model.weights.h5")], ["--model"]),
        (predict.main, [str(t / "img.png"), "--weights", str(t / "img.png"), "--model", "hrnet_tiny_ocr"],
         ["img.png is not a model file", ".weights.h5"]),
        (export.main, ["--weights", str(t / "model.keras"), "--format", "saved_model", "--output",
                       str(t / "a_file" / "sub")], ["a_file"]),
        (predict.main, [str(t / "img.png"), "--weights", str(t / "model.keras"), "--mode", "slide"], ["--crop-size"]),
        (train.main, ["--config", str(t / "nope.yaml")], ["nope.yaml"]),
    ]
    for main, argv, needles in cases:
        assert main(argv) == 2, argv
        one_error_line(capsys, *needles)


def test_existing_version_and_empty_saved_model_folder(files, capsys):
    t = files
    assert export.main(["--weights", str(t / "model.keras"), "--format", "saved_model", "--output", str(t / "sm")]) == 0
    capsys.readouterr()
    assert export.main(["--weights", str(t / "model.keras"), "--format", "saved_model", "--output", str(t / "sm"),
                        "--version", "1"]) == 2
    one_error_line(capsys, "already exists", "--version")
    (t / "empty").mkdir()
    (t / "empty" / "7").mkdir()
    assert predict.main([str(t / "img.png"), "--weights", str(t / "empty")]) == 2
    one_error_line(capsys, "empty")


def test_debug_shows_the_traceback(files):
    from ocr_tf.errors import UserError

    with pytest.raises(UserError, match="missing.png"):
        predict.main([str(files / "missing.png"), "--weights", str(files / "model.keras"), "--debug"])


def run_cli(*args, timeout=600):
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, env=ENV, timeout=timeout, cwd=ROOT)


def test_a_real_command_prints_no_tensorflow_start_up_noise(files):
    proc = run_cli("-m", "ocr_tf.predict", str(files / "img.png"), "--weights", str(files / "missing.keras"))
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert lines == [f"error: weights {files / 'missing.keras'} not found (expected a .keras file, a preset "
                     "folder or a .weights.h5 file)."], proc.stderr


def test_tensorflow_only_commands_name_the_backend_on_another_one(files):
    """predict / evaluate / export run TensorFlow graphs: on JAX they stop with one line saying how
    to run them (before: a NotImplementedError traceback from tf.function)."""
    env = dict(ENV, KERAS_BACKEND="jax")
    proc = subprocess.run([sys.executable, "-m", "ocr_tf.predict", str(files / "img.png"), "--weights",
                           str(files / "model.keras")], capture_output=True, text=True, env=env, timeout=600, cwd=ROOT)
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = proc.stderr.strip().splitlines()
    assert lines == ["error: python -m ocr_tf.predict needs the TensorFlow backend (KERAS_BACKEND is jax): run it "
                     "with KERAS_BACKEND=tensorflow; a .keras model trained on jax loads there unchanged"], proc.stderr


@pytest.mark.parametrize("verb", ["train", "evaluate", "predict", "export"])
def test_help_does_not_import_tensorflow(verb):
    proc = run_cli("-X", "importtime", "-m", f"ocr_tf.{verb}", "--help", timeout=120)
    assert proc.returncode == 0 and "usage: python -m ocr_tf." in proc.stdout
    imported = {line.split("|")[-1].strip() for line in proc.stderr.splitlines() if "|" in line}
    assert "tensorflow" not in imported and "keras" not in imported, sorted(imported)[:50]


def test_a_whole_module_or_a_truncated_pth_is_named_with_the_fix(tmp_path, capsys):
    """torch's weights_only refusal of a pickled nn.Module becomes the hint to save state_dict()."""
    import torch

    from ocr_tf.cli import convert

    torch.save(torch.nn.Linear(2, 2), tmp_path / "module.pth")
    assert convert.main(["--checkpoint", str(tmp_path / "module.pth"), "--model", "hrnet_w18_ocr",
                         "--num-classes", "3", "--out", str(tmp_path / "o")]) == 2
    one_error_line(capsys, "module.pth", "state_dict()")
    torch.save({"w": torch.zeros(64, 64)}, tmp_path / "full.pth")
    data = (tmp_path / "full.pth").read_bytes()
    (tmp_path / "cut.pth").write_bytes(data[: len(data) // 2])
    assert convert.main(["--checkpoint", str(tmp_path / "cut.pth"), "--model", "hrnet_w18_ocr",
                         "--num-classes", "3", "--out", str(tmp_path / "o")]) == 2
    one_error_line(capsys, "cut.pth")
    assert not (tmp_path / "o").exists()


def test_running_out_of_memory_is_one_line_naming_the_limit(files):
    # The CPU's BFC allocator (ocr_tf/runtime.py) stops at its limit with ResourceExhaustedError.
    Image.fromarray(np.zeros((512, 512, 3), np.uint8)).save(files / "big.png")
    env = dict(ENV, TF_CPU_ALLOCATOR_USE_BFC="true", TF_CPU_BFC_MEM_LIMIT_IN_MB="8")
    proc = subprocess.run([sys.executable, "-m", "ocr_tf.predict", str(files / "big.png"), "--weights",
                           str(files / "model.keras"), "--output", str(files / "oom_out")],
                          capture_output=True, text=True, env=env, timeout=600, cwd=ROOT)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-2000:]
    line = proc.stderr.strip().splitlines()[-1]  # after the progress bar
    assert line.startswith("error: out of memory: OOM when allocating tensor with shape[1,512,512,3]"), line
    assert "TF_CPU_BFC_MEM_LIMIT_IN_MB=8 (MiB)" in line
    assert not any(s in line for s in ("/job:", "{{", "[Op:")), line


def test_out_of_memory_errors_of_every_backend_are_recognised():
    from ocr_tf.cli.common import out_of_memory_line

    class OutOfMemoryError(RuntimeError):  # PyTorch's name
        pass

    assert out_of_memory_line(ValueError("shape mismatch")) is None
    assert out_of_memory_line(RuntimeError("a bug")) is None
    jax = out_of_memory_line(RuntimeError("RESOURCE_EXHAUSTED: Out of memory while trying to allocate 1.00GiB."))
    assert jax.startswith("out of memory: RESOURCE_EXHAUSTED: Out of memory while trying to allocate 1.00GiB. Use")
    torch = out_of_memory_line(OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"))
    assert torch.startswith("out of memory: CUDA out of memory. Tried to allocate 2.00 GiB.") and "train.batch_size" in torch
    numpy = out_of_memory_line(MemoryError("Unable to allocate 12.0 GiB for an array with shape (3, 1073741824)"))
    assert numpy.startswith("out of memory: Unable to allocate 12.0 GiB for an array with shape (3, 1073741824). Use")
