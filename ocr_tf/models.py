"""Segmenters: a backbone + a head -> `keras.Model`, and the registry of named models.

`build_model(name, num_classes, input_shape=(None, None, 3), **overrides)` takes normalised float32
NHWC images and returns `{"logits", "aux_logits"}` (float32, B x h x w x K) at feature resolution:
stride 4 for HRNet, the output stride (8 by default) for dilated ResNet and MobileNetV2.

Names are `<backbone>_<head>`:
  backbones  hrnet_w48, hrnet_w32, hrnet_w18, hrnet_w18s (W18-small-v2), hrnet_tiny (the demo's),
             resnet101, resnet50, mobilenetv2
  heads      ocr  - `OCRHead`: style "hrnet" on HRNet ([HR]); style "openseg" with the soft object
                    regions from stage 3 (aux_channels 512) on ResNet ([OS]); on MobileNetV2 (the
                    phone model) with `shared_stem`: the FCN baseline's 1x1 stem and classifier
                    give the soft object regions, and OCR adds only its attention module.
             fcn  - `FCNHead`: backbone + classifier. On HRNet it is the official seg_hrnet head
                    (`last_layer`: 1x1 conv C->C, BN, ReLU, 1x1 -> K) and `aux_logits` is the same
                    tensor as `logits` (there is no second output; give the aux loss weight 0 or
                    accept it counted twice). On ResNet `aux_logits` come from an FCN head on stage 3.
                    On MobileNetV2 the conv is 1x1 to `mid_channels` (256), the same stem the
                    OCR model shares, so the two phone models differ by the OCR module alone.
             any key of `ocr_tf.layers.context.CONTEXT_HEADS` (ppm, aspp, ...): the heads the paper
                    compares with.
Whole models that are not a backbone x head pair: `hrnet_w48_mscale_ocr`, `hrnet_tiny_mscale_ocr`
(NVIDIA's hierarchical multi-scale attention, ocr_tf/layers/mscale.py).
The registry is timm's shape: `@register_backbone(family)`, `@register_head(name, options)` and
`@register_model` below, one decorated function per variant; `list_models()` reads it.
A `keras.Model` may be given instead of a name, with `features=` (and `aux_features=`) layer names.
"""

import inspect

import keras

from ocr_tf.backbones import hrnet_backbone, load_backbone_weights, mobilenet_backbone, resnet_backbone
from ocr_tf.layers.common import ConvBN, head_output_shapes
from ocr_tf.layers.context import CONTEXT_HEADS
from ocr_tf.layers.ocr import OCRHead

# ------------------------------------------------------------------------------ the registry
# timm's shape: one decorated function per backbone variant (its fixed builder arguments, in one
# place), one per head (how it is built on each backbone family, and the overrides it takes), and
# one per whole model that is not a backbone x head pair. `list_models()` is read from it.

BACKBONES = {}  # name -> (family, fixed builder arguments)
HEADS = {}  # name -> (build(family, num_classes, opts) -> head layer named "head", overrides it takes)
MODELS = {}  # name -> build(num_classes, input_shape, **overrides) -> keras.Model


def register_backbone(family):
    """Decorator: the function's name is the variant's, its return value the fixed arguments of
    the family's builder (`hrnet_backbone`, `resnet_backbone`, `mobilenet_backbone`)."""

    def register(fn):
        BACKBONES[fn.__name__] = (family, dict(fn()))
        return fn

    return register


def register_head(name, options=()):
    """Decorator: `fn(family, num_classes, opts)` builds the head layer (named "head");
    `options`: the overrides it takes besides the common ones."""

    def register(fn):
        HEADS[name] = (fn, tuple(options))
        return fn

    return register


def register_model(fn):
    """Decorator: a whole model by its function's name, `fn(num_classes, input_shape, **overrides)`."""
    MODELS[fn.__name__] = fn
    return fn


@register_backbone("hrnet")
def hrnet_w48():
    """HRNetV2-W48 ([HR]): the official HRNet-OCR backbone."""
    return {"extra": "w48"}


@register_backbone("hrnet")
def hrnet_w32():
    return {"extra": "w32"}


@register_backbone("hrnet")
def hrnet_w18():
    return {"extra": "w18"}


@register_backbone("hrnet")
def hrnet_w18s():
    """HRNetV2-W18-small-v2."""
    return {"extra": "w18s"}


@register_backbone("hrnet")
def hrnet_tiny():
    """The demo's CPU-sized HRNet (not an official one)."""
    return {"extra": "tiny"}


