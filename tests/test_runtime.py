"""`import ocr_tf` asks TensorFlow for its caching CPU allocator (ocr_tf/runtime.py, issue 13)."""

import os
import subprocess
import sys

import pytest

from ocr_tf import runtime

# Which allocator TensorFlow made: only the BFC allocator keeps statistics on the CPU.
PROBE = """
import ocr_tf, os
import tensorflow as tf
(tf.ones([64, 64]) * 2.0).numpy()
try:
    tf.config.experimental.get_memory_info("CPU:0")
    print("ALLOCATOR bfc", os.environ.get("TF_CPU_BFC_MEM_LIMIT_IN_MB"))
except ValueError:
    print("ALLOCATOR default")
"""


def _probe():
    env = {k: v for k, v in os.environ.items() if not k.startswith("TF_CPU_")}
    env["TF_CPP_MIN_LOG_LEVEL"] = "3"
    proc = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    (line,) = [ln for ln in proc.stdout.splitlines() if ln.startswith("ALLOCATOR ")]
    return line.split()[1:]


def test_sets_the_allocator_and_a_limit_of_the_machines_memory():
    env = {}
    assert runtime.use_bfc_cpu_allocator(env) is True
    ram = runtime.physical_memory_mib()
    assert ram and ram > 64  # this test runs on Linux, where sysconf knows the RAM
    assert env == {"TF_CPU_ALLOCATOR_USE_BFC": "true", "TF_CPU_BFC_MEM_LIMIT_IN_MB": str(ram)}


@pytest.mark.parametrize("value, expected", [("false", False), ("0", False), ("True", True), ("1", True)])
def test_the_users_choice_is_kept(value, expected):
    env = {"TF_CPU_ALLOCATOR_USE_BFC": value}
    assert runtime.use_bfc_cpu_allocator(env) is expected
    assert env == {"TF_CPU_ALLOCATOR_USE_BFC": value}  # neither flag nor limit touched


def test_the_users_limit_is_kept():
    env = {"TF_CPU_BFC_MEM_LIMIT_IN_MB": "512"}
    runtime.use_bfc_cpu_allocator(env)
    assert env == {"TF_CPU_ALLOCATOR_USE_BFC": "true", "TF_CPU_BFC_MEM_LIMIT_IN_MB": "512"}


def test_importing_ocr_tf_gives_tensorflow_the_bfc_allocator():
    assert _probe() == ["bfc", str(runtime.physical_memory_mib())]
