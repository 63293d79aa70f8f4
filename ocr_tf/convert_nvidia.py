"""Convert NVIDIA's hierarchical multi-scale HRNet-OCR checkpoints (NVIDIA/semantic-segmentation,
arch `ocrnet.HRNet_Mscale`, e.g. `cityscapes_ocrnet.HRNet_Mscale_outstanding-turtle.pth`) into
`hrnet_w48_mscale_ocr` (ocr_tf/layers/mscale.py).

    python -m ocr_tf.convert --checkpoint cityscapes_ocrnet.HRNet_Mscale_outstanding-turtle.pth \
        --model hrnet_w48_mscale_ocr --num-classes 19 --out converted/

NVIDIA's files hold `{"state_dict": ..., ...}` with every key prefixed `module.` (DataParallel);
names are `backbone.<[HR] trunk name>`, `ocr.<OCR head>` (`conv3x3_ocr.{0,1.0}`,
`aux_head.{0,1.0,2}`, the [HR] OCR module names, `cls_head`) and `scale_attn.{conv0,bn0,conv1,
bn1,conv2}` (../shared/ANCHORS.md [NV]). The mapping is strict as for [HR] (convert.py): every
missing, unexpected or mis-shaped tensor is listed and nothing is loaded (NVIDIA's own loader skips
mismatched keys silently).
"""

import numpy as np

from ocr_tf.convert import _conv_bn_entries, _conv_entries, assign_strict, backbone_variables, ocr_module_entries

# Relative error allowed by the fixture / NVIDIA-code comparisons (max |a - b| / max |b|).
VERIFY_TOLERANCE = 1e-4


def nvidia_variables(model):
    """{NVIDIA state_dict name (without `module.`): keras variable} for `build_mscale_ocr` models."""
    from ocr_tf.layers.mscale import MscaleOCRHead

    head = model.get_layer("head")
    if not isinstance(head, MscaleOCRHead):
        raise ValueError(f"NVIDIA multi-scale checkpoints need an *_mscale_ocr model, not {model.name!r}.")
    entries = {f"backbone.{k}": v for k, v in backbone_variables(model.get_layer("backbone")).items()}
    for layer, conv, bn in (
        (head.aux_head, "ocr.aux_head.0", "ocr.aux_head.1.0"),
        (head.conv3x3_ocr, "ocr.conv3x3_ocr.0", "ocr.conv3x3_ocr.1.0"),
        (head.scale_attn.conv0, "scale_attn.conv0", "scale_attn.bn0"),
        (head.scale_attn.conv1, "scale_attn.conv1", "scale_attn.bn1"),
    ):
        entries.update(_conv_bn_entries(layer, conv, bn))
    entries.update(_conv_entries(head.aux_cls, "ocr.aux_head.2"))
    entries.update(ocr_module_entries(head, prefix="ocr."))  # the [HR] names under `ocr.`
    entries["scale_attn.conv2.weight"] = head.scale_attn.conv2.kernel  # no bias
    return entries


def load_nvidia_weights(model, state, source="<state_dict>"):
    """Assign a cleaned NVIDIA state_dict (no `module.` prefix, no num_batches_tracked) to `model`,
    or raise CheckpointMismatch listing every problem before assigning anything."""
    assign_strict(nvidia_variables(model), state, source)


def verify_fixture(model, reference):
    """Run a fixture in the tools/make_nvidia_fixture.py format (`input_N` NCHW, `pred_N_<tag>`,
    scale lists in its config) through `model` by `mscale_predict`; returns {key: rel err}."""
    import json

    from ocr_tf.layers.mscale import mscale_predict

    errors = {}
    with np.load(reference, allow_pickle=False) as ref:
        if "config" not in ref.files or "input_0" not in ref.files:
            raise ValueError(f"{reference} is not a multi-scale fixture: it needs config and input_N, pred_N_<tag>.")
        scale_lists = json.loads(str(ref["config"]))["scale_lists"]
        n = 0
        while f"input_{n}" in ref.files:
            x = np.transpose(ref[f"input_{n}"], (0, 2, 3, 1))
            for tag, scales in scale_lists.items():
                want = np.transpose(ref[f"pred_{n}_{tag}"], (0, 2, 3, 1))
                got = np.asarray(mscale_predict(model, x, scales))
                if got.shape != want.shape:
                    raise ValueError(f"{reference}: pred_{n}_{tag} has shape {want.shape}, the model gives {got.shape}.")
                errors[f"pred_{n}_{tag}"] = float(np.max(np.abs(got - want)) / np.max(np.abs(want)))
            n += 1
    return errors


def verify_with_nvidia(model, repo, state, extra, num_classes, size=(128, 192), scales=(0.5, 1.0, 2.0)):
    """Build NVIDIA's model from the checkout `repo` with the same `state`, run one random image at
    `scales` through both; returns {"nvidia_pred": rel err}."""
    from ocr_tf.official_nvidia import compare_with_nvidia, nvidia_model

    head = model.get_layer("head")
    torch_model = nvidia_model(
        repo, state, extra, num_classes, head.mid_channels, head.key_channels, head.attn_channels
    )
    return {f"nvidia_{k}": v for k, v in compare_with_nvidia(model, torch_model, size, scales).items()}
