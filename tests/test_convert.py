"""Official HRNet-OCR checkpoints -> Keras: exact parity with the official PyTorch model, and refusal
of any checkpoint that does not fit (the fixture's format: tests/fixtures/README in ../shared)."""

import copy
import json
import os

import numpy as np
import pytest

import ocr_tf
from ocr_tf import convert
from ocr_tf.cli import convert as convert_cli
from ocr_tf.models import build_model

FIXTURE = os.path.join(os.path.dirname(__file__), "fixtures", "hrnet_ocr_tiny_official.npz")
TOL = 1e-4  # max |a - b| / max |b|


@pytest.fixture(scope="module")
def fixture():
    with np.load(FIXTURE) as data:
        return {k: data[k] for k in data.files}


@pytest.fixture(scope="module")
def config(fixture):
    return json.loads(str(fixture["config"]))


@pytest.fixture(scope="module")
def state(fixture):
    return {k[len("state/") :]: v for k, v in fixture.items() if k.startswith("state/")}


def tiny_model(config, num_classes=None, extra=None):
    return build_model(
        "hrnet_w18_ocr",
        num_classes or config["num_classes"],
        extra=extra or config["extra"],
        mid_channels=config["ocr_mid_channels"],
        key_channels=config["ocr_key_channels"],
        align_corners=config["align_corners"],
    )


def rel_errors(model, fixture):
    errors = {}
    for n in (0, 1):
        out = model(np.transpose(fixture[f"input_{n}"], (0, 2, 3, 1)), training=False)
        for key, name in ((f"aux_{n}", "aux_logits"), (f"out_{n}", "logits")):
            want = np.transpose(fixture[key], (0, 2, 3, 1))
            got = np.asarray(out[name])
            assert got.shape == want.shape, key
            errors[key] = np.max(np.abs(got - want)) / np.max(np.abs(want))
    return errors


def test_converted_model_reproduces_the_official_outputs(fixture, config, state):
    model = tiny_model(config)
    convert.load_official_weights(model, convert.clean_state_dict(state))
    errors = rel_errors(model, fixture)
    assert set(errors) == {"aux_0", "out_0", "aux_1", "out_1"}  # 64x96 and the odd 70x90 input
    assert max(errors.values()) < TOL, errors


def test_every_official_tensor_has_exactly_one_keras_variable(config, state):
    targets = convert.official_variables(tiny_model(config))
    assert set(targets) == set(state)
    assert len({id(v) for v in targets.values()}) == len(targets)


def test_cli_writes_keras_and_weights_files_that_reload(fixture, config, tmp_path, capsys):
    extra = tmp_path / "extra.json"
    extra.write_text(json.dumps(config["extra"]))
    out = tmp_path / "out"
    rc = convert_cli.main([
        "--checkpoint", FIXTURE, "--model", "hrnet_w18_ocr", "--num-classes", "5", "--out", str(out),
        "--extra", str(extra), "--mid-channels", "32", "--key-channels", "16", "--verify", FIXTURE,
    ])
    assert rc == 0
    # a preset folder (ocr_tf/presets.py), no temp left
    assert sorted(os.listdir(out)) == ["README.md", "config.json", "labels.txt", "metadata.json", "model.weights.h5"]
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".")]
    printed = capsys.readouterr().out
    assert printed.count("verify ") == 4
    reloaded = ocr_tf.Segmenter.from_preset(str(out))
    assert max(rel_errors(reloaded.network, fixture).values()) < TOL
    assert reloaded.class_names == [f"class_{k}" for k in range(5)]  # no --dataset: generic names
    fresh = ocr_tf.Segmenter(tiny_model(config), reloaded.class_names)
    fresh.load_weights(out / "model.weights.h5")
    assert max(rel_errors(fresh.network, fixture).values()) < TOL


def test_pth_with_model_prefix_and_loss_keys_converts(fixture, config, state, tmp_path):
    torch = pytest.importorskip("torch")
    sd = {f"model.{k}": torch.from_numpy(v.copy()) for k, v in state.items()}
    sd["loss.criterion.weight"] = torch.ones(19)
    sd["model.conv1.num_batches_tracked"] = torch.tensor(7)
    path = tmp_path / "hrnet_ocr_tiny.pth"
    torch.save(sd, path)
    model, paths = convert.convert(
        path, "hrnet_w18_ocr", 5, tmp_path / "out", extra=config["extra"], mid_channels=32, key_channels=16
    )
    assert [os.path.basename(p) for p in paths] == ["hrnet_w18_ocr.keras", "hrnet_w18_ocr.weights.h5"]
    assert max(rel_errors(model, fixture).values()) < TOL


