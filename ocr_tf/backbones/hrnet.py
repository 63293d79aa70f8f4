"""HRNetV2 (Wang et al., "Deep High-Resolution Representation Learning"), as the official
HRNet-OCR code builds it (../shared/ANCHORS.md, [HR]).

The network is described by a stage config in the official YAML form (`STAGE1`..`STAGE4`, each with
NUM_MODULES, NUM_BRANCHES, BLOCK, NUM_BLOCKS, NUM_CHANNELS) and returns HRNetV2's representation:
the four branches, branches 1..3 resized bilinearly to branch 0 (stride 4), concatenated.

Layer names are the official state_dict module names of each *conv* with "." replaced by "_"
(e.g. `stage2_0_fuse_layers_1_0_0_0`); every conv + BN pair is one `ConvBN`. `torch_conv_name` and
`torch_bn_name` give the official names back, which is all the checkpoint converter needs.
"""

import copy

import keras

from ocr_tf.layers.common import ConvBN, ResizeTo


def _stage(num_modules, block, num_blocks, num_channels):
    return {
        "NUM_MODULES": num_modules,
        "NUM_BRANCHES": len(num_blocks),
        "BLOCK": block,
        "NUM_BLOCKS": list(num_blocks),
        "NUM_CHANNELS": list(num_channels),
        "FUSE_METHOD": "SUM",
    }


def _hrnetv2(width, blocks=4, stage1_blocks=4, modules=(1, 4, 3)):
    w = [width * 2**i for i in range(4)]
    return {
        "STAGE1": _stage(1, "BOTTLENECK", [stage1_blocks], [64]),
        "STAGE2": _stage(modules[0], "BASIC", [blocks] * 2, w[:2]),
        "STAGE3": _stage(modules[1], "BASIC", [blocks] * 3, w[:3]),
        "STAGE4": _stage(modules[2], "BASIC", [blocks] * 4, w[:4]),
    }


# The official experiment configs (HRNet/HRNet-Semantic-Segmentation, experiments/*.yaml).
HRNET_CONFIGS = {
    "w48": _hrnetv2(48),
    "w32": _hrnetv2(32),
    "w18": _hrnetv2(18),
    "w18s": _hrnetv2(18, blocks=2, stage1_blocks=2, modules=(1, 3, 2)),  # W18-small-v2
}
# Not official: the demo's CPU-sized HRNet (widths 16/32/64/128, one block and one module per
# stage, a narrow stage 1), so `python -m ocr_tf.train` runs in minutes on 2 cores.
HRNET_CONFIGS["tiny"] = {
    "STAGE1": _stage(1, "BOTTLENECK", [1], [16]),
    "STAGE2": _stage(1, "BASIC", [1, 1], [16, 32]),
    "STAGE3": _stage(1, "BASIC", [1, 1, 1], [16, 32, 64]),
    "STAGE4": _stage(1, "BASIC", [1, 1, 1, 1], [16, 32, 64, 128]),
}

BLOCK_EXPANSION = {"BASIC": 1, "BOTTLENECK": 4}
_STAGE_KEYS = ("NUM_MODULES", "NUM_BRANCHES", "BLOCK", "NUM_BLOCKS", "NUM_CHANNELS")


def validate_extra(extra):
    """Check an official-form stage config; returns a normalised deep copy (extra keys kept)."""
    if not isinstance(extra, dict):
        raise ValueError(f"HRNet `extra` must be a dict with STAGE1..STAGE4, got {type(extra).__name__}.")
    extra = copy.deepcopy(extra)
    for s in range(1, 5):
        key = f"STAGE{s}"
        if key not in extra:
            raise ValueError(f"HRNet `extra` is missing {key}; it needs STAGE1..STAGE4.")
        cfg = extra[key]
        missing = [k for k in _STAGE_KEYS if k not in cfg]
        if missing and not (s == 1 and missing == ["NUM_BRANCHES"]):  # some official yamls typo it
            raise ValueError(f"HRNet `extra`.{key} is missing {missing}.")
        cfg.setdefault("NUM_BRANCHES", 1)
        if cfg["BLOCK"] not in BLOCK_EXPANSION:
            raise ValueError(f"HRNet `extra`.{key}.BLOCK must be one of {sorted(BLOCK_EXPANSION)}, got {cfg['BLOCK']!r}.")
        expected = 1 if s == 1 else s
        if cfg["NUM_BRANCHES"] != expected:
            raise ValueError(f"HRNet `extra`.{key}.NUM_BRANCHES must be {expected}, got {cfg['NUM_BRANCHES']}.")
        for k in ("NUM_BLOCKS", "NUM_CHANNELS"):
            if len(cfg[k]) != expected:
                raise ValueError(f"HRNet `extra`.{key}.{k} needs {expected} entries, got {cfg[k]}.")
    return extra


def keras_name(torch_module_name):
    """Official module name -> our layer name: 'stage2.0.fuse_layers.1.0.0.0' -> 'stage2_0_fuse_layers_1_0_0_0'."""
    return torch_module_name.replace(".", "_")


def torch_conv_name(layer_name):
    """Inverse of `keras_name` (the only official module name with an underscore is fuse_layers)."""
    return layer_name.replace("_", ".").replace("fuse.layers", "fuse_layers")


def torch_bn_name(conv_name):
    """The official BatchNorm paired with a conv: `x.convN` -> `x.bnN`, `x.N` -> `x.(N+1)`."""
    parent, _, last = conv_name.rpartition(".")
    if last.startswith("conv"):
        bn = "bn" + last[4:]
    else:
        bn = str(int(last) + 1)
    return f"{parent}.{bn}" if parent else bn


