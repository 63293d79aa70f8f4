"""Convert official HRNet-OCR / HRNet checkpoints (HRNet/HRNet-Semantic-Segmentation, e.g.
`hrnet_ocr_cs_8162_torch11.pth`) into Keras models.

    python -m ocr_tf.convert --checkpoint hrnet_ocr_cs_8162_torch11.pth --model hrnet_w48_ocr \
        --dataset cityscapes --out hrnet_w48_ocr_cityscapes/

Reads a `.pth` with torch (`weights_only=True`; torch is optional and only needed for `.pth`) or an
`.npz` of the state_dict (names as keys; a `state/` key prefix, as in the test fixture, is accepted).
Drops the `model.` prefix of released files, skips `loss.*` (class weights) and BN's
`num_batches_tracked`, reads `last_layer.*` (seg_hrnet's head) as the OCR model's `aux_head.*`,
transposes conv kernels OIHW -> HWIO. Every missing, unexpected or mis-shaped tensor stops the
conversion with the full list: a checkpoint never loads half-way. Writes a preset folder
(`Segmenter.from_preset(DIR)`; ocr_tf/presets.py) atomically: the network with the classes of
`--dataset` (an official file, known by its name, brings its own dataset and published mIoU) and the
provenance (file name, sha256, converter version, the `--verify` figure). `--verify REF.npz` runs the reference inputs (`input_N`, NCHW)
through the converted model and compares with the reference outputs (`aux_N`, `out_N`);
`--official-repo DIR` (a clone of the official repository, which is not bundled) runs a random
image through the official PyTorch model with the same checkpoint and compares (ocr_tf/official.py).
`--backbone-only` converts just the HRNet backbone (e.g. the ImageNet-pretrained
`hrnetv2_w48_imagenet_pretrained.pth`, whose classification head is skipped) into
`<backbone>_backbone.weights.h5`, which `build_model(..., weights=...)` loads.
"""

if __name__ == "__main__":  # `python -m ocr_tf.convert`: parse arguments before TensorFlow loads
    from ocr_tf.cli.convert import main

    raise SystemExit(main())

import json
import os
import shutil
import tempfile

import numpy as np

from ocr_tf.backbones.hrnet import torch_bn_name, torch_conv_name
from ocr_tf.errors import MissingFileError, UserError

# Relative error allowed by `--verify` (max |a - b| / max |b|).
VERIFY_TOLERANCE = 1e-4
# BatchNorm epsilon of the official code (nn.BatchNorm2d's and InPlaceABNSync's default).
BN_EPSILON = 1e-5
# Top-level modules of the official HRNet backbone (stem, stage 1, transitions, stages 2-4).
BACKBONE_ROOTS = ("conv1", "bn1", "conv2", "bn2", "layer1", "transition1", "transition2", "transition3",
                  "stage2", "stage3", "stage4")


class CheckpointMismatch(UserError):
    """The checkpoint does not fit the model; `.missing`, `.unexpected`, `.mismatched` list why."""

    def __init__(self, source, missing, unexpected, mismatched):
        self.missing, self.unexpected, self.mismatched = missing, unexpected, mismatched
        lines = [f"Checkpoint {source} does not fit the model:"]
        for title, items in (("missing", missing), ("unexpected", unexpected), ("mis-shaped", mismatched)):
            if items:
                lines.append(f"  {len(items)} {title}:")
                lines.extend(f"    {item}" for item in items)
        super().__init__("\n".join(lines))


