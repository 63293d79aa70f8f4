"""File helpers every part of ocr_tf shares: where the cache lives, atomic writes, a file's SHA-256.

Every write goes to `<path>.tmp-<pid>` and is renamed over `path` when complete, so a crash or
kill never leaves a half-written file under the real name; the leftover temporary carries the
writer's pid, which `ocr_tf.temporaries.remove_stale` recognises and removes later.
"""

import hashlib
import json
import os


def cache_root():
    """Where ocr_tf keeps what it downloads or generates (demo data, presets): $OCR_TF_CACHE,
    else ~/.cache/ocr_tf."""
    return os.environ.get("OCR_TF_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "ocr_tf")


def write_atomic(path, data):
    """Write bytes (or text, as UTF-8) to `path` through `<path>.tmp-<pid>`, renamed when complete.

    Args:
      path: the destination.
      data: bytes, or a str written as UTF-8.
    """
    if isinstance(data, str):
        data = data.encode("utf-8")
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def write_json_atomic(path, obj, indent=1):
    """`obj` as JSON to `path`, atomically (see `write_atomic`)."""
    write_atomic(path, json.dumps(obj, indent=indent))


def file_sha256(path):
    """The hex SHA-256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
