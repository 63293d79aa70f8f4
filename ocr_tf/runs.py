"""Run folders: one training run per folder, never two runs mixed in it.

A run folder (`output.dir`) holds one run. Its state is `<run>/run.json`, written atomically:
`{"run_id", "status": "running" | "finished", "started", "finished", "result"}`.

Running `python -m ocr_tf.train` again with the same folder:
* unfinished run (killed, crashed, or stopped): it resumes from its backup (the default);
* finished run: nothing is trained; the command prints the run's result and where its files
  are, and exits 0 (a finished folder from before run.json existed is recognised by its
  checkpoints and the absence of a backup);
* `--new-run`: the old folder is moved aside to `<run>.previous-<UTC time>` (nothing is
  deleted) and a new run starts in an empty folder. The move happens only once the config,
  data and model are checked, so a failing command never leaves the old run moved. (In a
  multi-worker run give a new `output.dir` instead: workers may read the old folder first.)

The best checkpoint is one set: `checkpoints/best.weights.h5`, `best.keras` and `best.json`,
where `best.json` is the manifest, written last, naming the run and the SHA-256 of the other
two. `verify_best_set` says whether the files on disk are that set (a kill between two renames,
or a file copied in from elsewhere, shows up as a mismatch).
"""

import datetime
import json
import os
import uuid

from ocr_tf.errors import UserError
from ocr_tf.files import file_sha256, write_json_atomic

STATE_FILE = "run.json"
FRESH, RESUME, FINISHED = "fresh", "resume", "finished"


def _now():
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def read_state(run_dir):
    """The run's `run.json` as a dict, {} when there is none."""
    path = os.path.join(run_dir, STATE_FILE)
    if not os.path.exists(path):
        return {}
    try:
        with open(path) as f:
            return json.load(f)
    except (ValueError, OSError) as e:
        raise UserError(f"run state {path} is unreadable ({e}); move the folder aside or pass --new-run") from None


def _legacy_finished(run_dir):
    """A folder of a finished run made before run.json: checkpoints but no backup left."""
    ckpt = os.path.join(run_dir, "checkpoints")
    has_checkpoints = any(os.path.exists(os.path.join(ckpt, n)) for n in ("best.json", "last.weights.h5"))
    return has_checkpoints and not os.path.isdir(os.path.join(run_dir, "backup"))


def status(run_dir):
    """FRESH (nothing of a run yet), RESUME (an unfinished run) or FINISHED."""
    if not os.path.isdir(run_dir):
        return FRESH
    state = read_state(run_dir)
    if state.get("status") == "finished" or (not state and _legacy_finished(run_dir)):
        return FINISHED
    if state or os.path.isdir(os.path.join(run_dir, "backup")):
        return RESUME
    return FRESH


class RunPlan:
    """What `prepare` decided: `action` (FRESH/RESUME/FINISHED), the `run_id`, whether an existing
    run must be moved aside first (`new_run`), and, for a finished run, its `state`. `moved_to`
    is set by `start` when it moved one."""

    def __init__(self, action, run_id, new_run=False, state=None):
        self.action, self.run_id, self.new_run, self.state = action, run_id, new_run, state or {}
        self.moved_to = None


def move_aside(run_dir):
    """Rename `run_dir` to `<run_dir>.previous-<UTC time>` (a number added if taken); returns it."""
    base = f"{os.path.normpath(run_dir)}.previous-{_now().replace(':', '')}"
    target, n = base, 1
    while os.path.exists(target):
        n += 1
        target = f"{base}-{n}"
    os.rename(run_dir, target)
    return target


def prepare(run_dir, new_run=False):
    """Decide how a training command uses `run_dir`; reads only (call it before anything heavy).

    Args:
      run_dir: the run folder (`output.dir`).
      new_run: start over: `start` moves an existing run (finished or not) aside first.
    Returns a RunPlan. A FINISHED plan means: do not train, report `plan.state`.
    """
    current = status(run_dir)
    if new_run:
        return RunPlan(FRESH, uuid.uuid4().hex[:12], new_run=True)
    if current == FINISHED:
        return RunPlan(FINISHED, read_state(run_dir).get("run_id"), state=finished_state(run_dir))
    if current == RESUME:
        return RunPlan(RESUME, read_state(run_dir).get("run_id") or uuid.uuid4().hex[:12])
    return RunPlan(FRESH, uuid.uuid4().hex[:12])