def read_state_dict(path):
    """A checkpoint file -> {official name: float32 array}, names as stored (prefixes kept)."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise MissingFileError(f"checkpoint {path} not found.")
    if path.endswith(".npz"):
        with np.load(path, allow_pickle=False) as data:
            names = list(data.files)
            if any(n.startswith("state/") for n in names):
                names = [n for n in names if n.startswith("state/")]
                return {n[len("state/") :]: np.asarray(data[n]) for n in names}
            return {n: np.asarray(data[n]) for n in names}
    try:
        import torch
    except ImportError:
        raise ImportError(
            f'Reading {path} needs PyTorch: pip install "ocr_tf[convert]" (CPU torch), '
            "or convert the state_dict to .npz first."
        ) from None
    import pickle

    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:  # weights_only refuses pickled classes, e.g. a whole nn.Module
        raise UserError(
            f"{path} holds pickled Python objects (e.g. a whole nn.Module), not a state_dict: in PyTorch save "
            "torch.save(model.state_dict(), path) and convert that file."
        ) from None
    except (RuntimeError, EOFError, OSError) as e:  # truncated downloads, other formats
        raise UserError(f"cannot read {path} as a PyTorch checkpoint ({str(e).splitlines()[0][:160]}).") from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise UserError(f"{path} holds a {type(state).__name__}, not a state_dict: save model.state_dict().")
    return {k: v.detach().cpu().numpy() for k, v in state.items() if hasattr(v, "detach")}


def clean_state_dict(state, head="ocr"):
    """Drop the `module.`/`model.` prefixes, `loss.*` and `num_batches_tracked`; map `last_layer` for OCR."""
    out = {}
    for name, value in state.items():
        for prefix in ("module.", "model."):  # DataParallel's, then the released files' wrapper
            if name.startswith(prefix):
                name = name[len(prefix) :]
        if name.startswith("loss.") or name.endswith("num_batches_tracked"):
            continue
        out[name] = value
    if head == "ocr" and not any(n.startswith("aux_head.") for n in out):
        out = {("aux_head." + n[len("last_layer.") :] if n.startswith("last_layer.") else n): v for n, v in out.items()}
    return out


def is_torch04_file(path):
    """The [HR] README's `_torch04` release files were trained and evaluated under PyTorch 0.4.1."""
    return "_torch04" in os.path.basename(os.fspath(path))


def inplace_abn_weights(state):
    """A state dict written by the official code under PyTorch 0.4, with its BN scales made standard.

    Under PyTorch 0.4 the official lib/models/bn_helper.py makes every BatchNorm2d an
    InPlaceABNSync(activation='none'): the same tensor names, but its kernels scale by
    |weight| + eps, not weight (sync_bn/inplace_abn/src/inplace_abn_cpu.cpp forward_cpu:
    `gamma = abs(weight) + eps`; the CUDA kernels likewise), in training and in eval. So the
    standard BatchNorm gamma is |weight| + eps; conv weights (no running_var beside them) are kept.
    """
    out = dict(state)
    for name, value in state.items():
        if name.endswith(".weight") and name[: -len("weight")] + "running_var" in state:
            out[name] = np.abs(np.asarray(value, np.float32)) + np.float32(BN_EPSILON)
    return out


def _conv_bn_entries(layer, conv_name, bn_name):
    """{official name: keras variable} for one ConvBN."""
    entries = {f"{conv_name}.weight": layer.conv.kernel}
    if layer.conv.use_bias:
        entries[f"{conv_name}.bias"] = layer.conv.bias
    bn = layer.bn
    entries.update(
        {
            f"{bn_name}.weight": bn.gamma,
            f"{bn_name}.bias": bn.beta,
            f"{bn_name}.running_mean": bn.moving_mean,
            f"{bn_name}.running_var": bn.moving_variance,
        }
    )
    return entries


def _conv_entries(conv, name):
    return {f"{name}.weight": conv.kernel, f"{name}.bias": conv.bias}


def backbone_variables(backbone):
    """{official state_dict name: keras variable} for an HRNet backbone (`hrnet_backbone`)."""
    from ocr_tf.layers.common import ConvBN

    entries = {}
    for layer in backbone.layers:
        if isinstance(layer, ConvBN):
            conv = torch_conv_name(layer.name)
            entries.update(_conv_bn_entries(layer, conv, torch_bn_name(conv)))
    return entries


def ocr_module_entries(head, prefix=""):
    """{name: variable} of an [HR]-style OCRHead's OCR module and classifier, named as [HR]
    (`ocr_distri_head.*`, `cls_head`) after `prefix` (NVIDIA nests them under `ocr.`)."""
    att = head.ocr.attention
    block = f"{prefix}ocr_distri_head.object_context_block"
    entries = {}
    for layer, conv, bn in (
        (att.f_pixel[0], f"{block}.f_pixel.0", f"{block}.f_pixel.1.0"),
        (att.f_pixel[1], f"{block}.f_pixel.2", f"{block}.f_pixel.3.0"),
        (att.f_object[0], f"{block}.f_object.0", f"{block}.f_object.1.0"),
        (att.f_object[1], f"{block}.f_object.2", f"{block}.f_object.3.0"),
        (att.f_down, f"{block}.f_down.0", f"{block}.f_down.1.0"),
        (att.f_up, f"{block}.f_up.0", f"{block}.f_up.1.0"),
        (head.ocr.fuse, f"{prefix}ocr_distri_head.conv_bn_dropout.0", f"{prefix}ocr_distri_head.conv_bn_dropout.1.0"),
    ):
        entries.update(_conv_bn_entries(layer, conv, bn))
    entries.update(_conv_entries(head.cls_head, f"{prefix}cls_head"))
    return entries


