"""The official tiny HRNet-OCR fixture (`tests/fixtures/hrnet_ocr_tiny_official.npz`, from the
official PyTorch code: weights, BatchNorm statistics, inputs and outputs) as the tests load it."""

import json
import os

import numpy as np

FIXTURE = os.path.join(os.path.dirname(__file__), "fixtures", "hrnet_ocr_tiny_official.npz")


def load_fixture():
    """{key: array} of the fixture file (its README lists the keys)."""
    with np.load(FIXTURE) as data:
        return {k: data[k] for k in data.files}


def fixture_model(fixture=None):
    """The fixture's network as an ocr_tf model with the official weights loaded, built under the
    current dtype policy."""
    from ocr_tf import convert
    from ocr_tf.models import build_model

    fixture = fixture if fixture is not None else load_fixture()
    cfg = json.loads(str(fixture["config"]))
    model = build_model("hrnet_w18_ocr", cfg["num_classes"], extra=cfg["extra"], mid_channels=cfg["ocr_mid_channels"],
                        key_channels=cfg["ocr_key_channels"], align_corners=cfg["align_corners"])
    state = {k[len("state/"):]: v for k, v in fixture.items() if k.startswith("state/")}
    convert.load_official_weights(model, convert.clean_state_dict(state))
    return model