@register_backbone("resnet")
def resnet101():
    """Dilated ResNet-101 ([OS]'s "simple baseline")."""
    return {"depth": 101}


@register_backbone("resnet")
def resnet50():
    return {"depth": 50}


@register_backbone("mobilenet")
def mobilenetv2():
    """MobileNetV2 (the paper's Table 8 phone model)."""
    return {}


# Overrides each backbone family accepts, besides the common ones.
FAMILY_OPTIONS = {
    "hrnet": ("extra",),
    "resnet": ("output_stride", "stem"),
    "mobilenet": ("output_stride", "alpha"),
}
COMMON_OPTIONS = ("synchronized", "align_corners", "weights", "dropout")
# Head widths per family (OCR: [HR]/[OS] use 512/256; the phone model is narrower).
HEAD_DEFAULTS = {
    "hrnet": {"mid_channels": 512, "key_channels": 256},
    "resnet": {"mid_channels": 512, "key_channels": 256},
    "mobilenet": {"mid_channels": 256, "key_channels": 128},
}


def list_models():
    """Every registered model name: each backbone with each head, then the whole models."""
    return [f"{b}_{h}" for b in BACKBONES for h in HEADS] + sorted(MODELS)


def _split_name(name):
    for backbone in sorted(BACKBONES, key=len, reverse=True):
        head = name[len(backbone) + 1 :]
        if name.startswith(backbone + "_") and head in HEADS:
            return backbone, head
    raise ValueError(f"Unknown model {name!r}; known: {', '.join(list_models())}.")


@keras.saving.register_keras_serializable(package="ocr_tf")
class FCNHead(keras.layers.Layer):
    """Backbone + classifier baseline: ConvBN(`channels`, `kernel_size`) -> dropout -> 1x1 conv to K.

    `call(features, aux_features=None)`: with `aux_features` (ResNet stage 3) the aux logits come
    from a second such head (3x3, `aux_channels`); without, `aux_logits` is `logits` itself.
    With channels=None the conv keeps the input width (the official seg_hrnet `last_layer`).
    """

    def __init__(
        self,
        num_classes,
        channels=None,
        kernel_size=1,
        dropout=0.0,
        aux_channels=512,
        synchronized=False,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.num_classes = int(num_classes)
        self.channels = None if channels is None else int(channels)
        self.kernel_size = int(kernel_size)
        self.dropout = float(dropout)
        self.aux_channels = int(aux_channels)
        self.synchronized = bool(synchronized)
        self.cls = keras.layers.Conv2D(self.num_classes, 1, dtype="float32", name="cls")
        self.aux_cls = keras.layers.Conv2D(self.num_classes, 1, dtype="float32", name="aux_cls")
        self.drop = keras.layers.SpatialDropout2D(self.dropout, name="dropout") if self.dropout > 0 else None
        self.aux_drop = keras.layers.SpatialDropout2D(self.dropout, name="aux_dropout") if self.dropout > 0 else None
        self.conv_bn = self.aux_conv_bn = None

    def build(self, features_shape, aux_features_shape=None):
        width = self.channels or features_shape[-1]
        self.conv_bn = ConvBN(width, self.kernel_size, use_bias=True, synchronized=self.synchronized, name="conv_bn")
        self.conv_bn.build(features_shape)
        self.cls.build((None, None, None, width))
        if aux_features_shape is not None:
            self.aux_conv_bn = ConvBN(self.aux_channels, 3, use_bias=True, synchronized=self.synchronized, name="aux_conv_bn")
            self.aux_conv_bn.build(aux_features_shape)
            self.aux_cls.build((None, None, None, self.aux_channels))
        self.built = True

    def _branch(self, x, conv_bn, drop, cls, training):
        x = conv_bn(x, training=training)
        if drop is not None:
            x = drop(x, training=training)
        return cls(x)

    def call(self, features, aux_features=None, training=None):
        logits = self._branch(features, self.conv_bn, self.drop, self.cls, training)
        if aux_features is None:
            return {"logits": logits, "aux_logits": logits}
        aux = self._branch(aux_features, self.aux_conv_bn, self.aux_drop, self.aux_cls, training)
        return {"logits": logits, "aux_logits": aux}

    def compute_output_shape(self, features_shape, aux_features_shape=None):
        return head_output_shapes(self.num_classes, features_shape, aux_features_shape)

    def get_config(self):
        config = super().get_config()
        config.update(
            num_classes=self.num_classes,
            channels=self.channels,
            kernel_size=self.kernel_size,
            dropout=self.dropout,
            aux_channels=self.aux_channels,
            synchronized=self.synchronized,
        )
        return config


def build_backbone(backbone, input_shape=(None, None, 3), **options):
    """A registered backbone as a functional model named "backbone" (outputs: features, or
    [stage 3, stage 4] for ResNet). `options` as in `build_model` (backbone ones only)."""
    family, fixed = BACKBONES[backbone]
    weights = options.pop("weights", None)
    align_corners = options.pop("align_corners", True)  # only HRNet resizes inside its backbone
    if family == "hrnet":
        model = hrnet_backbone(options.pop("extra", fixed["extra"]), input_shape, align_corners, **options)
    elif family == "resnet":
        model = resnet_backbone(fixed["depth"], input_shape, **options)
    else:
        model = mobilenet_backbone(input_shape, **options)
    if weights is not None:
        load_backbone_weights(model, weights)
    return model


def _check_overrides(name, overrides, allowed):
    unknown = sorted(set(overrides) - set(allowed))
    if unknown:
        raise ValueError(
            f"Unknown override(s) {unknown} for model {name!r}; allowed: {sorted(allowed)}."
        )


def _head_kwargs_accepted(cls):
    """Constructor arguments of a head class, following **kwargs up to keras' Layer."""
    accepted = set()
    for klass in cls.__mro__:
        if klass is keras.layers.Layer or "__init__" not in vars(klass):
            continue
        params = inspect.signature(klass.__init__).parameters.values()
        accepted |= {p.name for p in params if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)}
        if not any(p.kind == p.VAR_KEYWORD for p in params):
            break
    return accepted - {"self", "num_classes"}


