"""TensorFlow process settings that ocr_tf chooses by measurement: the CPU memory allocator.

TensorFlow's default CPU allocator takes every tensor from malloc, and glibc's malloc maps large
blocks (feature maps of a few MB and up) fresh from the kernel and unmaps them on free.
So every step of a segmentation network maps fresh pages and page-faults on first touch: one
HRNet-W48-OCR training step at 512 x 1024 took 1.14 million minor faults (4.4 GB zeroed by the
kernel) and spent a quarter of its time there. TensorFlow's BFC allocator (the one it uses on GPUs)
keeps freed blocks and reuses them, so after the first step there are almost no faults: 38.5 ->
29.2 s per step on one core of an AMD EPYC, 9,500 faults a step, peak memory +7% (BENCHMARKS.md,
issue 13). TensorFlow turns it on for the CPU with `TF_CPU_ALLOCATOR_USE_BFC=true`, read once,
when it makes its CPU allocator at the first op, so `import ocr_tf` sets it unless the user has
already set it; a process that ran TensorFlow ops before importing ocr_tf keeps its allocator.

To keep TensorFlow's default: `TF_CPU_ALLOCATOR_USE_BFC=false` in the environment.
"""

import os

ALLOCATOR_FLAG = "TF_CPU_ALLOCATOR_USE_BFC"
LIMIT_FLAG = "TF_CPU_BFC_MEM_LIMIT_IN_MB"


def physical_memory_mib():
    """This machine's RAM in MiB, or None where the OS does not say (e.g. Windows)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2**20
    except (AttributeError, ValueError, OSError):
        return None


def use_bfc_cpu_allocator(environ=None):
    """Ask TensorFlow for its caching (BFC) CPU allocator, unless `environ` already says.

    The BFC allocator refuses to grow past `TF_CPU_BFC_MEM_LIMIT_IN_MB`, 64 GiB by default, a
    limit malloc does not have; so it is set to the machine's RAM unless given, and a big-memory
    machine can still use all of it.

    Args:
        environ: the environment to update (default `os.environ`: it must be set before
            TensorFlow runs its first op).

    Returns:
        True when the BFC allocator is asked for (by this call or already by the user).

    Example:
        >>> env = {}
        >>> use_bfc_cpu_allocator(env), env["TF_CPU_ALLOCATOR_USE_BFC"]
        (True, 'true')
    """
    environ = os.environ if environ is None else environ
    if ALLOCATOR_FLAG not in environ:
        environ[ALLOCATOR_FLAG] = "true"
        ram = physical_memory_mib()
        if ram and LIMIT_FLAG not in environ:
            environ[LIMIT_FLAG] = str(ram)
    return environ[ALLOCATOR_FLAG].strip().lower() in ("1", "true")
