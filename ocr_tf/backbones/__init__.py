"""Backbones of the published OCR models, each a functional `keras.Model` on normalised NHWC images.

* `hrnet_backbone` (hrnet.py): HRNetV2 (W18-small-v2, W18, W32, W48), stride-4 concatenated features.
* `resnet_backbone` (resnet.py): dilated ResNet-50/101, output stride 8/16 -> (stage 3, stage 4).
* `mobilenet_backbone` (mobilenet.py): MobileNetV2 (keras.applications), output stride 8/16/32.

`load_backbone_weights(model, path)` loads a local weight file (no downloads) and refuses one that
does not fit, listing every mismatch.
"""

import os

import h5py
import numpy as np


def _legacy_group(f):
    """The group holding per-layer weights in a legacy / ImageNet `.h5` (or None)."""
    if "layer_names" in f.attrs:
        return f
    if "model_weights" in f and "layer_names" in f["model_weights"].attrs:
        return f["model_weights"]
    return None


def _text(x):
    return x.decode("utf8") if isinstance(x, bytes) else str(x)


def load_backbone_weights(model, path):
    """Load `path` into `model`, refusing (ValueError listing every mismatch) a file that does not fit.

    * `*.weights.h5`: the Keras 3 format of the same backbone (`backbone.save_weights(...)`).
    * any other `.h5`: the legacy by-layer-name format of keras.applications' ImageNet files (and of
      `model.save("x.h5")`); every layer with weights must match by name, count and shape, in both
      directions, so that a file for another width/stem never loads half-way.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"Backbone weights file not found: {path!r} (weights are never downloaded).")
    if path.endswith(".weights.h5"):
        try:
            model.load_weights(path)
        except ValueError as e:
            raise ValueError(f"{path} does not fit backbone '{model.name}': {e}") from None
        return
    with h5py.File(path, "r") as f:
        g = _legacy_group(f)
        if g is None:
            raise ValueError(
                f"{path} is neither a Keras '.weights.h5' file nor a legacy/ImageNet '.h5' with 'layer_names'."
            )
        layers = {layer.name: layer for layer in model.layers}
        problems, assignments, seen = [], [], set()
        for name in map(_text, g.attrs["layer_names"]):
            wnames = [_text(w) for w in g[name].attrs.get("weight_names", [])]
            if not wnames:
                continue
            seen.add(name)
            layer = layers.get(name)
            if layer is None:
                problems.append(f"{name}: in the file, not in the model")
                continue
            if len(layer.weights) != len(wnames):
                problems.append(f"{name}: file has {len(wnames)} weights, model {len(layer.weights)}")
                continue
            for var, wname in zip(layer.weights, wnames):
                value = np.asarray(g[name][wname])
                if tuple(var.shape) != value.shape:
                    problems.append(f"{wname}: file {value.shape} vs model {tuple(var.shape)}")
                else:
                    assignments.append((var, value))
        for layer in model.layers:
            if layer.weights and layer.name not in seen:
                problems.append(f"{layer.name}: in the model, not in the file")
    if problems:
        listing = "\n  ".join(problems)
        raise ValueError(f"{path} does not fit backbone '{model.name}' ({len(problems)} mismatches):\n  {listing}")
    for var, value in assignments:
        var.assign(value)


from ocr_tf.backbones.hrnet import HRNET_CONFIGS, hrnet_backbone  # noqa: E402
from ocr_tf.backbones.mobilenet import mobilenet_backbone  # noqa: E402
from ocr_tf.backbones.resnet import resnet_backbone  # noqa: E402

__all__ = ["HRNET_CONFIGS", "hrnet_backbone", "load_backbone_weights", "mobilenet_backbone", "resnet_backbone"]
