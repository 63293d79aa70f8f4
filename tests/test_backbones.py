"""Backbones: feature strides and widths at odd input sizes, keras.applications weight files that
load into the dilated versions (and change their outputs accordingly), refusal of files that do not fit."""

import copy
import json
import os

import keras
import numpy as np
import pytest

from ocr_tf.backbones import load_backbone_weights
from ocr_tf.backbones.hrnet import HRNET_CONFIGS, hrnet_backbone, torch_bn_name, torch_conv_name
from ocr_tf.backbones.mobilenet import mobilenet_backbone
from ocr_tf.backbones.resnet import CaffeInput, resnet_backbone
from ocr_tf.preprocessing import IMAGENET_MEAN, IMAGENET_STD

FIXTURE = os.path.join(os.path.dirname(__file__), "fixtures", "hrnet_ocr_tiny_official.npz")
H, W = 45, 61  # odd on purpose


def ceil_div(a, b):
    return -(-a // b)


def image(h=H, w=W, seed=0):
    return np.random.default_rng(seed).normal(size=(1, h, w, 3)).astype(np.float32)


def randomize_bn(model, seed=0):
    """Random BN statistics/affines, so that outputs are O(1) and a wrong weight shows."""
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            n = layer.gamma.shape[0]
            layer.gamma.assign(rng.uniform(0.5, 1.5, n))
            layer.beta.assign(rng.normal(0, 0.2, n))
            layer.moving_mean.assign(rng.normal(0, 0.2, n))
            layer.moving_variance.assign(rng.uniform(0.5, 1.5, n))


def tiny_extra():
    with np.load(FIXTURE) as data:
        return json.loads(str(data["config"]))["extra"]


# ---------------------------------------------------------------- HRNet


def test_hrnet_tiny_concatenates_four_branches_at_stride_4():
    model = hrnet_backbone(tiny_extra())
    out = model(image())
    assert out.shape == (1, ceil_div(H, 4), ceil_div(W, 4), 8 + 16 + 32 + 64)


def test_hrnet_w18_small_widths_and_block_counts():
    model = hrnet_backbone("w18s")
    assert model.output.shape[-1] == 18 + 36 + 72 + 144
    names = {layer.name for layer in model.layers}
    # W18-small-v2: 2 bottlenecks in stage 1, 3 modules in stage 3, 2 in stage 4, 2 blocks each
    assert {"layer1_1_conv3", "stage3_2_branches_2_1_conv2", "stage4_1_fuse_layers_3_0_2_0"} <= names
    assert not names & {"layer1_2_conv1", "stage3_3_branches_0_0_conv1", "stage4_2_branches_0_0_conv1", "stage4_1_branches_0_2_conv1"}
    out = model(image(37, 29))
    assert out.shape == (1, ceil_div(37, 4), ceil_div(29, 4), 270)


@pytest.mark.parametrize("key,width", [("w18", 18), ("w32", 32), ("w48", 48)])
def test_hrnet_configs_follow_the_official_yaml(key, width):
    extra = HRNET_CONFIGS[key]
    assert extra["STAGE1"] == {**extra["STAGE1"], "BLOCK": "BOTTLENECK", "NUM_BLOCKS": [4], "NUM_CHANNELS": [64]}
    assert [extra[f"STAGE{s}"]["NUM_MODULES"] for s in (2, 3, 4)] == [1, 4, 3]
    assert extra["STAGE4"]["NUM_CHANNELS"] == [width, 2 * width, 4 * width, 8 * width]
    assert extra["STAGE4"]["NUM_BLOCKS"] == [4, 4, 4, 4]


def test_hrnet_align_corners_switch_reaches_every_resize():
    from ocr_tf.layers.common import ResizeTo

    a = hrnet_backbone(tiny_extra(), align_corners=True)
    b = hrnet_backbone(tiny_extra(), align_corners=False)
    resizes = [layer for layer in b.layers if isinstance(layer, ResizeTo)]
    assert len(resizes) == 1 + 3 + 6 + 3  # stage 2, 3, 4 fuse-ups and the final upsampling
    assert not any(layer.align_corners for layer in resizes)
    b.set_weights(a.get_weights())
    x = image()
    ya, yb = np.asarray(a(x)), np.asarray(b(x))
    assert np.max(np.abs(ya - yb)) > 1e-2 * np.max(np.abs(ya))


def test_hrnet_layer_names_give_back_the_official_names():
    assert torch_conv_name("stage2_0_fuse_layers_1_0_0_0") == "stage2.0.fuse_layers.1.0.0.0"
    assert torch_bn_name("stage2.0.fuse_layers.1.0.0.0") == "stage2.0.fuse_layers.1.0.0.1"
    assert torch_bn_name("layer1.0.conv3") == "layer1.0.bn3"
    assert torch_bn_name("layer1.0.downsample.0") == "layer1.0.downsample.1"
    assert torch_bn_name("conv2") == "bn2"


def test_hrnet_bad_stage_config_names_the_key():
    extra = copy.deepcopy(tiny_extra())
    del extra["STAGE3"]["NUM_CHANNELS"]
    with pytest.raises(ValueError, match=r"STAGE3 is missing \['NUM_CHANNELS'\]"):
        hrnet_backbone(extra)
    extra = copy.deepcopy(tiny_extra())
    extra["STAGE4"]["NUM_BLOCKS"] = [1, 1]
    with pytest.raises(ValueError, match="STAGE4.NUM_BLOCKS needs 4 entries"):
        hrnet_backbone(extra)
    with pytest.raises(ValueError, match="Unknown HRNet config 'w64'"):
        hrnet_backbone("w64")


# ---------------------------------------------------------------- ResNet


@pytest.fixture(scope="module")
def resnet50_imagenet_file(tmp_path_factory):
    """A keras.applications ResNet50 with random weights and BN statistics, saved in the legacy
    by-name .h5 format of the ImageNet files."""
    ref = keras.applications.ResNet50(include_top=False, weights=None, input_shape=(None, None, 3))
    randomize_bn(ref)
    path = str(tmp_path_factory.mktemp("weights") / "resnet50_notop.h5")
    ref.save(path)
    return ref, path


@pytest.mark.parametrize("output_stride", [8, 16])
@pytest.mark.parametrize("stem", ["keras", "deep"])
def test_resnet50_stage3_and_stage4_strides_and_widths(output_stride, stem):
    model = resnet_backbone(50, output_stride=output_stride, stem=stem)
    s3, s4 = model(image())
    size = (ceil_div(H, output_stride), ceil_div(W, output_stride))
    assert s3.shape == (1, *size, 1024)
    assert s4.shape == (1, *size, 2048)


def test_resnet101_has_23_blocks_in_stage_3():
    model = resnet_backbone(101, output_stride=8)
    assert model.get_layer("conv4_block23_out") is not None
    s3, s4 = model(image(33, 17))
    assert s3.shape == (1, 5, 3, 1024) and s4.shape == (1, 5, 3, 2048)


def test_resnet_keras_weights_load_into_the_dilated_versions(resnet50_imagenet_file):
    ref, path = resnet50_imagenet_file
    x = image()
    # Output stride 16 only dilates stage 4: stage 3 is keras.applications' conv4_block6_out exactly.
    os16 = resnet_backbone(50, output_stride=16)
    load_backbone_weights(os16, path)
    want = keras.Model(ref.input, ref.get_layer("conv4_block6_out").output)(CaffeInput()(x))
    got = os16(x)[0]
    assert np.max(np.abs(np.asarray(got) - np.asarray(want))) <= 1e-5 * np.max(np.abs(np.asarray(want)))
    # Output stride 8: same kernels (every layer loaded), dilated sampling -> different features.
    os8 = resnet_backbone(50, output_stride=8)
    before = np.asarray(os8(x)[1])
    load_backbone_weights(os8, path)
    for name in ("conv1_conv", "conv4_block3_2_conv", "conv5_block3_3_bn"):
        for a, b in zip(os8.get_layer(name).weights, ref.get_layer(name).weights):
            np.testing.assert_array_equal(a.numpy(), b.numpy())
    after = np.asarray(os8(x)[1])
    assert not np.allclose(before, after)
    # stage 3 at OS 8 differs from OS 16 (dilation 2 instead of stride 2) beyond its size
    assert os8(x)[0].shape[1:3] == (6, 8) and got.shape[1:3] == (3, 4)


def test_resnet_deep_stem_refuses_the_keras_file_listing_the_mismatches(resnet50_imagenet_file):
    _, path = resnet50_imagenet_file
    model = resnet_backbone(50, stem="deep")
    with pytest.raises(ValueError) as err:
        load_backbone_weights(model, path)
    text = str(err.value)
    for culprit in ("conv1_conv: in the file, not in the model", "stem_conv1: in the model, not in the file",
                    "conv2_block1_1_conv/kernel: file (1, 1, 64, 64) vs model (1, 1, 128, 64)"):
        assert culprit in text


def test_resnet_bad_options():
    with pytest.raises(ValueError, match="output_stride must be 8 or 16, got 32"):
        resnet_backbone(50, output_stride=32)
    with pytest.raises(ValueError, match="stem must be one of"):
        resnet_backbone(50, stem="wide")


# ---------------------------------------------------------------- MobileNetV2


@pytest.fixture(scope="module")
def mobilenet_file(tmp_path_factory):
    ref = keras.applications.MobileNetV2(input_shape=(64, 96, 3), alpha=0.35, include_top=False, weights=None)
    randomize_bn(ref)
    path = str(tmp_path_factory.mktemp("weights") / "mobilenet_v2_0.35_notop.h5")
    ref.save(path)
    return ref, path


@pytest.mark.parametrize("output_stride", [8, 16, 32])
def test_mobilenet_output_strides(output_stride):
    model = mobilenet_backbone(output_stride=output_stride, alpha=0.35)
    out = model(image())
    assert out.shape == (1, ceil_div(H, output_stride), ceil_div(W, output_stride), 1280)
    dilations = {l.name: l.dilation_rate[0] for l in model.layers if l.name.endswith("_depthwise")}
    expected_last = {8: 4, 16: 2, 32: 1}[output_stride]
    assert dilations["block_16_depthwise"] == expected_last


def test_mobilenet_weights_load_and_os32_is_keras_applications(mobilenet_file):
    ref, path = mobilenet_file
    x = image(64, 96)
    unit = (x * np.float32(IMAGENET_STD) + np.float32(IMAGENET_MEAN)) * 2 - 1  # what keras' model expects
    want = np.asarray(ref(unit))
    os32 = mobilenet_backbone(output_stride=32, alpha=0.35)
    load_backbone_weights(os32, path)
    got = np.asarray(os32(x))
    assert np.max(np.abs(got - want)) <= 1e-5 * np.max(np.abs(want))
    assert np.max(np.abs(want)) > 0.1
    os8 = mobilenet_backbone(output_stride=8, alpha=0.35)
    load_backbone_weights(os8, path)
    np.testing.assert_array_equal(os8.get_layer("block_15_depthwise").weights[0].numpy(),
                                  ref.get_layer("block_15_depthwise").weights[0].numpy())
    assert os8(x).shape == (1, 8, 12, 1280)


def test_mobilenet_file_for_another_alpha_is_refused(mobilenet_file):
    _, path = mobilenet_file
    with pytest.raises(ValueError) as err:
        load_backbone_weights(mobilenet_backbone(alpha=0.5), path)
    assert "block_1_project/kernel: file (1, 1, 48, 8) vs model (1, 1, 48, 16)" in str(err.value)


# ---------------------------------------------------------------- weight files


def test_keras3_weights_file_round_trip_and_refusal(tmp_path):
    a = hrnet_backbone(tiny_extra())
    randomize_bn(a)
    path = str(tmp_path / "tiny.weights.h5")
    a.save_weights(path)
    b = hrnet_backbone(tiny_extra())
    load_backbone_weights(b, path)
    x = image()
    np.testing.assert_allclose(np.asarray(b(x)), np.asarray(a(x)), rtol=1e-6, atol=1e-6)
    wider = copy.deepcopy(tiny_extra())
    wider["STAGE2"]["NUM_CHANNELS"] = [12, 16]
    with pytest.raises(ValueError, match="tiny.weights.h5 does not fit backbone"):
        load_backbone_weights(hrnet_backbone(wider), path)
    with pytest.raises(FileNotFoundError, match="never downloaded"):
        load_backbone_weights(b, str(tmp_path / "absent.h5"))