def start(run_dir, plan):
    """Chief only, once the data and model are known good: move an old run aside for --new-run
    (`plan.moved_to`), then mark the run as running (a resumed run keeps its first start time)."""
    if plan.new_run and os.path.isdir(run_dir) and os.listdir(run_dir):
        plan.moved_to = move_aside(run_dir)
    from ocr_tf.temporaries import ensure_output_dir

    ensure_output_dir(run_dir, "output.dir")
    state = read_state(run_dir)
    state.update({"run_id": plan.run_id, "status": "running", "started": state.get("started") or _now()})
    state.setdefault("resumed", 0)
    if plan.action == RESUME:
        state["resumed"] += 1
    write_json_atomic(os.path.join(run_dir, STATE_FILE), state)


def finish(run_dir, result):
    """Mark the run as finished with its `result` (best mIoU, files); a rerun reports it."""
    state = read_state(run_dir)
    state.update({"status": "finished", "finished": _now(), "result": result})
    write_json_atomic(os.path.join(run_dir, STATE_FILE), state)


def finished_state(run_dir):
    """run.json of a finished run, or for an older folder what its checkpoints say."""
    state = read_state(run_dir)
    if state.get("status") == "finished":
        return state
    ckpt = os.path.join(run_dir, "checkpoints")
    result = {}
    best = os.path.join(ckpt, "best.json")
    if os.path.exists(best):
        with open(best) as f:
            result["best"] = json.load(f)
    for name, key in (("best.keras", "keras_model"), ("best.weights.h5", "checkpoint")):
        if os.path.exists(os.path.join(ckpt, name)):
            result[key] = os.path.join(ckpt, name)
    return {"status": "finished", "result": result, "legacy": True}


def describe_finished(run_dir, state):
    """The lines a rerun of a finished run prints."""
    result = state.get("result", {})
    best = result.get("best") or {}
    lines = [f"Run {os.path.abspath(run_dir)} is already finished"
             + (f" ({state['finished']})" if state.get("finished") else "") + "; nothing to do."]
    if best.get("val_miou") is not None:
        lines.append(f"  best validation mIoU {100 * best['val_miou']:.2f}% at step {best.get('step')}")
    if result.get("miou") is not None:
        lines.append(f"  final evaluation mIoU {100 * result['miou']:.2f}%")
    for key, label in (("keras_model", "model (.keras)"), ("checkpoint", "weights"), ("exports", "exports")):
        value = result.get(key)
        if isinstance(value, dict):
            for kind, path in value.items():
                lines.append(f"  {label} {kind}: {os.path.abspath(path) if os.path.exists(path) else path}")
        elif value:
            lines.append(f"  {label}: {os.path.abspath(value)}")
    lines.append("  To train again: --new-run (moves this run to <folder>.previous-<time>) or another --output-dir.")
    return "\n".join(lines)


# ------------------------------------------------------------------------------ the best set


def write_best_manifest(ckpt_dir, info, run_id, names=("best.weights.h5",)):
    """Write `best.json` (the manifest, last) = `info` + run id + the SHA-256 of `names`."""
    files = {n: file_sha256(os.path.join(ckpt_dir, n)) for n in names if os.path.exists(os.path.join(ckpt_dir, n))}
    write_json_atomic(os.path.join(ckpt_dir, "best.json"), {**info, "run_id": run_id, "files": files})


def verify_best_set(ckpt_dir):
    """[] when best.json's manifest matches the files on disk, else the mismatches (named)."""
    path = os.path.join(ckpt_dir, "best.json")
    if not os.path.exists(path):
        return []
    with open(path) as f:
        manifest = json.load(f)
    problems = []
    for name, digest in manifest.get("files", {}).items():
        file = os.path.join(ckpt_dir, name)
        if not os.path.exists(file):
            problems.append(f"{file} is missing")
        elif file_sha256(file) != digest:
            problems.append(f"{file} is not the one {path} names (another step or run)")
    return problems