def test_seg_hrnet_last_layer_is_read_as_the_aux_head(fixture, config, state):
    renamed = {k.replace("aux_head.", "last_layer.", 1): v for k, v in state.items()}
    model = tiny_model(config)
    convert.load_official_weights(model, convert.clean_state_dict(renamed))
    assert max(rel_errors(model, fixture).values()) < TOL


def test_checkpoint_for_other_number_of_classes_is_refused_with_names(config, state):
    model = tiny_model(config, num_classes=19)
    before = [w.numpy().copy() for w in model.weights]
    with pytest.raises(convert.CheckpointMismatch) as err:
        convert.load_official_weights(model, convert.clean_state_dict(state), "tiny.npz")
    bad = {m.split(":")[0] for m in err.value.mismatched}
    assert bad == {"cls_head.weight", "cls_head.bias", "aux_head.3.weight", "aux_head.3.bias"}
    assert "cls_head.weight" in str(err.value) and "tiny.npz" in str(err.value)
    # nothing was assigned: never a half-loaded model
    assert all(np.array_equal(a, w.numpy()) for a, w in zip(before, model.weights))


def test_checkpoint_for_other_width_is_refused_with_names(config, state):
    extra = copy.deepcopy(config["extra"])
    extra["STAGE4"]["NUM_CHANNELS"][3] = 32  # the fixture's branch 3 has 64
    with pytest.raises(convert.CheckpointMismatch) as err:
        convert.load_official_weights(tiny_model(config, extra=extra), convert.clean_state_dict(state))
    bad = {m.split(":")[0] for m in err.value.mismatched}
    assert "stage4.0.branches.3.0.conv1.weight" in bad
    assert "transition3.3.0.0.weight" in bad
    assert "stage4.0.fuse_layers.0.3.0.weight" in bad
    assert not err.value.missing and not err.value.unexpected


def test_missing_and_unexpected_tensors_are_listed(config, state):
    broken = dict(convert.clean_state_dict(state))
    del broken["stage3.0.fuse_layers.2.0.1.1.running_var"]
    broken["stage5.0.conv.weight"] = np.zeros((1, 1, 1, 1), np.float32)
    with pytest.raises(convert.CheckpointMismatch) as err:
        convert.load_official_weights(tiny_model(config), broken)
    assert err.value.missing == ["stage3.0.fuse_layers.2.0.1.1.running_var"]
    assert err.value.unexpected == ["stage5.0.conv.weight"]


def test_cli_reports_a_mismatch_and_writes_nothing(config, tmp_path, capsys):
    extra = json.dumps(config["extra"])
    out = tmp_path / "out"
    rc = convert_cli.main([
        "--checkpoint", FIXTURE, "--model", "hrnet_w18_ocr", "--num-classes", "19", "--out", str(out),
        "--extra", extra, "--mid-channels", "32", "--key-channels", "16",
    ])
    assert rc == 2  # a user error: the message lists every mismatch, no traceback
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "cls_head.weight" in err and "Traceback" not in err
    assert not out.exists()


def test_pth_without_torch_gives_a_clear_error(tmp_path, monkeypatch):
    path = tmp_path / "x.pth"
    path.write_bytes(b"not read")
    monkeypatch.setitem(__import__("sys").modules, "torch", None)
    with pytest.raises(ImportError, match="needs PyTorch"):
        convert.read_state_dict(path)