def official_variables(model):
    """{official state_dict name: keras variable} for an HRNet model built by `build_model`."""
    from ocr_tf.layers.ocr import OCRHead
    from ocr_tf.models import FCNHead

    entries = backbone_variables(model.get_layer("backbone"))
    head = model.get_layer("head")
    if isinstance(head, OCRHead) and head.style == "hrnet":
        entries.update(_conv_bn_entries(head.aux_head, "aux_head.0", "aux_head.1"))
        entries.update(_conv_bn_entries(head.conv3x3_ocr, "conv3x3_ocr.0", "conv3x3_ocr.1"))
        entries.update(_conv_entries(head.aux_cls, "aux_head.3"))
        entries.update(ocr_module_entries(head))
    elif isinstance(head, FCNHead) and head.aux_conv_bn is None:
        entries.update(_conv_bn_entries(head.conv_bn, "last_layer.0", "last_layer.1"))
        entries.update(_conv_entries(head.cls, "last_layer.3"))
    else:
        raise ValueError(f"Official checkpoints exist for HRNet OCR/FCN models only, not {model.name!r}.")
    return entries


def _to_keras(value):
    """PyTorch layout -> Keras: conv kernels O x I x kH x kW -> kH x kW x I x O."""
    return np.transpose(value, (2, 3, 1, 0)) if value.ndim == 4 else value


def backbone_part(state):
    """The backbone tensors of a state_dict: an ImageNet HRNet file also holds its classification
    head (incre_modules, downsamp_modules, final_layer, classifier), a segmentation file its head."""
    return {k: v for k, v in state.items() if k.split(".")[0] in BACKBONE_ROOTS}


def load_official_weights(model, state, source="<state_dict>", backbone_only=False):
    """Assign a cleaned official state_dict to `model` (a segmenter, or with backbone_only=True an
    HRNet backbone fed only the backbone tensors of `state`); raises CheckpointMismatch listing every
    problem before assigning anything."""
    if backbone_only:
        targets, state = backbone_variables(model), backbone_part(state)
    else:
        targets = official_variables(model)
    assign_strict(targets, state, source)


def assign_strict(targets, state, source="<state_dict>"):
    """Assign `state` ({name: PyTorch-layout array}) to `targets` ({name: keras variable}) only if
    every name matches in both directions with the right shape; else CheckpointMismatch listing
    every problem, before anything is assigned."""
    missing = sorted(set(targets) - set(state))
    unexpected = sorted(set(state) - set(targets))
    mismatched = []
    for name in sorted(set(targets) & set(state)):
        got = _to_keras(np.asarray(state[name])).shape
        want = tuple(targets[name].shape)
        if got != want:
            mismatched.append(f"{name}: checkpoint {tuple(np.shape(state[name]))} -> {got}, model {want}")
    if missing or unexpected or mismatched:
        raise CheckpointMismatch(source, missing, unexpected, mismatched)
    for name, var in targets.items():
        var.assign(_to_keras(np.asarray(state[name], dtype=np.float32)))


def _atomic_save(model, out_dir, stem):
    """Write `<stem>.keras` and `<stem>.weights.h5` into `out_dir` via a temp dir + rename."""
    os.makedirs(out_dir, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".convert-", dir=out_dir)
    try:
        paths = []
        for suffix, save in ((".keras", model.save), (".weights.h5", model.save_weights)):
            tmp_path = os.path.join(tmp, stem + suffix)
            save(tmp_path)
            final = os.path.join(out_dir, stem + suffix)
            os.replace(tmp_path, final)
            paths.append(final)
        return paths
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def verify(model, reference):
    """Run `input_N` of a reference .npz (NCHW) through `model`; returns {"aux_N"/"out_N": rel err}."""
    errors = {}
    with np.load(reference, allow_pickle=False) as ref:
        n = 0
        while f"input_{n}" in ref.files:
            x = np.transpose(ref[f"input_{n}"], (0, 2, 3, 1))
            pred = model(x, training=False)
            for key, out in ((f"aux_{n}", "aux_logits"), (f"out_{n}", "logits")):
                if key in ref.files:
                    want = np.transpose(ref[key], (0, 2, 3, 1))
                    got = np.asarray(pred[out])
                    if got.shape != want.shape:
                        raise ValueError(f"{reference}: {key} has shape {want.shape}, the model gives {got.shape}.")
                    errors[key] = float(np.max(np.abs(got - want)) / np.max(np.abs(want)))
            n += 1
        if not n:
            raise ValueError(f"{reference} has no input_0; expected the fixture format (input_N, aux_N, out_N).")
    return errors


