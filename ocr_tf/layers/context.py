"""The context heads the paper compares OCR with (Tables 2-4): PPM, ASPP, Self-Attention
(non-local), Double Attention, DANet and CC-Attention, in the widths of the paper's "our impl.".

Every head is `cls(num_classes, **kw)` and `head(features, aux_features=None, training=None) ->
{"logits", "aux_logits"}` (float32, at the features' resolution) exactly like `OCRHead`:
`aux_logits` come from the deep-supervision FCN branch (conv3x3-BN-ReLU-dropout-conv1x1) on
`aux_features` when given (ResNet stage 3), else on `features`.

Widths. Table 4 feeds each context module a 1 x 2048 x 128 x 128 map with K = 19 and counts only
the module (the deep-supervision branch is common to every method, so it is left out; OCR reuses
its output as the soft object regions). The parameter counts pin the widths down:

  head            structure (C = 2048 in)                                        params (K=19)
  PPM             4 bins x conv1x1 C->512, conv3x3 (C+4*512)->512, cls            23,083,539 (23.1M)
  ASPP            conv1x1, 3 x conv3x3 (rates 12/24/36), image pool, all C->256,
                  conv1x1 1280->256, cls (DeepLabv3's ASPP)                      15,539,987 (15.5M)
  relational      conv3x3 C->512 ("pre"), a relation block on 512 channels, fuse
                  [context, pre] conv1x1 1024->512, dropout, cls                  ~9.97M + block
    Self-Attention  the OCR block with every pixel as a region (key 256)          10,632,211 (10.5M)
    Double Attn.    A2 block, 64 regions, 256 channels                             10,302,611 (10.2M)
    DANet           position (key 64) + channel attention, conv1x1 512->512       10,564,757 (10.6M)
    CC-Attention    criss-cross (key 64) twice, conv1x1 512->512                   10,564,756 (10.6M)

The relational heads share OCR's stem and fuse (the paper implemented them in one code base), so
the parameter differences between them are their relation blocks, as in Table 4. The paper's
FLOPs for DANet (1110G) and CC-Attention (804G) fit the original heads (two 3x3 C->512 stems and
3x3 convs after the attention: ~24M parameters), not the 10.6M they list; we follow the
parameter counts. `python -m ocr_tf.bench context` measures all of it.

Written in `keras.ops`: the same code runs on the TensorFlow, JAX and PyTorch backends.
"""

import keras
from keras import ops

from ocr_tf.layers.common import ConvBN, head_output_shapes, resize_bilinear
from ocr_tf.layers.conv_grad import apply_conv
from ocr_tf.layers.ocr import SpatialOCR

# Table 4's setting: a 1 x 2048 x 128 x 128 input, K = 19; OCR with the paper's widths.
TABLE4_INPUT_SHAPE = (1, 128, 128, 2048)
TABLE4_NUM_CLASSES = 19
TABLE4_OCR_CONFIG = {"mid_channels": 512, "key_channels": 256, "style": "openseg", "dropout": 0.05}


def _check_features(name, shape):
    if len(shape) != 4:
        raise ValueError(f"{name} expects features (B, h, w, C), got shape {tuple(shape)}.")
    if shape[-1] is None:
        raise ValueError(f"{name}: the channel dimension of features {tuple(shape)} must be known.")


@keras.saving.register_keras_serializable(package="ocr_tf")
class AuxFCN(keras.layers.Layer):
    """conv3x3 -> BN -> ReLU -> Dropout2d -> conv1x1 (float32 logits): the deep-supervision branch
    of the ResNet recipe ([OS] `dsn_head`) and the FCN baseline's classifier."""

    def __init__(self, num_classes, channels=512, dropout=0.05, use_bias=True, synchronized=False, **kwargs):
        super().__init__(**kwargs)
        self.num_classes = int(num_classes)
        self.channels = int(channels)
        self.dropout = float(dropout)
        self.use_bias = bool(use_bias)
        self.synchronized = bool(synchronized)
        self.conv = ConvBN(self.channels, 3, use_bias=self.use_bias, synchronized=self.synchronized, name="conv")
        self.drop = keras.layers.SpatialDropout2D(self.dropout, name="dropout") if self.dropout > 0 else None
        self.cls = keras.layers.Conv2D(self.num_classes, 1, dtype="float32", name="cls")

    def build(self, input_shape):
        _check_features(self.name, input_shape)
        self.conv.build(input_shape)
        self.cls.build((None, None, None, self.channels))
        self.built = True

    def call(self, x, training=None):
        x = self.conv(x, training=training)
        if self.drop is not None:
            x = self.drop(x, training=training)
        return apply_conv(self.cls, x, training)  # self.cls(x), matmul gradients on CPU

    def compute_output_shape(self, input_shape):
        return (*input_shape[:3], self.num_classes)

    def get_config(self):
        config = super().get_config()
        config.update(
            num_classes=self.num_classes,
            channels=self.channels,
            dropout=self.dropout,
            use_bias=self.use_bias,
            synchronized=self.synchronized,
        )
        return config


