"""Every Keras backend: the TensorFlow process (this one) writes tiny models of every head
family as `.keras` files, their inputs and TensorFlow outputs, and one training step's result;
then `backend_checks.py` runs in one subprocess per backend (KERAS_BACKEND is fixed per
process) and checks against them, against the NumPy references and the official fixture.

JAX runs with 2 host CPU devices (XLA_FLAGS) for the `keras.distribution.DataParallel` check,
and with XLA's backend optimisation off (compiling, not running, is where its time goes).
"""

import importlib.util
import os
import subprocess
import sys
import tempfile

import keras
import numpy as np
import pytest

import cases

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))


def write_cases(out):
    """TensorFlow's answers into folder `out`: <name>.keras and <name>.npz (inputs, eval-mode
    outputs) for every head (cases.head_models) and, under models/, for the ResNet and
    MobileNetV2 models (cases.backbone_models); train_step.npz (weights before / after one `fit`
    step of the OCR head + loss + SGD + PolyLR)."""
    assert keras.backend.backend() == "tensorflow"
    os.makedirs(os.path.join(out, "models"), exist_ok=True)
    for folder, models in (("", cases.head_models()), ("models", cases.backbone_models())):
        for name, model in models.items():
            cases.randomize(model)
            x = cases.inputs_for(model)
            y = {k: keras.ops.convert_to_numpy(v) for k, v in model(x, training=False).items()}
            model.save(os.path.join(out, folder, f"{name}.keras"))
            xs = x if isinstance(x, list) else [x]
            np.savez(os.path.join(out, folder, f"{name}.npz"), **{f"x{i}": v for i, v in enumerate(xs)}, **y)
    network = cases.head_models()["ocr_hrnet"]
    cases.randomize(network, seed=3)
    before = [w.numpy() for w in network.weights]
    x, y = cases.train_batch()
    trainer = cases.trainer_for(network)
    history = trainer.fit(x, y, batch_size=2, epochs=1, shuffle=False, verbose=0)
    after = [w.numpy() for w in network.weights]
    np.savez(
        os.path.join(out, "train_step.npz"),
        loss=history.history["loss"][0],
        **{f"before_{i}": v for i, v in enumerate(before)},
        **{f"after_{i}": v for i, v in enumerate(after)},
    )
    return out


@pytest.fixture(scope="module")
def case_dir(tmp_path_factory):
    return write_cases(str(tmp_path_factory.mktemp("backend_cases")))


def child_env(backend, case_dir):
    env = dict(os.environ, KERAS_BACKEND=backend, OCR_TF_BACKEND_CASES=str(case_dir), TF_CPP_MIN_LOG_LEVEL="3")
    if backend == "jax":
        # 2 host devices for DataParallel; XLA compiles every new shape (initializers, eager ops,
        # predict) and these programs are tiny: optimisation level 0 halves the run (checks unchanged).
        env["JAX_PLATFORMS"] = "cpu"
        # ... and a persistent compilation cache: a second run on this machine compiles nothing again
        env.setdefault("JAX_COMPILATION_CACHE_DIR", os.path.join(tempfile.gettempdir(), "ocr_tf_tests_jax_cache"))
        env.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
        env.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")
        env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=2"
                            " --xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true").strip()
    return env


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["jax", "torch"])
def test_backend_matches_tensorflow_numpy_and_the_official_fixture(backend, case_dir):
    if importlib.util.find_spec(backend) is None:
        pytest.skip(f"{backend} is not installed (pip install -e '.[{backend}]')")
    env = child_env(backend, case_dir)
    # "-n 0": one process (the suite runs under pytest-xdist; this child needs its 2 JAX devices itself)
    cmd = [sys.executable, "-m", "pytest", "-q", "-n", "0", "-p", "no:cacheprovider", os.path.join(HERE, "backend_checks.py")]
    run = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=1800)
    assert run.returncode == 0, f"{backend} checks failed:\n{run.stdout[-6000:]}\n{run.stderr[-3000:]}"
    assert " passed" in run.stdout and " failed" not in run.stdout, run.stdout[-2000:]


if __name__ == "__main__":  # profiling: python tests/backend/test_backends.py <folder> writes the cases
    write_cases(sys.argv[1])