@register_head("ocr", options=("mid_channels", "key_channels"))
def ocr_head(family, num_classes, opts):
    """`OCRHead`: [HR]'s on HRNet, [OS]'s (soft regions from stage 3) on ResNet, and on MobileNetV2
    the phone model (the FCN baseline's stem gives the soft regions)."""
    widths = {**HEAD_DEFAULTS[family], **{k: opts[k] for k in ("mid_channels", "key_channels") if k in opts}}
    return OCRHead(
        num_classes,
        mid_channels=widths["mid_channels"],
        key_channels=widths["key_channels"],
        style="openseg" if family == "resnet" else "hrnet",
        aux_channels=512 if family == "resnet" else None,
        dropout=opts.get("dropout", 0.05),
        align_corners=opts.get("align_corners", True),
        synchronized=opts.get("synchronized", False),
        shared_stem=family == "mobilenet",
        name="head",
    )


@register_head("fcn", options=("mid_channels",))
def fcn_head(family, num_classes, opts):
    """`FCNHead`, the baseline: [HR]'s seg_hrnet `last_layer` on HRNet, a 3x3 head (+ stage-3 aux)
    on ResNet, the phone model's 256-wide 1x1 stem on MobileNetV2."""
    sync = opts.get("synchronized", False)
    if family == "resnet":
        return FCNHead(num_classes, opts.get("mid_channels", 512), 3, dropout=opts.get("dropout", 0.05),
                       synchronized=sync, name="head")
    channels = opts.get("mid_channels", HEAD_DEFAULTS[family]["mid_channels"]) if family == "mobilenet" else opts.get("mid_channels")
    return FCNHead(num_classes, channels, 1, dropout=opts.get("dropout", 0.0), synchronized=sync, name="head")


def _register_context_head(name, cls):
    """The heads the paper compares with (`ocr_tf.layers.context.CONTEXT_HEADS`): each takes the
    overrides its constructor accepts."""
    accepted = _head_kwargs_accepted(cls)

    def build(family, num_classes, opts):
        return cls(num_classes, name="head", **{k: v for k, v in opts.items() if k in accepted})

    register_head(name, options=tuple(k for k in ("mid_channels", "key_channels") if k in accepted))(build)


for _name, _cls in sorted(CONTEXT_HEADS.items()):
    _register_context_head(_name, _cls)


def _assemble(inputs, feats, aux, head_layer, name):
    out = head_layer(feats, aux_features=aux)
    outputs = {
        # float32 layers, so that mixed precision never casts the logits back to float16
        "logits": keras.layers.Identity(name="logits", dtype="float32")(out["logits"]),
        "aux_logits": keras.layers.Identity(name="aux_logits", dtype="float32")(out["aux_logits"]),
    }
    return keras.Model(inputs, outputs, name=name)


