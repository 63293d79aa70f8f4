"""Run folders (ocr_tf.runs) and stale temporaries (ocr_tf.temporaries): a finished run is
reported, not retrained; --new-run moves the old run aside; the best set is one run's; the next
run / conversion removes what a killed process left."""

import hashlib
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from ocr_tf import runs, temporaries
from test_train import demo_cache, tiny_overrides  # noqa: F401 (a fixture, shared)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture()
def dead_pid():
    """The pid of a process that has exited (and been reaped)."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


# ------------------------------------------------------------------------------ temporaries


def test_stale_temporaries_of_dead_processes_are_removed(tmp_path, dead_pid):
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        stale = [f"train-00000-of-00002.tfrecord.tmp-{dead_pid}", f"train-info.json.tmp-{dead_pid}",
                 f"best.tmp-{dead_pid}.weights.h5", f"best.tmp-{dead_pid}.keras"]
        kept = [f"train-00001-of-00002.tfrecord.tmp-{live.pid}", f"x.tfrecord.tmp-{os.getpid()}",
                "train-00000-of-00002.tfrecord", "notes.tmp.txt", "tmp-123"]
        for name in stale + kept:
            (tmp_path / name).write_bytes(b"x")
        (tmp_path / f".tmp-3-{dead_pid}-abcd1234" / "variables").mkdir(parents=True)  # a killed export
        (tmp_path / f".tflite-export-{dead_pid}-x1y2").mkdir()
        (tmp_path / f".tmp-4-{live.pid}-efgh5678").mkdir()  # an export in progress
        (tmp_path / "checkpoints").mkdir()
        (tmp_path / "checkpoints" / f"last.tmp-{dead_pid}.weights.h5").write_bytes(b"x")

        removed = temporaries.remove_stale(str(tmp_path))
        assert sorted(os.path.basename(p) for p in removed) == sorted(
            stale + [f".tmp-3-{dead_pid}-abcd1234", f".tflite-export-{dead_pid}-x1y2"])
        assert sorted(os.listdir(tmp_path)) == sorted(kept + [f".tmp-4-{live.pid}-efgh5678", "checkpoints"])
        assert (tmp_path / "checkpoints" / f"last.tmp-{dead_pid}.weights.h5").exists()  # not recursive
        assert temporaries.remove_stale(str(tmp_path), recursive=True) == [
            str(tmp_path / "checkpoints" / f"last.tmp-{dead_pid}.weights.h5")]
    finally:
        live.kill()
        live.wait()


def test_owner_pid_of_our_temporary_names():
    assert temporaries.owner_pid("a.tfrecord.tmp-123") == 123
    assert temporaries.owner_pid("best.tmp-45.weights.h5") == 45
    assert temporaries.owner_pid(".tmp-7-890-k2j3") == 890
    assert temporaries.owner_pid(".tflite-export-66-abc") == 66
    assert temporaries.owner_pid("photo.png") is None and temporaries.owner_pid(".tmp-7-k2j3") is None


def test_the_next_conversion_removes_a_killed_conversions_shards(tmp_path, dead_pid):
    from PIL import Image

    from ocr_tf.data import convert

    root, out = tmp_path / "d", tmp_path / "out"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    (root / "classes.txt").write_text("a\nb\n")
    Image.fromarray(np.zeros((24, 32, 3), np.uint8)).save(root / "images" / "0.png")
    Image.fromarray(np.eye(24, 32, dtype=np.uint8)).save(root / "masks" / "0.png")
    out.mkdir()
    leftover = out / f"train-00000-of-00001.tfrecord.tmp-{dead_pid}"
    leftover.write_bytes(b"half a shard")
    assert convert.main(["folder", "--root", str(root), "--out", str(out), "--no-progress"]) == 0
    assert sorted(os.listdir(out)) == ["train-00000-of-00001.tfrecord", "train-info.json"]


# ------------------------------------------------------------------------------ run states


def _finished_run(run_dir, run_id="abc"):
    ckpt = run_dir / "checkpoints"
    ckpt.mkdir(parents=True)
    (ckpt / "best.weights.h5").write_bytes(b"weights")
    (ckpt / "best.keras").write_bytes(b"model")
    runs.write_best_manifest(str(ckpt), {"val_miou": 0.5, "step": 6}, run_id, ("best.weights.h5", "best.keras"))
    (run_dir / runs.STATE_FILE).write_text(json.dumps({"run_id": run_id, "status": "running"}))
    runs.finish(str(run_dir), {"best": {"val_miou": 0.5, "step": 6}, "keras_model": str(ckpt / "best.keras")})


def test_run_states(tmp_path):
    run_dir = tmp_path / "run"
    assert runs.status(str(run_dir)) == runs.FRESH
    plan = runs.prepare(str(run_dir))
    assert plan.action == runs.FRESH and len(plan.run_id) == 12
    runs.start(str(run_dir), plan)
    assert runs.status(str(run_dir)) == runs.RESUME  # started, not finished: a rerun resumes
    again = runs.prepare(str(run_dir))
    assert again.action == runs.RESUME and again.run_id == plan.run_id  # the same run continues
    runs.finish(str(run_dir), {"best": {"val_miou": 0.25, "step": 3}})
    done = runs.prepare(str(run_dir))
    assert done.action == runs.FINISHED and done.state["result"]["best"]["val_miou"] == 0.25
    text = runs.describe_finished(str(run_dir), done.state)
    assert "is already finished" in text and "best validation mIoU 25.00% at step 3" in text and "--new-run" in text


def test_legacy_finished_folder_is_recognised(tmp_path):
    run_dir = tmp_path / "old"
    (run_dir / "checkpoints").mkdir(parents=True)
    (run_dir / "checkpoints" / "best.json").write_text(json.dumps({"val_miou": 0.4, "epoch": 2, "step": 6}))
    (run_dir / "checkpoints" / "best.weights.h5").write_bytes(b"w")
    assert runs.status(str(run_dir)) == runs.FINISHED
    (run_dir / "backup").mkdir()  # a backup left: the run was interrupted
    assert runs.status(str(run_dir)) == runs.RESUME


def test_new_run_moves_the_old_run_aside(tmp_path):
    run_dir = tmp_path / "run"
    _finished_run(run_dir)
    plan = runs.prepare(str(run_dir), new_run=True)
    assert plan.action == runs.FRESH and run_dir.exists()  # prepare only reads
    runs.start(str(run_dir), plan)
    assert os.path.basename(plan.moved_to).startswith("run.previous-")
    assert (tmp_path / os.path.basename(plan.moved_to) / "checkpoints" / "best.keras").read_bytes() == b"model"
    assert os.listdir(run_dir) == ["run.json"]
    assert json.loads((run_dir / "run.json").read_text())["run_id"] == plan.run_id != "abc"


def test_best_set_manifest_catches_files_of_another_step_or_run(tmp_path):
    run_dir = tmp_path / "run"
    _finished_run(run_dir)
    ckpt = str(run_dir / "checkpoints")
    assert runs.verify_best_set(ckpt) == []
    manifest = json.loads((run_dir / "checkpoints" / "best.json").read_text())
    assert manifest["run_id"] == "abc" and set(manifest["files"]) == {"best.weights.h5", "best.keras"}
    (run_dir / "checkpoints" / "best.keras").write_bytes(b"another run's model")
    assert runs.verify_best_set(ckpt) == [f"{ckpt}/best.keras is not the one {ckpt}/best.json names "
                                          "(another step or run)"]


# ------------------------------------------------------------------------------ the train command


def test_rerun_of_a_finished_run_is_reported_without_tensorflow(tmp_path, capsys):
    from ocr_tf.cli.train import main

    run_dir = tmp_path / "run"
    _finished_run(run_dir)
    stamps = {p: os.stat(p).st_mtime_ns for p in (run_dir / "checkpoints").iterdir()}
    assert main(["--output-dir", str(run_dir), "--set", "data.num_classes=8"]) == 0
    out = capsys.readouterr().out
    assert f"Run {run_dir} is already finished" in out and "best validation mIoU 50.00% at step 6" in out
    assert f"model (.keras): {run_dir / 'checkpoints' / 'best.keras'}" in out and "--new-run" in out
    assert {p: os.stat(p).st_mtime_ns for p in stamps} == stamps  # nothing touched
    result = subprocess.run([sys.executable, "-X", "importtime", "-m", "ocr_tf.train", "--output-dir", str(run_dir)],
                            capture_output=True, text=True, cwd=ROOT)
    imported = {line.split("|")[-1].strip() for line in result.stderr.splitlines() if "|" in line}
    assert result.returncode == 0 and "already finished" in result.stdout, result.stderr[-2000:]
    assert "tensorflow" not in imported


def test_new_run_that_fails_its_checks_leaves_the_old_run_in_place(tmp_path, capsys):
    from ocr_tf.cli.train import main

    run_dir = tmp_path / "run"
    _finished_run(run_dir)
    args = ["--output-dir", str(run_dir), "--new-run", "--set", "data.dataset=cityscapes", "data.num_classes=19",
            f"data.train={tmp_path}/nope-*.tfrecord"]
    assert main(args) == 2
    assert "no TFRecord files match" in capsys.readouterr().err
    assert runs.status(str(run_dir)) == runs.FINISHED and not any(p.name.startswith("run.previous")
                                                                   for p in tmp_path.iterdir())


@pytest.mark.slow
def test_a_finished_run_holds_one_best_set_and_is_not_retrained(tmp_path, capsys, dead_pid, demo_cache):
    from ocr_tf.cli.train import main

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / f"training_log.csv.tmp-{dead_pid}").write_text("left by a killed run")
    args = tiny_overrides(str(run_dir), iterations=2, steps_per_epoch=2,
                          extra=["data.val_steps=1", "train.tensorboard_images=0"])
    assert main(args) == 0
    assert not (run_dir / f"training_log.csv.tmp-{dead_pid}").exists()  # cleaned by the next run
    ckpt = run_dir / "checkpoints"
    state = json.loads((run_dir / "run.json").read_text())
    best = json.loads((ckpt / "best.json").read_text())
    assert state["status"] == "finished" and best["run_id"] == state["run_id"]
    assert set(best["files"]) == {"best.weights.h5", "best.keras"}
    assert runs.verify_best_set(str(ckpt)) == []  # best.weights.h5 and best.keras: this run's set
    stamps = {n: os.stat(ckpt / n).st_mtime_ns for n in ("best.weights.h5", "best.keras", "best.json")}
    capsys.readouterr()
    assert main(args) == 0  # finished: reported, nothing trained or overwritten
    out = capsys.readouterr().out
    assert f"Run {run_dir} is already finished" in out and f"at step {best['step']}" in out
    assert {n: os.stat(ckpt / n).st_mtime_ns for n in stamps} == stamps


@pytest.mark.slow
def test_training_on_a_damaged_shard_names_it(tmp_path, capsys, demo_cache):
    from ocr_tf.cli.train import main

    shard = tmp_path / "train-00000-of-00001.tfrecord"
    shard.write_bytes(np.random.default_rng(0).bytes(2000))
    args = tiny_overrides(str(tmp_path / "run"), iterations=2, steps_per_epoch=2,
                          extra=[f"data.train={shard}", "data.val=null", "train.tensorboard_images=0"])
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: shard {shard} is damaged at record 0 (corrupted record at 0")
    assert "data.skip_bad: true" in err and "Traceback" not in err


def test_an_output_folder_under_a_file_is_named(tmp_path):
    (tmp_path / "afile").write_text("x")
    from ocr_tf.errors import UserError

    with pytest.raises(UserError, match=rf"--out {tmp_path}/afile/out: {tmp_path}/afile is a file, expected a folder"):
        temporaries.ensure_output_dir(str(tmp_path / "afile" / "out"), "--out")
    plan = runs.prepare(str(tmp_path / "afile" / "run"))
    with pytest.raises(ValueError, match=r"output\.dir .*afile/run: .*afile is a file, expected a folder"):
        runs.start(str(tmp_path / "afile" / "run"), plan)


def test_atomic_writes_leave_no_temporary_and_keep_the_old_file_on_failure(tmp_path):
    from ocr_tf.files import file_sha256, write_atomic, write_json_atomic

    path = tmp_path / "report.json"
    write_json_atomic(str(path), {"a": 1})
    assert json.loads(path.read_text()) == {"a": 1}

    class Boom:  # json.dumps fails before anything is written
        pass

    with pytest.raises(TypeError):
        write_json_atomic(str(path), {"a": Boom()})
    assert json.loads(path.read_text()) == {"a": 1}
    write_atomic(str(path), b"\x00\x01")
    assert path.read_bytes() == b"\x00\x01" and sorted(p.name for p in tmp_path.iterdir()) == ["report.json"]
    big = tmp_path / "big.bin"
    big.write_bytes(bytes(range(256)) * 9000)  # > one 1 MiB block
    assert file_sha256(str(big)) == hashlib.sha256(big.read_bytes()).hexdigest()
