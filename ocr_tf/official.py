"""The official HRNet-OCR PyTorch model, run from the user's own checkout, to verify a conversion.

The official code (HRNet/HRNet-Semantic-Segmentation, branch HRNet-OCR) is not bundled: point
`python -m ocr_tf.convert --official-repo DIR` at a clone of it. Its `lib/models/seg_hrnet_ocr.py`
is imported as is and built through its own `get_seg_model(config)`; we only provide the few
config fields it reads. Needs torch (`pip install -e ".[convert]"`).
"""

import importlib
import os
import sys
import types

import numpy as np


def _config(extra, num_classes, mid_channels, key_channels, align_corners):
    """The fields of the official yacs config that `seg_hrnet_ocr.HighResolutionNet` reads."""
    ns = types.SimpleNamespace
    return ns(
        MODEL=ns(
            EXTRA=extra,
            ALIGN_CORNERS=bool(align_corners),
            PRETRAINED="",
            OCR=ns(MID_CHANNELS=int(mid_channels), KEY_CHANNELS=int(key_channels), DROPOUT=0.05, SCALE=1),
        ),
        DATASET=ns(NUM_CLASSES=int(num_classes)),
    )


def _import_official(repo):
    """`models.seg_hrnet_ocr` from `repo`/lib, without leaving its top-level `models` package behind."""
    lib = os.path.join(os.path.abspath(repo), "lib")
    source = os.path.join(lib, "models", "seg_hrnet_ocr.py")
    if not os.path.isfile(source):
        raise FileNotFoundError(
            f"{source} not found: --official-repo must be a checkout of HRNet/HRNet-Semantic-Segmentation, "
            "branch HRNet-OCR (git clone -b HRNet-OCR ...)."
        )
    saved = {name: mod for name, mod in sys.modules.items() if name == "models" or name.startswith("models.")}
    for name in saved:
        del sys.modules[name]
    sys.path.insert(0, lib)
    try:
        return importlib.import_module("models.seg_hrnet_ocr")
    finally:
        sys.path.remove(lib)
        for name in [n for n in sys.modules if n == "models" or n.startswith("models.")]:
            del sys.modules[name]
        sys.modules.update(saved)


def build_official(repo, extra, num_classes, mid_channels=512, key_channels=256, align_corners=True):
    """The official network, freshly initialised by its own code."""
    try:
        import torch  # noqa: F401
    except ImportError as e:
        raise ImportError('Running the official model needs torch: pip install -e ".[convert]"') from e
    module = _import_official(repo)
    # The official code calls `np.int`, an alias NumPy 1.24 removed; lend it while building.
    lend = not hasattr(np, "int")
    if lend:
        np.int = int
    try:
        model = module.get_seg_model(_config(extra, num_classes, mid_channels, key_channels, align_corners))
    finally:
        if lend:
            del np.int
    return model


def official_model(repo, state, extra, num_classes, mid_channels=512, key_channels=256, align_corners=True):
    """The official network in eval mode with `state` (name -> array, official names) loaded strictly."""
    import torch

    model = build_official(repo, extra, num_classes, mid_channels, key_channels, align_corners)
    model.load_state_dict({k: torch.as_tensor(np.asarray(v)) for k, v in state.items()}, strict=True)
    return model.eval()


def compare_with_official(keras_model, torch_model, image_size=(128, 192), seed=0):
    """Run one random normalised image (`image_size`) through both; returns
    {"aux": rel err, "out": rel err} with rel err = max |keras - official| / max |official|."""
    import torch

    x = np.random.default_rng(seed).normal(size=(1, 3, *image_size)).astype(np.float32)
    with torch.no_grad():
        aux, out = (t.numpy() for t in torch_model(torch.from_numpy(x)))
    pred = keras_model(np.transpose(x, (0, 2, 3, 1)), training=False)
    errors = {}
    for key, want, got in (("aux", aux, pred["aux_logits"]), ("out", out, pred["logits"])):
        want = np.transpose(want, (0, 2, 3, 1))
        got = np.asarray(got)
        if got.shape != want.shape:
            raise ValueError(f"{key}: the converted model gives {got.shape}, the official one {want.shape}.")
        errors[key] = float(np.max(np.abs(got - want)) / np.max(np.abs(want)))
    return errors