class _Builder:
    """Functional graph builder; keeps the options every layer shares."""

    def __init__(self, align_corners, synchronized):
        self.align_corners = align_corners
        self.synchronized = synchronized

    def conv_bn(self, x, filters, kernel, strides, torch_name, activation="relu"):
        return ConvBN(
            filters, kernel, strides=strides, activation=activation, synchronized=self.synchronized,
            name=keras_name(torch_name),
        )(x)

    def block(self, x, kind, planes, strides, prefix):
        """One BasicBlock / Bottleneck named `prefix` (e.g. 'layer1.0'); output planes * expansion."""
        out_channels = planes * BLOCK_EXPANSION[kind]
        residual = x
        if strides != 1 or x.shape[-1] != out_channels:
            residual = self.conv_bn(x, out_channels, 1, strides, f"{prefix}.downsample.0", activation=None)
        if kind == "BASIC":
            y = self.conv_bn(x, planes, 3, strides, f"{prefix}.conv1")
            y = self.conv_bn(y, planes, 3, 1, f"{prefix}.conv2", activation=None)
        else:
            y = self.conv_bn(x, planes, 1, 1, f"{prefix}.conv1")
            y = self.conv_bn(y, planes, 3, strides, f"{prefix}.conv2")
            y = self.conv_bn(y, out_channels, 1, 1, f"{prefix}.conv3", activation=None)
        y = keras.layers.Add(name=keras_name(f"{prefix}.add"))([y, residual])
        return keras.layers.ReLU(name=keras_name(f"{prefix}.relu"))(y)

    def transition(self, xs, channels, index):
        """`transition{index}`: adapt widths of existing branches, add new ones by stride-2 convs."""
        out = []
        for i, c in enumerate(channels):
            if i < len(xs):
                x = xs[i]
                if x.shape[-1] != c:
                    x = self.conv_bn(x, c, 3, 1, f"transition{index}.{i}.0")
            else:
                x = xs[-1]
                for j in range(i + 1 - len(xs)):
                    width = c if j == i - len(xs) else x.shape[-1]
                    x = self.conv_bn(x, width, 3, 2, f"transition{index}.{i}.{j}.0")
            out.append(x)
        return out

    def module(self, xs, cfg, prefix):
        """One HighResolutionModule: parallel branches, then every branch fused into every other."""
        kind = cfg["BLOCK"]
        ys = []
        for i, x in enumerate(xs):
            for b in range(cfg["NUM_BLOCKS"][i]):
                x = self.block(x, kind, cfg["NUM_CHANNELS"][i], 1, f"{prefix}.branches.{i}.{b}")
            ys.append(x)
        if len(ys) == 1:
            return ys
        fused = []
        for i, target in enumerate(ys):
            terms = []
            for j, y in enumerate(ys):
                name = f"{prefix}.fuse_layers.{i}.{j}"
                if j > i:  # 1x1 conv to branch i's width, then upsample to its size
                    y = self.conv_bn(y, target.shape[-1], 1, 1, f"{name}.0", activation=None)
                    y = ResizeTo(self.align_corners, name=keras_name(f"{name}.resize"))(y, target)
                elif j < i:  # stride-2 3x3 convs, ReLU on all links but the last
                    for k in range(i - j):
                        last = k == i - j - 1
                        width = target.shape[-1] if last else y.shape[-1]
                        y = self.conv_bn(y, width, 3, 2, f"{name}.{k}.0", activation=None if last else "relu")
                terms.append(y)
            s = keras.layers.Add(name=keras_name(f"{prefix}.fuse.{i}.add"))(terms)
            fused.append(keras.layers.ReLU(name=keras_name(f"{prefix}.fuse.{i}.relu"))(s))
        return fused


def hrnet_backbone(
    extra="w48",
    input_shape=(None, None, 3),
    align_corners=True,
    synchronized=False,
    name="backbone",
):
    """HRNetV2 as a functional `keras.Model`: (B, H, W, 3) -> (B, ceil(H/4), ceil(W/4), sum(widths)).

    `extra`: a key of `HRNET_CONFIGS` ("w48", "w32", "w18", "w18s") or a stage config dict in the
    official form. `align_corners` switches the bilinear resizes (True in the official code).
    """
    if isinstance(extra, str):
        if extra not in HRNET_CONFIGS:
            raise ValueError(f"Unknown HRNet config {extra!r}; known: {sorted(HRNET_CONFIGS)}.")
        extra = HRNET_CONFIGS[extra]
    extra = validate_extra(extra)
    b = _Builder(bool(align_corners), bool(synchronized))

    inputs = keras.Input(input_shape, name="image")
    x = b.conv_bn(inputs, 64, 3, 2, "conv1")
    x = b.conv_bn(x, 64, 3, 2, "conv2")

    s1 = extra["STAGE1"]
    for i in range(s1["NUM_BLOCKS"][0]):
        x = b.block(x, s1["BLOCK"], s1["NUM_CHANNELS"][0], 1, f"layer1.{i}")
    xs = [x]

    for s in (2, 3, 4):
        cfg = extra[f"STAGE{s}"]
        widths = [c * BLOCK_EXPANSION[cfg["BLOCK"]] for c in cfg["NUM_CHANNELS"]]
        xs = b.transition(xs, widths, s - 1)
        for m in range(cfg["NUM_MODULES"]):
            xs = b.module(xs, cfg, f"stage{s}.{m}")

    ups = [xs[0]] + [ResizeTo(b.align_corners, name=f"upsample_{i}")(x, xs[0]) for i, x in enumerate(xs[1:], 1)]
    feats = keras.layers.Concatenate(name="concat")(ups)
    return keras.Model(inputs, feats, name=name)
