"""Output folders: creating them (a clear error when that cannot be), and removing the
temporary files a killed process of ours left in them.

Every write in ocr_tf goes to a temporary name and is renamed when complete, so a kill never
leaves a half-written file under a real name; it does leave the temporary. Those names carry
the writer's process id: `<name>.tmp-<pid>` / `<name>.tmp-<pid>.<ext>` (shards, JSON, weights,
.keras) and the export folders `.tmp-<version>-<pid>-*` and `.tflite-export-<pid>-*`.
`remove_stale(folder)` deletes the ones whose process is gone; the next conversion, training
run or export calls it on its output folder. Limitation: the pid is checked on this machine, so on a folder shared by several
machines a temporary of a live writer elsewhere could look stale; our multi-machine writers
(the chief of a multi-worker run) write from one machine only.
"""

import os
import re
import shutil

# `x.tfrecord.tmp-123`, `best.tmp-123.weights.h5`, `best.json.tmp-123`; folders `.tmp-3-123-abcd1234`
# (SavedModel version 3 by pid 123) and `.tflite-export-123-abcd1234`
_FILE = re.compile(r"\.tmp-(\d+)(?:\.|$)")
_EXPORT_DIR = re.compile(r"^\.(?:tmp-\d+|tflite-export)-(\d+)-")


def ensure_output_dir(path, what):
    """`os.makedirs(path)`, or a UserError naming `what` (e.g. '--out') and the part of the path
    that is in the way (a file where a folder should be, no permission)."""
    from ocr_tf.errors import UserError

    try:
        os.makedirs(path, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        blocker = path
        while blocker and not os.path.exists(blocker):
            blocker = os.path.dirname(blocker)
        raise UserError(f"{what} {path}: {blocker or path} is a file, expected a folder") from None
    except PermissionError:
        raise UserError(f"{what} {path}: no permission to create or write this folder") from None
    return path


def pid_alive(pid):
    """Whether process `pid` exists on this machine (a process we may not signal still exists)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def owner_pid(name):
    """The writer's pid encoded in one of our temporary names, else None."""
    match = _EXPORT_DIR.match(name) or _FILE.search(name)
    return int(match.group(1)) if match else None


def remove_stale(folder, recursive=False):
    """Delete our temporaries in `folder` whose writing process is no longer alive.

    Args:
      folder: the output folder of a conversion, run or export (missing is fine).
      recursive: also look in sub-folders (a run folder's checkpoints/ and backup/).
    Returns the removed paths. Files of live processes (ours included) are kept.
    """
    removed = []
    if not os.path.isdir(folder):
        return removed
    for entry in os.scandir(folder):
        pid = owner_pid(entry.name)
        if pid is not None and pid != os.getpid() and not pid_alive(pid):
            try:
                if entry.is_dir(follow_symlinks=False):
                    shutil.rmtree(entry.path)
                else:
                    os.remove(entry.path)
                removed.append(entry.path)
            except FileNotFoundError:  # another process cleaned it first
                pass
        elif recursive and entry.is_dir(follow_symlinks=False):
            removed += remove_stale(entry.path, recursive=True)
    return removed