def verify_official(model, args):
    """--official-repo: the official PyTorch model with the same checkpoint vs `model` on a random
    image; returns {"official_aux"/"official_out": rel err}."""
    from ocr_tf.backbones.hrnet import HRNET_CONFIGS
    from ocr_tf.official import compare_with_official, official_model

    head = model.get_layer("head")
    extra = _load_extra(args.extra) or HRNET_CONFIGS[args.model.split("_")[1]]
    if _is_mscale_name(args.model):  # NVIDIA's code instead of [HR]'s
        from ocr_tf.convert_nvidia import verify_with_nvidia

        state = clean_state_dict(read_state_dict(args.checkpoint), head="mscale")
        size = tuple(int(v) for v in args.verify_size.lower().split("x"))
        return verify_with_nvidia(model, args.official_repo, state, extra, args.num_classes, size)
    state = clean_state_dict(read_state_dict(args.checkpoint))
    if args.inplace_abn == "true":  # the official model under PyTorch >= 1 has plain BN: give it the same scales
        state = inplace_abn_weights(state)
    torch_model = official_model(
        args.official_repo, state, extra, args.num_classes, head.mid_channels, head.key_channels,
        args.align_corners == "true",
    )
    size = tuple(int(v) for v in args.verify_size.lower().split("x"))
    return {f"official_{k}": v for k, v in compare_with_official(model, torch_model, size).items()}


def _is_mscale_name(name):
    from ocr_tf.models import MSCALE_MODELS

    return name in MSCALE_MODELS


def _load_extra(text):
    """--extra: a JSON string, or a JSON/YAML file holding the stage config (or MODEL.EXTRA / extra)."""
    if text is None:
        return None
    if os.path.isfile(text):
        import yaml

        with open(text) as f:
            data = yaml.safe_load(f)
    else:
        data = json.loads(text)
    for path in (("MODEL", "EXTRA"), ("extra",)):
        node = data
        for key in path:
            node = node.get(key) if isinstance(node, dict) else None
        if isinstance(node, dict):
            return node
    return data


def convert(checkpoint, model_name, num_classes=None, out_dir=None, extra=None, backbone_only=False,
            inplace_abn=False, **overrides):
    """Build `model_name`, load the official `checkpoint` into it, save it to `out_dir` (if given).
    backbone_only=True: build only the HRNet backbone of `model_name` ("hrnet_w48" or
    "hrnet_w48_ocr") and take only the backbone tensors (e.g. from the ImageNet-pretrained
    `hrnetv2_w48_imagenet_pretrained.pth`), saved as `<backbone>_backbone.*` for `weights=`.
    inplace_abn=True: the file's BN weights are InPlaceABN scales (`inplace_abn_weights`).
    Returns (model, [written paths])."""
    from ocr_tf.models import BACKBONES, MSCALE_MODELS, build_backbone, build_model

    if extra is not None:
        overrides["extra"] = extra
    if model_name in MSCALE_MODELS and not backbone_only:  # NVIDIA's format (convert_nvidia.py)
        from ocr_tf.convert_nvidia import load_nvidia_weights

        if num_classes is None:
            raise ValueError("num_classes is required.")
        model = build_model(model_name, num_classes, **overrides)
        state = clean_state_dict(read_state_dict(checkpoint), head="mscale")
        load_nvidia_weights(model, state, source=os.fspath(checkpoint))
        return model, (_atomic_save(model, out_dir, model_name) if out_dir else [])
    if backbone_only:
        backbone = model_name if model_name in BACKBONES else model_name.rsplit("_", 1)[0]
        if BACKBONES.get(backbone, ("",))[0] != "hrnet":
            raise ValueError(f"--backbone-only needs an HRNet model (hrnet_w48, ...), got {model_name!r}.")
        model = build_backbone(backbone, **{k: v for k, v in overrides.items() if k in ("extra", "align_corners")})
        stem = f"{backbone}_backbone"
    else:
        if num_classes is None:
            raise ValueError("num_classes is required (unless backbone_only).")
        model = build_model(model_name, num_classes, **overrides)
        stem = model_name
    head = "fcn" if model_name.endswith("_fcn") else "ocr"
    state = clean_state_dict(read_state_dict(checkpoint), head)
    if inplace_abn:
        state = inplace_abn_weights(state)
    load_official_weights(model, state, source=os.fspath(checkpoint), backbone_only=backbone_only)
    paths = _atomic_save(model, out_dir, stem) if out_dir else []
    return model, paths
