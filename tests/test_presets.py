"""Presets by name or URL: download (from a local HTTP server on 127.0.0.1), convert once, cache,
sha256 records; damaged and interrupted downloads leave nothing; `convert --out` writes a preset.

The served checkpoint is the official tiny fixture written back into a `.pth`, so a converted
preset must reproduce the official outputs (tests/fixtures/hrnet_ocr_tiny_official.npz).
"""

import hashlib
import http.server
import json
import os
import sys
import threading

import numpy as np
import pytest

import ocr_tf
from ocr_tf import convert, presets
from ocr_tf.cli import convert as convert_cli
from ocr_tf.errors import UserError

torch = pytest.importorskip("torch")

FIXTURE = os.path.join(os.path.dirname(__file__), "fixtures", "hrnet_ocr_tiny_official.npz")
TOL = 1e-4  # max |a - b| / max |b|, as tests/test_convert.py
TINY_CLASSES = ("sky", "road", "car", "person", "tree")
CHECKPOINT = "/hrnet_ocr_tiny_torch11.pth"


@pytest.fixture(scope="module")
def fixture():
    """The official fixture's arrays; its `config` (JSON) and `state` (the state dict) unpacked."""
    with np.load(FIXTURE) as data:
        arrays = {k: data[k] for k in data.files}
    arrays["config"] = json.loads(str(arrays["config"]))
    arrays["state"] = {k[len("state/") :]: v for k, v in arrays.items() if k.startswith("state/")}
    return arrays


@pytest.fixture(scope="module")
def config(fixture):
    return fixture["config"]


@pytest.fixture(scope="module")
def state(fixture):
    return fixture["state"]


def pth_bytes(state, tmp_path, legacy=False, prefix="model."):
    """The state dict as a released file: `model.` prefix (torch11) or PyTorch 0.4's legacy format."""
    path = tmp_path / "tmp.pth"
    torch.save({prefix + k: torch.from_numpy(v.copy()) for k, v in state.items()}, path,
               _use_new_zipfile_serialization=not legacy)
    data = path.read_bytes()
    path.unlink()
    return data


@pytest.fixture(scope="module")
def checkpoint(state, tmp_path_factory):
    return pth_bytes(state, tmp_path_factory.mktemp("pth"))


@pytest.fixture(scope="module")
def classes_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("classes") / "tiny.txt"
    path.write_text("\n".join(TINY_CLASSES) + "\n")
    return str(path)


@pytest.fixture
def cache(tmp_path, monkeypatch):
    root = tmp_path / "cache"
    monkeypatch.setenv("OCR_TF_CACHE", str(root))
    return root