def test_backbone_only_from_an_imagenet_style_file_feeds_build_model(fixture, config, state, tmp_path):
    # An ImageNet HRNet file: the backbone tensors plus a classification head, no segmentation head.
    imagenet = {k: v for k, v in state.items() if k.split(".")[0] in convert.BACKBONE_ROOTS}
    imagenet["incre_modules.0.0.conv1.weight"] = np.zeros((32, 8, 1, 1), np.float32)
    imagenet["classifier.weight"] = np.zeros((1000, 2048), np.float32)
    path = tmp_path / "hrnet_tiny_imagenet.npz"
    np.savez(path, **imagenet)
    _, paths = convert.convert(path, "hrnet_w18_ocr", out_dir=tmp_path / "out", extra=config["extra"], backbone_only=True)
    weights = [p for p in paths if p.endswith(".weights.h5")][0]
    assert os.path.basename(weights) == "hrnet_w18_backbone.weights.h5"
    model = tiny_model(config)
    full = tiny_model(config)
    convert.load_official_weights(full, convert.clean_state_dict(state))
    fresh = build_model("hrnet_w18_ocr", 5, extra=config["extra"], mid_channels=32, key_channels=16, weights=weights)
    x = np.transpose(fixture["input_1"], (0, 2, 3, 1))
    want = np.asarray(full.get_layer("backbone")(x))
    np.testing.assert_allclose(np.asarray(fresh.get_layer("backbone")(x)), want, rtol=1e-5, atol=1e-5 * np.abs(want).max())
    assert not np.allclose(np.asarray(model.get_layer("backbone")(x)), want)  # a fresh model differs
    # a backbone tensor missing from the file still stops the conversion
    del imagenet["stage4.0.branches.3.0.bn2.running_var"]
    np.savez(path, **imagenet)
    with pytest.raises(convert.CheckpointMismatch, match="stage4.0.branches.3.0.bn2.running_var"):
        convert.convert(path, "hrnet_w18", extra=config["extra"], backbone_only=True)


def test_extra_from_an_official_experiment_yaml(tmp_path):
    # The layout of HRNet-Semantic-Segmentation's experiments/*.yaml, including its STAGE1 typo
    # (NUM_RANCHES), for W18-small-v2.
    stages = {
        "STAGE1": "      NUM_MODULES: 1\n      NUM_RANCHES: 1\n      BLOCK: BOTTLENECK\n      NUM_BLOCKS: [2]\n      NUM_CHANNELS: [64]\n",
        "STAGE2": "      NUM_MODULES: 1\n      NUM_BRANCHES: 2\n      BLOCK: BASIC\n      NUM_BLOCKS: [2, 2]\n      NUM_CHANNELS: [18, 36]\n",
        "STAGE3": "      NUM_MODULES: 3\n      NUM_BRANCHES: 3\n      BLOCK: BASIC\n      NUM_BLOCKS: [2, 2, 2]\n      NUM_CHANNELS: [18, 36, 72]\n",
        "STAGE4": "      NUM_MODULES: 2\n      NUM_BRANCHES: 4\n      BLOCK: BASIC\n      NUM_BLOCKS: [2, 2, 2, 2]\n      NUM_CHANNELS: [18, 36, 72, 144]\n",
    }
    text = "MODEL:\n  NAME: seg_hrnet\n  EXTRA:\n    FINAL_CONV_KERNEL: 1\n" + "".join(f"    {k}:\n{v}" for k, v in stages.items())
    path = tmp_path / "seg_hrnet_w18_small_v2.yaml"
    path.write_text(text)
    from ocr_tf.backbones.hrnet import HRNET_CONFIGS, validate_extra

    got = validate_extra(convert._load_extra(str(path)))
    for s in ("STAGE1", "STAGE2", "STAGE3", "STAGE4"):
        for key in ("NUM_MODULES", "NUM_BRANCHES", "BLOCK", "NUM_BLOCKS", "NUM_CHANNELS"):
            assert got[s][key] == HRNET_CONFIGS["w18s"][s][key], (s, key)


def test_dataparallel_and_release_prefixes_are_dropped(state):
    wrapped = {f"module.model.{k}": v for k, v in state.items()}
    wrapped["module.loss.criterion.weight"] = np.ones(19, np.float32)
    assert convert.clean_state_dict(wrapped).keys() == state.keys()


def test_seg_hrnet_checkpoint_converts_into_the_fcn_model(fixture, config, state):
    # seg_hrnet = backbone + last_layer, the same layers as HRNet-OCR's aux head: fed the OCR
    # fixture's backbone and aux head as last_layer, the FCN model must give the official aux output.
    seg_hrnet = {k.replace("aux_head.", "last_layer.", 1): v for k, v in state.items()
                 if k.split(".")[0] in convert.BACKBONE_ROOTS or k.startswith("aux_head.")}
    model = build_model("hrnet_w18_fcn", 5, extra=config["extra"])
    convert.load_official_weights(model, convert.clean_state_dict(seg_hrnet, head="fcn"))
    for n in (0, 1):
        want = np.transpose(fixture[f"aux_{n}"], (0, 2, 3, 1))
        got = np.asarray(model(np.transpose(fixture[f"input_{n}"], (0, 2, 3, 1)))["logits"])
        assert np.max(np.abs(got - want)) / np.max(np.abs(want)) < TOL