def build_model(name, num_classes, input_shape=(None, None, 3), **overrides):
    """Build a registered segmenter (see the module docstring) or wrap a given `keras.Model`.

    Overrides: synchronized (BatchNorm over replicas), align_corners, dropout, weights (a local
    backbone weight file), mid_channels / key_channels (head widths), extra (HRNet stage config,
    official form), output_stride and stem ("keras" | "deep") for ResNet, output_stride and alpha
    for MobileNetV2. An unknown override is a ValueError naming it and the allowed ones.
    """
    if isinstance(name, keras.Model):
        return build_segmenter(name, num_classes, **overrides)
    if int(num_classes) < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}.")
    if name in MODELS:
        return MODELS[name](num_classes, input_shape, **overrides)
    backbone, head = _split_name(name)
    family = BACKBONES[backbone][0]
    build_head, head_options = HEADS[head]
    allowed = COMMON_OPTIONS + FAMILY_OPTIONS[family] + head_options
    _check_overrides(name, overrides, allowed)
    backbone_opts = {k: v for k, v in overrides.items() if k in COMMON_OPTIONS + FAMILY_OPTIONS[family] and k != "dropout"}

    inputs = keras.Input(input_shape, name="image")
    net = build_backbone(backbone, input_shape, **backbone_opts)
    outs = net(inputs)
    feats, aux = (outs[1], outs[0]) if family == "resnet" else (outs, None)
    head_layer = build_head(family, num_classes, overrides)
    return _assemble(inputs, feats, aux, head_layer, name)


def build_segmenter(
    backbone,
    num_classes,
    features,
    aux_features=None,
    head="ocr",
    style="hrnet",
    **head_kwargs,
):
    """Any functional Keras model (e.g. a keras.applications one) + a head.

    `features` / `aux_features`: names of the backbone layers whose outputs feed the head (the soft
    object regions come from `aux_features` when given). `head`: "ocr" (`OCRHead(style=style)`),
    "fcn", or a context head name; `head_kwargs` go to the head's constructor.
    """
    if head not in HEADS:
        raise ValueError(f"Unknown head {head!r}; known: {', '.join(HEADS)}.")
    names = [features] + ([aux_features] if aux_features else [])
    layer_names = {layer.name for layer in backbone.layers}
    missing = [n for n in names if n not in layer_names]
    if missing:
        raise ValueError(f"Backbone {backbone.name!r} has no layer(s) {missing}.")
    extractor = keras.Model(
        backbone.inputs, [backbone.get_layer(n).output for n in names], name="backbone"
    )
    inputs = keras.Input(backbone.input_shape[1:], name="image")
    outs = extractor(inputs)
    feats, aux = outs[0], (outs[1] if aux_features else None)
    if head == "ocr":
        layer = OCRHead(num_classes, style=style, name="head", **head_kwargs)
    elif head == "fcn":
        layer = FCNHead(num_classes, name="head", **head_kwargs)
    else:
        layer = CONTEXT_HEADS[head](num_classes, name="head", **head_kwargs)
    return _assemble(inputs, feats, aux, layer, f"{backbone.name}_{head}")


# ------------------------------------------------------------------------------ whole models
# Hierarchical multi-scale attention (NVIDIA HRNet_Mscale, issue 15). The network and its builder
# live in ocr_tf/layers/mscale.py; outputs {"logits", "aux_logits", "attention"} at stride 4,
# align_corners=False throughout.
MSCALE_OPTIONS = ("extra", "mid_channels", "key_channels", "attn_channels", "dropout", "synchronized",
                  "align_corners", "weights")


def _mscale(name, num_classes, input_shape, overrides, extra, **widths):
    from ocr_tf.layers.mscale import build_mscale_ocr

    _check_overrides(name, overrides, MSCALE_OPTIONS)
    kwargs = {"extra": extra, **widths, **overrides}
    return build_mscale_ocr(num_classes, input_shape=input_shape, name=name, **kwargs)


@register_model
def hrnet_w48_mscale_ocr(num_classes, input_shape=(None, None, 3), **overrides):
    """NVIDIA's HRNet-W48 + OCR + hierarchical multi-scale attention."""
    return _mscale("hrnet_w48_mscale_ocr", num_classes, input_shape, overrides, "w48",
                   mid_channels=512, key_channels=256, attn_channels=256)


@register_model
def hrnet_tiny_mscale_ocr(num_classes, input_shape=(None, None, 3), **overrides):
    """The demo's CPU-sized HRNet with narrow heads, for tests and the demo (not an NVIDIA model)."""
    return _mscale("hrnet_tiny_mscale_ocr", num_classes, input_shape, overrides, "tiny",
                   mid_channels=64, key_channels=32, attn_channels=32)


MSCALE_MODELS = ("hrnet_w48_mscale_ocr", "hrnet_tiny_mscale_ocr")
