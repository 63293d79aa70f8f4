"""`python -m ocr_tf.convert --official-repo`: the official PyTorch model as the reference.

The official code is not bundled. The comparisons run when OCR_TF_OFFICIAL_REPO names a checkout
of HRNet/HRNet-Semantic-Segmentation (branch HRNet-OCR); the error path always runs.
"""

import json
import os

import numpy as np
import pytest

from ocr_tf import convert
from ocr_tf.cli import convert as convert_cli
from ocr_tf.official import build_official, official_model

FIXTURE = os.path.join(os.path.dirname(__file__), "fixtures", "hrnet_ocr_tiny_official.npz")
REPO = os.environ.get("OCR_TF_OFFICIAL_REPO")
needs_repo = pytest.mark.skipif(not REPO, reason="set OCR_TF_OFFICIAL_REPO to a checkout of the official code")


def test_a_folder_without_the_official_code_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"seg_hrnet_ocr\.py not found.*branch HRNet-OCR"):
        official_model(tmp_path, {}, {}, 5)


def randomized_official(extra, num_classes, mid, key, seed):
    """The official model with random weights *and* BatchNorm statistics, as a released .pth stores it."""
    import torch

    torch.manual_seed(seed)
    net = build_official(REPO, extra, num_classes, mid, key)
    state = {}
    for name, value in net.state_dict().items():
        if name.endswith("running_var"):
            value = torch.rand_like(value) + 0.5
        elif value.is_floating_point():
            value = torch.randn_like(value) * (0.5 / max(1, value[0].numel()) ** 0.5 if value.dim() > 1 else 0.2)
        state["model." + name] = value
    state["loss.criterion.weight"] = torch.ones(num_classes)  # released files carry the loss' class weights
    return state


@needs_repo
@pytest.mark.parametrize("preset", ["tiny", "w48"])
def test_converted_checkpoint_equals_the_official_model(tmp_path, preset, capsys):
    import torch

    from ocr_tf.backbones.hrnet import HRNET_CONFIGS

    if preset == "tiny":  # the fixture's width: every code path, seconds to run
        extra = json.loads(str(np.load(FIXTURE)["config"]))["extra"]
        args, classes, mid, key = ["--model", "hrnet_w18_ocr", "--extra", json.dumps(extra)], 5, 32, 16
    else:  # the published W48 layout, every official name (incl. stage 1's downsample)
        extra = HRNET_CONFIGS["w48"]
        args, classes, mid, key = ["--model", "hrnet_w48_ocr"], 19, 512, 256
    torch.save(randomized_official(extra, classes, mid, key, seed=1), tmp_path / "ckpt.pth")
    rc = convert_cli.main([
        "--checkpoint", str(tmp_path / "ckpt.pth"), *args, "--num-classes", str(classes),
        "--mid-channels", str(mid), "--key-channels", str(key), "--out", str(tmp_path / "out"),
        "--official-repo", REPO, "--verify-size", "70x90",
    ])
    out = capsys.readouterr().out
    assert rc == 0, out
    errors = {line.split()[1][:-1]: float(line.split()[-1]) for line in out.splitlines() if line.startswith("verify ")}
    assert set(errors) == {"official_aux", "official_out"}
    assert max(errors.values()) < 1e-4