class Server:
    """http.server on 127.0.0.1 (random port) in a thread: serves `files[path] = (bytes, mode)`;
    mode "interrupt" announces the full length, sends half and closes the connection."""

    def __init__(self):
        self.files, self.requests = {}, []
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                server.requests.append(self.path)
                if self.path not in server.files:
                    self.send_error(404)
                    return
                body, mode = server.files[self.path]
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body[: len(body) // 2] if mode == "interrupt" else body)
                self.close_connection = True

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def url(self, path=CHECKPOINT):
        return f"http://127.0.0.1:{self.httpd.server_address[1]}{path}"

    def stop(self):
        if self.thread.is_alive():
            self.httpd.shutdown()
            self.httpd.server_close()
            self.thread.join()


@pytest.fixture
def server():
    s = Server()
    yield s
    s.stop()


def tiny_spec(config, url, classes_file, **fields):
    return presets.PresetSpec(**{
        "name": "tiny_ocr", "url": url, "model": "hrnet_w18_ocr", "dataset": classes_file,
        "published_miou": 12.5, "miou_protocol": "made up for this test",
        "model_overrides": tiny_overrides(config), **fields,
    })


def tiny_overrides(config):
    return {"extra": config["extra"], "mid_channels": config["ocr_mid_channels"],
            "key_channels": config["ocr_key_channels"], "align_corners": config["align_corners"]}


def max_rel_error(segmenter, fixture):
    errors = []
    for n in (0, 1):
        out = segmenter.network(np.transpose(fixture[f"input_{n}"], (0, 2, 3, 1)), training=False)
        for key, name in ((f"aux_{n}", "aux_logits"), (f"out_{n}", "logits")):
            want = np.transpose(fixture[key], (0, 2, 3, 1))
            errors.append(np.max(np.abs(np.asarray(out[name]) - want)) / np.max(np.abs(want)))
    return max(errors)


def files_under(root):
    return sorted(os.path.relpath(os.path.join(d, f), root) for d, _, fs in os.walk(root) for f in fs)


def test_official_presets_name_the_release_files_and_published_miou():
    table = ocr_tf.list_presets()
    files = {v["file_name"]: (name, v) for name, v in table.items()}
    for file_name in ("hrnet_ocr_cs_8162_torch11.pth", "hrnet_ocr_cs_trainval_8227_torch11.pth",
                      "hrnet_ocr_lip_5648_torch04.pth", "hrnet_ocr_pascal_ctx_5618_torch11.pth",
                      "hrnet_ocr_cocostuff_3965_torch04.pth", "hrnet_ocr_ade20k_4451_torch04.pth",
                      "hrnet_cs_8090_torch11.pth"):
        name, entry = files[file_name]
        assert entry["url"] == presets.OFFICIAL_URL + file_name
        assert entry["model"] == ("hrnet_w48_fcn" if name.startswith("hrnet_w48_fcn") else "hrnet_w48_ocr")
        assert entry["sha256"] is None  # not published: recorded at the first download
        assert entry["model_overrides"] == {"align_corners": True}
    cityscapes = table["hrnet_w48_ocr_cityscapes"]
    assert (cityscapes["file_name"], cityscapes["dataset"], cityscapes["published_miou"]) == (
        "hrnet_ocr_cs_8162_torch11.pth", "cityscapes", 81.6)
    assert "val" in cityscapes["miou_protocol"] and "single scale" in cityscapes["miou_protocol"]
    # the mIoU in each official file's name is the published one (8162 -> 81.6, 5648 -> 56.48)
    from ocr_tf.data.datasets import get_dataset_info

    expected_classes = {"cityscapes": 19, "lip": 20, "pascal_context": 59, "coco_stuff": 171, "ade20k": 150}
    for name, entry in table.items():
        digits = [p for p in entry["file_name"].split("_") if p.isdigit()][0]
        assert abs(entry["published_miou"] - int(digits) / 100) < 0.051, name
        assert get_dataset_info(entry["dataset"]).num_classes == expected_classes[entry["dataset"]]
    assert table["hrnet_w48_ocr_lip"]["dataset"] == "lip"  # flip pairs come from the dataset module
    assert table["hrnet_w48_ocr_lip"]["description"]


def test_a_name_downloads_converts_once_and_then_loads_without_network(
    fixture, config, checkpoint, classes_file, cache, server
):
    server.files[CHECKPOINT] = (checkpoint, "full")
    spec = tiny_spec(config, server.url(), classes_file, name="test_tiny_ocr_by_name")
    presets.register_preset(spec, replace=True)
    with pytest.raises(UserError, match="exists already"):
        presets.register_preset(spec)
    assert ocr_tf.list_presets()["test_tiny_ocr_by_name"]["url"] == server.url()

    seg = ocr_tf.Segmenter.from_preset("test_tiny_ocr_by_name")
    assert server.requests == [CHECKPOINT]
    assert max_rel_error(seg, fixture) < TOL
    assert seg.class_names == list(TINY_CLASSES) and seg.model_name == "hrnet_w18_ocr"
    sha = hashlib.sha256(checkpoint).hexdigest()
    assert seg.provenance["sha256"] == sha
    assert seg.provenance["source_url"] == server.url()
    assert seg.provenance["source_file"] == "hrnet_ocr_tiny_torch11.pth"
    assert seg.provenance["published_miou"] == 12.5
    assert seg.provenance["converter"] == f"ocr_tf {ocr_tf.__version__} (ocr_tf.convert)"
    # only the converted preset and the sha256 record stay; the download is gone
    preset_dir = cache / "presets" / "test_tiny_ocr_by_name"
    assert files_under(cache) == sorted(["presets/sha256.json"] + [
        f"presets/test_tiny_ocr_by_name/{f}" for f in ("README.md", "config.json", "labels.txt",
                                                        "metadata.json", "model.weights.h5")])
    assert json.loads((cache / "presets" / "sha256.json").read_text()) == {server.url(): sha}
    card = (preset_dir / "README.md").read_text()
    assert server.url() in card and "published miou: 12.5" in card and "made up for this test" in card
    assert (preset_dir / "labels.txt").read_text().split() == list(TINY_CLASSES)

    server.stop()  # no network from here on
    again = ocr_tf.Segmenter.from_preset("test_tiny_ocr_by_name")
    assert server.requests == [CHECKPOINT]
    assert all(np.array_equal(a, b) for a, b in zip(again.get_weights(), seg.get_weights()))
    assert max_rel_error(again, fixture) < TOL
    assert again.provenance == seg.provenance and again.class_names == seg.class_names


@pytest.mark.parametrize("damage", ["truncated", "garbage"])
def test_a_damaged_download_is_refused_and_nothing_is_cached(config, checkpoint, classes_file, cache, server, damage):
    body = checkpoint[: len(checkpoint) // 2] if damage == "truncated" else np.random.default_rng(1).bytes(len(checkpoint))
    server.files[CHECKPOINT] = (body, "full")  # served completely: the file itself is bad
    with pytest.raises(UserError, match="is not a readable checkpoint") as err:
        ocr_tf.Segmenter.from_preset(tiny_spec(config, server.url(), classes_file))
    assert server.url() in str(err.value) and "\n" not in str(err.value)
    assert server.requests == [CHECKPOINT]
    assert files_under(cache) == []  # no preset, no sha256 record, no download


def test_an_interrupted_download_leaves_nothing(config, checkpoint, classes_file, cache, server):
    server.files[CHECKPOINT] = (checkpoint, "interrupt")
    # what a download killed two days ago (kill -9: no cleanup ran) left behind
    killed = cache / "downloads" / ".tmp-tiny_ocr-killed"
    killed.mkdir(parents=True)
    (killed / "hrnet_ocr_tiny_torch11.pth").write_bytes(checkpoint[:100])
    os.utime(killed, (os.path.getmtime(killed) - 2 * 86400,) * 2)
    with pytest.raises(UserError, match="download of .* failed") as err:
        ocr_tf.Segmenter.from_preset(tiny_spec(config, server.url(), classes_file))
    assert "nothing was cached" in str(err.value)
    assert files_under(cache) == []
    # the next call downloads again (nothing half-written was taken for the file) and succeeds
    server.files[CHECKPOINT] = (checkpoint, "full")
    seg = ocr_tf.Segmenter.from_preset(tiny_spec(config, server.url(), classes_file))
    assert seg.provenance["sha256"] == hashlib.sha256(checkpoint).hexdigest()
    assert server.requests == [CHECKPOINT, CHECKPOINT]


def test_a_url_downloads_like_a_name_and_a_changed_file_is_refused(
    fixture, config, state, checkpoint, classes_file, cache, server, tmp_path
):
    url = server.url()
    server.files[CHECKPOINT] = (checkpoint, "full")
    with pytest.raises(UserError, match="needs model= and dataset="):
        ocr_tf.Segmenter.from_preset(url)
    assert server.requests == []
    kwargs = {"model": "hrnet_w18_ocr", "dataset": classes_file, "model_overrides": tiny_overrides(config)}
    seg = ocr_tf.Segmenter.from_preset(url, **kwargs)
    assert max_rel_error(seg, fixture) < TOL
    (preset_dir,) = [p for p in (cache / "presets").iterdir() if p.is_dir()]
    assert preset_dir.name.startswith("hrnet_ocr_tiny_torch11-")

    # the file changes upstream (one tensor differs) and the cached preset is deleted: the new
    # download does not match the sha256 recorded at the first one
    changed = dict(state)
    changed["cls_head.bias"] = changed["cls_head.bias"] + 1.0
    server.files[CHECKPOINT] = (pth_bytes(changed, tmp_path), "full")
    import shutil

    shutil.rmtree(preset_dir)
    with pytest.raises(UserError, match="differs from the sha256 recorded at its first download") as err:
        ocr_tf.Segmenter.from_preset(url, **kwargs)
    assert hashlib.sha256(checkpoint).hexdigest() in str(err.value)
    assert files_under(cache) == ["presets/sha256.json"]  # the record stays; nothing new cached

    # a sha256 given with the preset is checked on the first download already
    with pytest.raises(UserError, match="differs from preset tiny_ocr's sha256"):
        ocr_tf.Segmenter.from_preset(tiny_spec(config, url, classes_file, sha256="0" * 64), cache_dir=str(tmp_path / "c2"))
    assert files_under(tmp_path / "c2") == []


def test_torch_missing_names_the_extra_before_downloading(config, checkpoint, classes_file, cache, server, monkeypatch):
    server.files[CHECKPOINT] = (checkpoint, "full")
    monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` now raises ImportError
    with pytest.raises(presets.MissingExtraError, match=r'pip install "ocr_tf\[convert\]"') as err:
        ocr_tf.Segmenter.from_preset(tiny_spec(config, server.url(), classes_file))
    assert isinstance(err.value, ImportError) and isinstance(err.value, UserError)
    assert server.requests == [] and files_under(cache) == []


def torch04_state(state, seed=0):
    """The fixture as the official code under PyTorch 0.4.1 stores it: every BatchNorm is an
    InPlaceABNSync(activation='none') (bn_helper.py), same names, no num_batches_tracked, but its
    kernels scale by |weight| + 1e-5; so the stored weight is +-(gamma - 1e-5), either sign."""
    rng = np.random.default_rng(seed)
    out = dict(state)
    for name, value in state.items():
        if name.endswith(".weight") and name[: -len("weight")] + "running_var" in state:
            assert value.min() > 1e-5  # representable as |w| + eps
            out[name] = (rng.choice([-1.0, 1.0], value.shape) * (value - 1e-5)).astype(np.float32)
    assert sum((out[k] < 0).sum() for k in out if k.endswith(".weight")) > 100  # plain BN would differ
    return out


def test_torch04_release_files_are_read_with_inplace_abn_scales(fixture, config, state, classes_file, cache,
                                                                server, tmp_path):
    # PyTorch 0.4's file format (not a zip) and DataParallel's `module.` prefix, as the _torch04 files
    body = pth_bytes(torch04_state(state), tmp_path, legacy=True, prefix="module.model.")
    assert not body.startswith(b"PK")
    server.files["/hrnet_ocr_tiny_torch04.pth"] = (body, "full")
    seg = ocr_tf.Segmenter.from_preset(tiny_spec(config, server.url("/hrnet_ocr_tiny_torch04.pth"), classes_file))
    assert max_rel_error(seg, fixture) < TOL
    assert seg.provenance["bn_weights"] == presets.INPLACE_ABN_NOTE


def test_names_that_no_official_code_writes_are_refused_with_the_full_list(config, state, tmp_path):
    # e.g. an InPlaceABN with its activation folded in would name BN tensors `f_pixel.1.weight`
    # instead of `f_pixel.1.0.weight`: not a layout the official code writes, so not guessed.
    renamed = {k.replace(".f_pixel.1.0.", ".f_pixel.1."): v for k, v in state.items()}
    path = tmp_path / "renamed.npz"
    np.savez(path, **renamed)
    with pytest.raises(convert.CheckpointMismatch) as err:
        presets.segmenter_from_checkpoint(path, "hrnet_w18_ocr", "cityscapes", tiny_overrides(config))
    # the class count (19 vs 5) and the four renamed tensors: every problem in one message
    assert len(err.value.missing) == 4 and len(err.value.unexpected) == 4
    assert {m.split(":")[0] for m in err.value.mismatched} == {
        "cls_head.weight", "cls_head.bias", "aux_head.3.weight", "aux_head.3.bias"}
    assert "ocr_distri_head.object_context_block.f_pixel.1.weight" in str(err.value)


def test_convert_cli_writes_a_preset_with_provenance(fixture, config, state, classes_file, tmp_path, capsys):
    pth = tmp_path / "hrnet_ocr_tiny_torch04.pth"  # a _torch04 name: InPlaceABN scales unless --inplace-abn false
    checkpoint = pth_bytes(torch04_state(state, seed=1), tmp_path, legacy=True)
    pth.write_bytes(checkpoint)
    out = tmp_path / "preset"
    rc = convert_cli.main([
        "--checkpoint", str(pth), "--model", "hrnet_w18_ocr", "--dataset", classes_file, "--out", str(out),
        "--extra", json.dumps(config["extra"]), "--mid-channels", "32", "--key-channels", "16",
        "--verify", FIXTURE,
    ])
    assert rc == 0, capsys.readouterr().err
    assert presets.is_preset_dir(out) and not [p for p in os.listdir(tmp_path) if p.startswith(".tmp")]
    seg = ocr_tf.Segmenter.from_preset(str(out))
    assert max_rel_error(seg, fixture) < TOL
    assert seg.class_names == list(TINY_CLASSES) and seg.num_classes == 5
    assert seg.provenance["sha256"] == hashlib.sha256(checkpoint).hexdigest()
    assert seg.provenance["source_file"] == "hrnet_ocr_tiny_torch04.pth"
    assert seg.provenance["parity"].startswith("max |a-b|/max|b| ")
    assert float(seg.provenance["parity"].split()[2]) < TOL
    assert seg.provenance["bn_weights"] == presets.INPLACE_ABN_NOTE
    printed = capsys.readouterr().out
    assert f"wrote preset {out}" in printed and "InPlaceABN" in printed
    # read as plain BatchNorm weights, the same file misses the official outputs: nothing is written
    rc = convert_cli.main(["--checkpoint", str(pth), "--model", "hrnet_w18_ocr", "--dataset", classes_file,
                       "--out", str(tmp_path / "plain"), "--extra", json.dumps(config["extra"]), "--mid-channels",
                       "32", "--key-channels", "16", "--verify", FIXTURE, "--inplace-abn", "false"])
    assert rc == 2 and not (tmp_path / "plain").exists()
    assert "no preset written" in capsys.readouterr().err


def test_unknown_preset_lists_the_names(tmp_path):
    with pytest.raises(UserError, match="hrnet_w48_ocr_cityscapes"):
        ocr_tf.Segmenter.from_preset("hrnet_w48_ocr_citiscapes")
    with pytest.raises(UserError, match="url 'ftp://x/a.pth' is not"):
        presets.PresetSpec("x", "ftp://x/a.pth", "hrnet_w48_ocr", "cityscapes")
    with pytest.raises(UserError, match="does not name a checkpoint"):
        presets.PresetSpec("x", "https://x/a.zip", "hrnet_w48_ocr", "cityscapes")