class ContextHead(keras.layers.Layer):
    """Shared frame of the compared heads: aux FCN branch + `context()` + float32 classifier.

    Subclasses create their layers in `__init__`, build them in `build_context(features_shape)`
    and return the representation the classifier reads (width `mid_channels`) from `context()`.
    """

    DEFAULT_DROPOUT = 0.05

    def __init__(
        self,
        num_classes,
        mid_channels=512,
        aux_channels=512,
        dropout=None,
        aux_dropout=0.05,
        use_bias=False,
        align_corners=True,
        synchronized=False,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if int(num_classes) < 1:
            raise ValueError(f"{type(self).__name__}: num_classes must be >= 1, got {num_classes}.")
        if int(mid_channels) < 1:
            raise ValueError(f"{type(self).__name__}: mid_channels must be >= 1, got {mid_channels}.")
        self.num_classes = int(num_classes)
        self.mid_channels = int(mid_channels)
        self.aux_channels = int(aux_channels)
        self.dropout = float(self.DEFAULT_DROPOUT if dropout is None else dropout)
        self.aux_dropout = float(aux_dropout)
        self.use_bias = bool(use_bias)
        self.align_corners = bool(align_corners)
        self.synchronized = bool(synchronized)
        self.aux_head = AuxFCN(
            self.num_classes, self.aux_channels, self.aux_dropout, synchronized=self.synchronized, name="aux_head"
        )
        self.cls_head = keras.layers.Conv2D(self.num_classes, 1, dtype="float32", name="cls_head")

    def conv_bn(self, filters, kernel_size, name, **kwargs):
        return ConvBN(
            filters, kernel_size, use_bias=self.use_bias, synchronized=self.synchronized, name=name, **kwargs
        )

    def make_dropout(self):
        return keras.layers.SpatialDropout2D(self.dropout, name="dropout") if self.dropout > 0 else None

    def build_context(self, features_shape):
        raise NotImplementedError(f"{type(self).__name__} must implement build_context().")

    def context(self, features, training=None):
        raise NotImplementedError(f"{type(self).__name__} must implement context().")

    def build(self, features_shape, aux_features_shape=None):
        _check_features(self.name, features_shape)
        aux_shape = features_shape if aux_features_shape is None else aux_features_shape
        _check_features(self.name, aux_shape)
        self.aux_head.build(aux_shape)
        self.build_context(features_shape)
        self.cls_head.build((None, None, None, self.mid_channels))
        self.built = True

    def context_logits(self, features, training=None):
        """The context module alone (what Table 4 measures): features -> logits."""
        return apply_conv(self.cls_head, self.context(features, training=training), training)

    def call(self, features, aux_features=None, training=None):
        aux_logits = self.aux_head(features if aux_features is None else aux_features, training=training)
        logits = self.context_logits(features, training=training)
        return {"logits": logits, "aux_logits": aux_logits}

    def compute_output_shape(self, features_shape, aux_features_shape=None):
        return head_output_shapes(self.num_classes, features_shape, aux_features_shape)

    def get_config(self):
        config = super().get_config()
        config.update(
            num_classes=self.num_classes,
            mid_channels=self.mid_channels,
            aux_channels=self.aux_channels,
            dropout=self.dropout,
            aux_dropout=self.aux_dropout,
            use_bias=self.use_bias,
            align_corners=self.align_corners,
            synchronized=self.synchronized,
        )
        return config


# ----------------------------------------------------------------------------------------------
# Multi-scale context: PPM (PSPNet) and ASPP (DeepLabv3)


# Not keras.layers.AdaptiveAveragePooling2D: in Keras 3.15 on TensorFlow it refuses unknown
# (None) spatial sizes ("Input spatial dimensions must be statically known"), which every
# shape-polymorphic model and export here has, and its bin-1 case fails inside a model ("Negative
# dimension size caused by subtracting 14 from 13": its "big" window is one row longer than the
# input). So the pooling stays an averaging matrix, in keras.ops for every backend.
def adaptive_pool_matrix(size, bins, dtype):
    """(bins, size) averaging matrix of PyTorch's adaptive_avg_pool: bin i averages
    [floor(i * size / bins), ceil((i + 1) * size / bins)). `size` may be a tensor (None shapes)."""
    i = ops.arange(bins)
    start = (i * size) // bins
    end = ((i + 1) * size + bins - 1) // bins
    pos = ops.arange(size)
    mask = ops.cast(ops.logical_and(pos[None, :] >= start[:, None], pos[None, :] < end[:, None]), dtype)
    return mask / ops.sum(mask, axis=1, keepdims=True)


def adaptive_avg_pool(x, bins):
    """PyTorch's `adaptive_avg_pool2d(x, bins)` for NHWC `x` with any (even unknown) h, w."""
    shape = ops.shape(x)
    rows = adaptive_pool_matrix(shape[1], bins, x.dtype)
    cols = adaptive_pool_matrix(shape[2], bins, x.dtype)
    return ops.einsum("ih,bhwc,jw->bijc", rows, x, cols)


@keras.saving.register_keras_serializable(package="ocr_tf")
class PPMHead(ContextHead):
    """Pyramid pooling (PSPNet): for each bin b in `bins`, adaptive average pooling to b x b,
    conv1x1 C->`branch_channels`-BN-ReLU, bilinear upsampling; concat [x, branches] ->
    conv3x3 -> `mid_channels`-BN-ReLU -> Dropout2d -> classifier.

    Widths: PSPNet's (bins 1, 2, 3, 6; 512 per branch; 3x3 bottleneck to 512). At C = 2048, K = 19:
    4 * (2048 * 512 + 2 * 512) + (4096 * 9 * 512 + 2 * 512) + (512 * 19 + 19) = 23,083,539
    parameters, Table 4's 23.1M; the 3x3 bottleneck is 618.5 of its 619 GFLOPs at 128 x 128.
    """

    DEFAULT_DROPOUT = 0.1

    def __init__(self, num_classes, bins=(1, 2, 3, 6), branch_channels=512, mid_channels=512, **kwargs):
        super().__init__(num_classes, mid_channels=mid_channels, **kwargs)
        self.bins = tuple(int(b) for b in bins)
        if not self.bins or min(self.bins) < 1:
            raise ValueError(f"PPMHead: bins must be positive integers, got {bins!r}.")
        self.branch_channels = int(branch_channels)
        self.stages = [self.conv_bn(self.branch_channels, 1, f"stage_{b}") for b in self.bins]
        self.bottleneck = self.conv_bn(self.mid_channels, 3, "bottleneck")
        self.drop = self.make_dropout()

    def build_context(self, features_shape):
        channels = features_shape[-1]
        for stage in self.stages:
            stage.build((None, None, None, channels))
        self.bottleneck.build((None, None, None, channels + len(self.bins) * self.branch_channels))

    def context(self, features, training=None):
        size = ops.shape(features)[1:3]
        branches = [features]
        for b, stage in zip(self.bins, self.stages):
            pooled = stage(adaptive_avg_pool(features, b), training=training)
            branches.append(resize_bilinear(pooled, size, self.align_corners))
        x = self.bottleneck(ops.concatenate(branches, axis=-1), training=training)
        return self.drop(x, training=training) if self.drop is not None else x

    def get_config(self):
        config = super().get_config()
        config.update(bins=list(self.bins), branch_channels=self.branch_channels)
        return config


@keras.saving.register_keras_serializable(package="ocr_tf")
class ASPPHead(ContextHead):
    """Atrous spatial pyramid pooling (DeepLabv3): conv1x1, three conv3x3 with dilation `rates`
    and image pooling (global mean -> conv1x1 -> broadcast), each C -> `mid_channels`-BN-ReLU;
    concat -> conv1x1 5*mid -> mid-BN-ReLU -> Dropout2d -> classifier.

    Widths: DeepLabv3's (256 per branch, rates 12/24/36 at output stride 8, no extra 3x3 after
    the projection). At C = 2048, K = 19: 2 * (2048 * 256 + 512) + 3 * (2048 * 9 * 256 + 512) +
    (1280 * 256 + 512) + (256 * 19 + 19) = 15,539,987 parameters (Table 4: 15.5M) and 491.7
    GFLOPs at 128 x 128 (Table 4: 492G).
    """

    DEFAULT_DROPOUT = 0.1

    def __init__(self, num_classes, rates=(12, 24, 36), mid_channels=256, **kwargs):
        super().__init__(num_classes, mid_channels=mid_channels, **kwargs)
        self.rates = tuple(int(r) for r in rates)
        if min(self.rates, default=1) < 1:
            raise ValueError(f"ASPPHead: rates must be positive integers, got {rates!r}.")
        mid = self.mid_channels
        self.conv1x1 = self.conv_bn(mid, 1, "aspp_1x1")
        self.atrous = [self.conv_bn(mid, 3, f"aspp_rate_{r}", dilation_rate=r) for r in self.rates]
        self.image_pool = self.conv_bn(mid, 1, "aspp_pool")
        self.project = self.conv_bn(mid, 1, "project")
        self.drop = self.make_dropout()

    def build_context(self, features_shape):
        channels = (None, None, None, features_shape[-1])
        for layer in (self.conv1x1, *self.atrous, self.image_pool):
            layer.build(channels)
        self.project.build((None, None, None, (len(self.rates) + 2) * self.mid_channels))

    def context(self, features, training=None):
        branches = [self.conv1x1(features, training=training)]
        branches += [conv(features, training=training) for conv in self.atrous]
        pooled = self.image_pool(ops.mean(features, axis=(1, 2), keepdims=True), training=training)
        branches.append(resize_bilinear(pooled, ops.shape(features)[1:3], self.align_corners))
        x = self.project(ops.concatenate(branches, axis=-1), training=training)
        return self.drop(x, training=training) if self.drop is not None else x

    def get_config(self):
        config = super().get_config()
        config.update(rates=list(self.rates))
        return config


# ----------------------------------------------------------------------------------------------
# Relational context: a shared stem and fuse around a relation block.


class RelationalHead(ContextHead):
    """conv3x3 C -> mid ("pre", OCR's `conv3x3_ocr`) -> `relate(x)` -> concat [context, x] ->
    conv1x1 2*mid -> mid-BN-ReLU -> Dropout2d -> classifier (OCR's eq. 6 fuse and order)."""

    def __init__(self, num_classes, mid_channels=512, **kwargs):
        super().__init__(num_classes, mid_channels=mid_channels, **kwargs)
        self.pre = self.conv_bn(self.mid_channels, 3, "pre")
        self.fuse = self.conv_bn(self.mid_channels, 1, "fuse")
        self.drop = self.make_dropout()

    def build_relation(self, shape):
        raise NotImplementedError(f"{type(self).__name__} must implement build_relation().")

    def relate(self, x, training=None):
        raise NotImplementedError(f"{type(self).__name__} must implement relate().")

    def build_context(self, features_shape):
        self.pre.build(features_shape)
        mid = (None, None, None, self.mid_channels)
        self.build_relation(mid)
        self.fuse.build((None, None, None, 2 * self.mid_channels))

    def context(self, features, training=None):
        x = self.pre(features, training=training)
        context = self.relate(x, training=training)
        x = self.fuse(ops.concatenate([context, x], axis=-1), training=training)
        return self.drop(x, training=training) if self.drop is not None else x


@keras.saving.register_keras_serializable(package="ocr_tf")
class SelfAttentionHead(ContextHead):
    """Self-attention / non-local (OCNet's base-OC): OCR's object attention with every pixel as a
    region, y_i = rho(sum_j softmax_j(phi(x_i)^T psi(x_j) / sqrt(kc)) delta(x_j)), then the same
    [context, x] fuse. The widths equal OCR's (stem 512, key 256), so its parameter count is
    OCR's (Table 4 lists both at 10.5M): 10,632,211 at C = 2048, K = 19. Attention over all
    h*w pixels costs 2 * (hw)^2 * 2 * kc FLOPs (275G at 128 x 128) and an (hw)^2 matrix (1 GiB).
    """

    def __init__(self, num_classes, mid_channels=512, key_channels=256, **kwargs):
        super().__init__(num_classes, mid_channels=mid_channels, **kwargs)
        self.key_channels = int(key_channels)
        self.pre = self.conv_bn(self.mid_channels, 3, "pre")
        self.attention = SpatialOCR(
            self.key_channels,
            self.mid_channels,
            dropout=self.dropout,
            use_bias=self.use_bias,
            align_corners=self.align_corners,
            synchronized=self.synchronized,
            name="self_attention",
        )

    def build_context(self, features_shape):
        self.pre.build(features_shape)
        self.attention.build((None, None, None, self.mid_channels), (None, None, self.mid_channels))

    def context(self, features, training=None):
        x = self.pre(features, training=training)
        pixels_as_regions = ops.reshape(x, (ops.shape(x)[0], -1, self.mid_channels))
        return self.attention(x, pixels_as_regions, training=training)

    def get_config(self):
        config = super().get_config()
        config.update(key_channels=self.key_channels)
        return config


@keras.saving.register_keras_serializable(package="ocr_tf")
class DoubleAttention(keras.layers.Layer):
    """A^2 double attention (Chen et al. 2018) on NHWC pixels -> (B, h, w, out_channels).

    Gather: `num_regions` attention maps (conv1x1, softmax over space) pool the pixels' values
    (conv1x1-BN-ReLU to `key_channels`) into region descriptors; distribute: per pixel a softmax
    over the regions (conv1x1 of the pixel alone) mixes the descriptors; conv1x1-BN-ReLU back to
    `out_channels`. Unlike OCR, the regions are unsupervised and the relation sees only the pixel.
    """

    def __init__(self, key_channels, num_regions, out_channels, use_bias=False, synchronized=False, **kwargs):
        super().__init__(**kwargs)
        self.key_channels = int(key_channels)
        self.num_regions = int(num_regions)
        self.out_channels = int(out_channels)
        self.use_bias = bool(use_bias)
        self.synchronized = bool(synchronized)
        sync = self.synchronized
        self.f_value = ConvBN(self.key_channels, 1, use_bias=self.use_bias, synchronized=sync, name="f_value")
        self.f_gather = keras.layers.Conv2D(self.num_regions, 1, name="f_gather")
        self.f_distribute = keras.layers.Conv2D(self.num_regions, 1, name="f_distribute")
        self.f_up = ConvBN(self.out_channels, 1, use_bias=self.use_bias, synchronized=sync, name="f_up")

    def build(self, input_shape):
        _check_features(self.name, input_shape)
        for layer in (self.f_value, self.f_gather, self.f_distribute):
            layer.build(input_shape)
        self.f_up.build((None, None, None, self.key_channels))
        self.built = True

    def call(self, x, training=None):
        batch, h, w = ops.shape(x)[:3]
        value = ops.reshape(self.f_value(x, training=training), (batch, -1, self.key_channels))
        gather = ops.reshape(ops.cast(self.f_gather(x), "float32"), (batch, -1, self.num_regions))
        gather = ops.softmax(gather, axis=1)  # each region map sums to 1 over the pixels
        regions = ops.einsum("bnr,bnc->brc", ops.cast(gather, value.dtype), value)
        distribute = ops.reshape(ops.cast(self.f_distribute(x), "float32"), (batch, -1, self.num_regions))
        distribute = ops.softmax(distribute, axis=-1)  # each pixel's weights sum to 1 over regions
        context = ops.einsum("bnr,brc->bnc", ops.cast(distribute, value.dtype), regions)
        context = ops.reshape(context, (batch, h, w, self.key_channels))
        return self.f_up(context, training=training)

    def compute_output_shape(self, input_shape):
        return (*input_shape[:3], self.out_channels)

    def get_config(self):
        config = super().get_config()
        config.update(
            key_channels=self.key_channels,
            num_regions=self.num_regions,
            out_channels=self.out_channels,
            use_bias=self.use_bias,
            synchronized=self.synchronized,
        )
        return config


@keras.saving.register_keras_serializable(package="ocr_tf")
class DoubleAttentionHead(RelationalHead):
    """Double Attention in OCR's frame: stem, `DoubleAttention` (64 regions, the paper's choice
    in Table 7; 256 channels like OCR's key), [context, x] fuse. At C = 2048, K = 19:
    9,438,208 (stem) + 131,584 + 2 * 32,832 + 132,096 (A2 block) + 525,312 (fuse) + 9,747 (cls)
    = 10,302,611 parameters (Table 4: 10.2M) and 338.5 GFLOPs at 128 x 128 (Table 4: 338G).
    """

    def __init__(self, num_classes, mid_channels=512, key_channels=256, num_regions=64, **kwargs):
        super().__init__(num_classes, mid_channels=mid_channels, **kwargs)
        self.key_channels = int(key_channels)
        self.num_regions = int(num_regions)
        self.attention = DoubleAttention(
            self.key_channels,
            self.num_regions,
            self.mid_channels,
            use_bias=self.use_bias,
            synchronized=self.synchronized,
            name="double_attention",
        )

    def build_relation(self, shape):
        self.attention.build(shape)

    def relate(self, x, training=None):
        return self.attention(x, training=training)

    def get_config(self):
        config = super().get_config()
        config.update(key_channels=self.key_channels, num_regions=self.num_regions)
        return config


class _QueryKeyValueAttention(keras.layers.Layer):
    """Shared weights of the pixel-to-pixel attentions: q, k conv1x1 to `key_channels`, V conv1x1
    to the input width C, and a residual scale gamma starting at 0. Subclasses define `call`."""

    def __init__(self, key_channels, **kwargs):
        super().__init__(**kwargs)
        self.key_channels = int(key_channels)
        self.query = keras.layers.Conv2D(self.key_channels, 1, name="query")
        self.key = keras.layers.Conv2D(self.key_channels, 1, name="key")
        self.value = None  # width C, known at build

    def build(self, input_shape):
        _check_features(self.name, input_shape)
        self.value = keras.layers.Conv2D(input_shape[-1], 1, name="value")
        for layer in (self.query, self.key, self.value):
            layer.build(input_shape)
        self.gamma = self.add_weight(name="gamma", shape=(), initializer="zeros")
        self.built = True

    def get_config(self):
        config = super().get_config()
        config.update(key_channels=self.key_channels)
        return config


@keras.saving.register_keras_serializable(package="ocr_tf")
class PositionAttention(_QueryKeyValueAttention):
    """DANet's position attention module: out = gamma * V softmax_j(q_i^T k_j) + x, with q, k
    conv1x1 to `key_channels`, V conv1x1 to C, gamma a scalar starting at 0."""

    def call(self, x):
        shape = ops.shape(x)
        batch, channels = shape[0], shape[3]
        q = ops.reshape(ops.cast(self.query(x), "float32"), (batch, -1, self.key_channels))
        k = ops.reshape(ops.cast(self.key(x), "float32"), (batch, -1, self.key_channels))
        v = ops.reshape(self.value(x), (batch, -1, channels))
        attention = ops.softmax(ops.einsum("bic,bjc->bij", q, k), axis=-1)
        out = ops.einsum("bij,bjc->bic", ops.cast(attention, v.dtype), v)
        return ops.cast(self.gamma, x.dtype) * ops.reshape(out, shape) + x


@keras.saving.register_keras_serializable(package="ocr_tf")
class ChannelAttention(keras.layers.Layer):
    """DANet's channel attention module: a = softmax_d(max_d' E_cd' - E_cd) with E = X^T X over the
    pixels; out = beta * (X a^T) + x, beta a scalar starting at 0. No other weights."""

    def build(self, input_shape):
        _check_features(self.name, input_shape)
        self.beta = self.add_weight(name="beta", shape=(), initializer="zeros")
        self.built = True

    def call(self, x):
        shape = ops.shape(x)
        flat = ops.reshape(ops.cast(x, "float32"), (shape[0], -1, shape[3]))
        energy = ops.einsum("bnc,bnd->bcd", flat, flat)
        energy = ops.max(energy, axis=-1, keepdims=True) - energy
        attention = ops.softmax(energy, axis=-1)
        out = ops.einsum("bcd,bnd->bnc", attention, flat)
        return ops.cast(self.beta * ops.reshape(out, shape), x.dtype) + x


@keras.saving.register_keras_serializable(package="ocr_tf")
class DANetHead(RelationalHead):
    """DANet in OCR's frame: stem, position attention (key C/8 = 64) + channel attention, their
    sum through conv1x1 512->512-BN-ReLU, then the [context, x] fuse. DANet's original head has
    two 3x3 2048->512 stems and 3x3 convs after each attention (~24M parameters); Table 4 lists
    10.6M, which this lands on: 9,438,208 + 328,321 (PAM) + 1 (CAM) + 263,168 + 525,312 + 9,747
    = 10,564,757 at C = 2048, K = 19.
    """

    def __init__(self, num_classes, mid_channels=512, key_channels=64, **kwargs):
        super().__init__(num_classes, mid_channels=mid_channels, **kwargs)
        self.key_channels = int(key_channels)
        self.position = PositionAttention(self.key_channels, name="position_attention")
        self.channel = ChannelAttention(name="channel_attention")
        self.merge = self.conv_bn(self.mid_channels, 1, "merge")

    def build_relation(self, shape):
        self.position.build(shape)
        self.channel.build(shape)
        self.merge.build(shape)

    def relate(self, x, training=None):
        return self.merge(self.position(x) + self.channel(x), training=training)

    def get_config(self):
        config = super().get_config()
        config.update(key_channels=self.key_channels)
        return config


@keras.saving.register_keras_serializable(package="ocr_tf")
class CrissCrossAttention(_QueryKeyValueAttention):
    """CCNet's criss-cross attention: each pixel attends to the pixels of its row and column (its
    own position once), out = gamma * sum a_ij V_j + x; q, k conv1x1 to `key_channels`, V to C."""

    def call(self, x):
        h = ops.shape(x)[1]
        q = ops.cast(self.query(x), "float32")
        k = ops.cast(self.key(x), "float32")
        v = ops.cast(self.value(x), "float32")
        column = ops.einsum("bijc,bhjc->bijh", q, k)  # pixel (i, j) vs (h, j)
        # The position itself is in both its row and its column: count it in the row only.
        column = ops.where(ops.cast(ops.eye(h), "bool")[:, None, :], float("-inf"), column)
        row = ops.einsum("bijc,biwc->bijw", q, k)  # pixel (i, j) vs (i, w)
        attention = ops.softmax(ops.concatenate([column, row], axis=-1), axis=-1)
        a_column, a_row = attention[..., :h], attention[..., h:]
        out = ops.einsum("bijh,bhjc->bijc", a_column, v) + ops.einsum("bijw,biwc->bijc", a_row, v)
        return ops.cast(self.gamma * out, x.dtype) + x


@keras.saving.register_keras_serializable(package="ocr_tf")
class CCAttentionHead(RelationalHead):
    """CC-Attention (CCNet's RCCA) in OCR's frame: stem, criss-cross attention applied
    `recurrence` = 2 times with shared weights (every pixel then sees every other), conv1x1
    512->512-BN-ReLU, [context, x] fuse. CCNet's own head adds 3x3 convs (~24M parameters);
    Table 4 lists 10.6M, which this lands on: 10,564,756 at C = 2048, K = 19.
    """

    def __init__(self, num_classes, mid_channels=512, key_channels=64, recurrence=2, **kwargs):
        super().__init__(num_classes, mid_channels=mid_channels, **kwargs)
        self.key_channels = int(key_channels)
        self.recurrence = int(recurrence)
        self.attention = CrissCrossAttention(self.key_channels, name="criss_cross_attention")
        self.merge = self.conv_bn(self.mid_channels, 1, "merge")

    def build_relation(self, shape):
        self.attention.build(shape)
        self.merge.build(shape)

    def relate(self, x, training=None):
        for _ in range(self.recurrence):
            x = self.attention(x)
        return self.merge(x, training=training)

    def get_config(self):
        config = super().get_config()
        config.update(key_channels=self.key_channels, recurrence=self.recurrence)
        return config


CONTEXT_HEADS = {
    "ppm": PPMHead,
    "aspp": ASPPHead,
    "self_attention": SelfAttentionHead,
    "double_attention": DoubleAttentionHead,
    "danet": DANetHead,
    "cc_attention": CCAttentionHead,
}
