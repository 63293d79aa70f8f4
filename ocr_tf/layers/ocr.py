"""The paper's three steps as Keras layers (Yuan, Chen and Wang, "Object-Contextual
Representations for Semantic Segmentation"), computed as the official HRNet-OCR code does
(../shared/ANCHORS.md).

  soft object regions    -> `OCRHead`'s aux head, supervised by the labels
  region representations -> `SpatialGather` (eq. 4)
  pixel-region relation  -> `ObjectAttention` (eq. 5, context eq. 3)
  augmented pixels       -> `SpatialOCR` (eq. 6)

All tensors are channels last (NHWC). Softmaxes and logits run in float32 under mixed precision.
Written in `keras.ops`: the same code runs on the TensorFlow, JAX and PyTorch backends.
"""

import keras
from keras import ops

from ocr_tf.layers.common import ConvBN, head_output_shapes, resize_bilinear
from ocr_tf.layers.conv_grad import apply_conv


def _check_rank(name, shape, rank, what):
    if len(shape) != rank:
        raise ValueError(f"{name} expects {what} of rank {rank}, got shape {tuple(shape)}.")


def _check_batch(name, a_shape, b_shape, a_name, b_name):
    if a_shape[0] is not None and b_shape[0] is not None and a_shape[0] != b_shape[0]:
        raise ValueError(
            f"{name}: batch sizes differ: {a_name} {tuple(a_shape)} vs {b_name} {tuple(b_shape)}; "
            "both must be (B, ...) with the same B."
        )


@keras.saving.register_keras_serializable(package="ocr_tf")
class SpatialGather(keras.layers.Layer):
    """Object region representations, eq. 4: f_k = sum_i softmax_i(scale * m_ki) x_i.

    `call(pixels, regions)`: pixels (B, h, w, C), regions = soft object region logits (B, h, w, K)
    -> (B, K, C). The softmax is over *space* (all h*w pixels, per region), as the official code
    does on purpose (its maintainers confirmed; the class axis would be wrong).
    """

    def __init__(self, scale=1.0, **kwargs):
        super().__init__(**kwargs)
        self.scale = float(scale)

    def build(self, pixels_shape, regions_shape):
        _check_rank(self.name, pixels_shape, 4, "pixels (B, h, w, C)")
        _check_rank(self.name, regions_shape, 4, "soft object regions (B, h, w, K)")
        _check_batch(self.name, pixels_shape, regions_shape, "pixels", "regions")
        for axis in (1, 2):
            p, r = pixels_shape[axis], regions_shape[axis]
            if p is not None and r is not None and p != r:
                raise ValueError(
                    f"{self.name}: pixels {tuple(pixels_shape)} and regions {tuple(regions_shape)} "
                    "must have the same height and width."
                )
        self.built = True

    def call(self, pixels, regions):
        batch, channels = ops.shape(pixels)[0], ops.shape(pixels)[3]
        x = ops.reshape(pixels, (batch, -1, channels))
        m = ops.reshape(ops.cast(regions, "float32"), (batch, -1, ops.shape(regions)[3]))
        m = ops.softmax(self.scale * m, axis=1)  # over the h*w pixels, per region
        # Weights are ~1/(h*w): far below float16's normal range at real sizes, so the weighted sum
        # runs in float32 too and only the result goes back to the compute dtype.
        f = ops.einsum("bnk,bnc->bkc", m, ops.cast(x, "float32"))
        return ops.cast(f, pixels.dtype)

    def compute_output_shape(self, pixels_shape, regions_shape):
        return (pixels_shape[0], regions_shape[3], pixels_shape[3])

    def get_config(self):
        config = super().get_config()
        config.update(scale=self.scale)
        return config


@keras.saving.register_keras_serializable(package="ocr_tf")
class ObjectAttention(keras.layers.Layer):
    """Object-contextual representation y_i = rho(sum_k w_ik delta(f_k)) (eq. 3) with the
    pixel-region relation w_ik = softmax_k(key_channels**-0.5 * phi(x_i)^T psi(f_k)) (eq. 5).

    `call(pixels, regions)`: pixels (B, h, w, C), regions (B, K, C) -> (B, h, w, out_channels).
    phi and psi are two conv1x1-BN-ReLU each, delta and rho one; the reference applies them to the
    K region vectors as 1x1 convs on a (K, 1) map, which is what we do (BN statistics included).
    `scale > 1` max-pools the pixels by `scale` first and resizes the context back (as the
    reference's `scale` argument).
    """

    def __init__(
        self,
        key_channels,
        out_channels=None,
        scale=1,
        use_bias=False,
        align_corners=True,
        synchronized=False,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if key_channels < 1:
            raise ValueError(f"key_channels must be >= 1, got {key_channels}.")
        self.key_channels = int(key_channels)
        self.out_channels = None if out_channels is None else int(out_channels)
        self.scale = int(scale)
        self.use_bias = bool(use_bias)
        self.align_corners = bool(align_corners)
        self.synchronized = bool(synchronized)

        def block(filters, name):
            return ConvBN(filters, 1, use_bias=self.use_bias, synchronized=self.synchronized, name=name)

        kc = self.key_channels
        self.f_pixel = [block(kc, "f_pixel_0"), block(kc, "f_pixel_1")]  # phi
        self.f_object = [block(kc, "f_object_0"), block(kc, "f_object_1")]  # psi
        self.f_down = block(kc, "f_down")  # delta
        self.f_up = None  # rho; its width is the pixels' unless given, known at build
        self.pool = keras.layers.MaxPooling2D(self.scale, name="pool") if self.scale > 1 else None

    def build(self, pixels_shape, regions_shape):
        _check_rank(self.name, pixels_shape, 4, "pixels (B, h, w, C)")
        _check_rank(self.name, regions_shape, 3, "region representations (B, K, C)")
        _check_batch(self.name, pixels_shape, regions_shape, "pixels", "regions")
        if pixels_shape[-1] is None or regions_shape[-1] is None:
            raise ValueError(f"{self.name}: channel dimensions must be known.")
        out = self.out_channels or pixels_shape[-1]
        self.f_up = ConvBN(out, 1, use_bias=self.use_bias, synchronized=self.synchronized, name="f_up")
        c_pix, c_reg, kc = pixels_shape[-1], regions_shape[-1], self.key_channels
        self.f_pixel[0].build((None, None, None, c_pix))
        self.f_pixel[1].build((None, None, None, kc))
        self.f_object[0].build((None, None, 1, c_reg))
        self.f_object[1].build((None, None, 1, kc))
        self.f_down.build((None, None, 1, c_reg))
        self.f_up.build((None, None, None, kc))
        self.built = True

    def call(self, pixels, regions, training=None):
        x = self.pool(pixels) if self.pool is not None else pixels
        f = regions[:, :, None, :]  # (B, K, 1, C): the K region vectors as a K x 1 map

        query = x
        for layer in self.f_pixel:
            query = layer(query, training=training)
        key = f
        for layer in self.f_object:
            key = layer(key, training=training)
        value = self.f_down(f, training=training)

        batch, h, w = ops.shape(query)[:3]
        query = ops.reshape(query, (batch, -1, self.key_channels))  # (B, hw, kc)
        key = ops.squeeze(key, axis=2)  # (B, K, kc)
        value = ops.squeeze(value, axis=2)  # (B, K, kc)

        sim = ops.einsum("bnc,bkc->bnk", ops.cast(query, "float32"), ops.cast(key, "float32"))
        sim = ops.softmax(sim * self.key_channels**-0.5, axis=-1)  # over the K regions
        context = ops.einsum("bnk,bkc->bnc", ops.cast(sim, value.dtype), value)
        context = ops.reshape(context, (batch, h, w, self.key_channels))
        context = self.f_up(context, training=training)
        if self.pool is not None:
            context = resize_bilinear(context, ops.shape(pixels)[1:3], self.align_corners)
        return context

    def compute_output_shape(self, pixels_shape, regions_shape):
        return (*pixels_shape[:3], self.out_channels or pixels_shape[-1])

    def get_config(self):
        config = super().get_config()
        config.update(
            key_channels=self.key_channels,
            out_channels=self.out_channels,
            scale=self.scale,
            use_bias=self.use_bias,
            align_corners=self.align_corners,
            synchronized=self.synchronized,
        )
        return config


@keras.saving.register_keras_serializable(package="ocr_tf")
class SpatialOCR(keras.layers.Layer):
    """Augmented representation, eq. 6: z_i = g([y_i, x_i]).

    `call(pixels, regions)`: pixels (B, h, w, C), region representations (B, K, C) ->
    (B, h, w, out_channels). Runs `ObjectAttention` (y_i, width C), concatenates **[context,
    pixels]** (the reference's order, which its checkpoints depend on), then conv1x1-BN-ReLU and
    channel dropout (PyTorch's Dropout2d).
    """

    def __init__(
        self,
        key_channels,
        out_channels,
        dropout=0.05,
        scale=1,
        use_bias=False,
        align_corners=True,
        synchronized=False,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if out_channels < 1:
            raise ValueError(f"out_channels must be >= 1, got {out_channels}.")
        self.key_channels = int(key_channels)
        self.out_channels = int(out_channels)
        self.dropout = float(dropout)
        self.scale = int(scale)
        self.use_bias = bool(use_bias)
        self.align_corners = bool(align_corners)
        self.synchronized = bool(synchronized)
        self.attention = ObjectAttention(
            self.key_channels,
            scale=self.scale,
            use_bias=self.use_bias,
            align_corners=self.align_corners,
            synchronized=self.synchronized,
            name="object_context_block",
        )
        self.fuse = ConvBN(
            self.out_channels, 1, use_bias=self.use_bias, synchronized=self.synchronized, name="conv_bn"
        )
        self.drop = keras.layers.SpatialDropout2D(self.dropout, name="dropout") if self.dropout > 0 else None

    def build(self, pixels_shape, regions_shape):
        self.attention.build(pixels_shape, regions_shape)
        self.fuse.build((None, None, None, 2 * pixels_shape[-1]))
        self.built = True

    def call(self, pixels, regions, training=None):
        context = self.attention(pixels, regions, training=training)
        x = ops.concatenate([context, pixels], axis=-1)
        x = self.fuse(x, training=training)
        if self.drop is not None:
            x = self.drop(x, training=training)
        return x

    def compute_output_shape(self, pixels_shape, regions_shape):
        return (*pixels_shape[:3], self.out_channels)

    def get_config(self):
        config = super().get_config()
        config.update(
            key_channels=self.key_channels,
            out_channels=self.out_channels,
            dropout=self.dropout,
            scale=self.scale,
            use_bias=self.use_bias,
            align_corners=self.align_corners,
            synchronized=self.synchronized,
        )
        return config


@keras.saving.register_keras_serializable(package="ocr_tf")
class OCRHead(keras.layers.Layer):
    """The whole OCR head of the official code: soft object regions, pre-OCR conv, gather, OCR,
    classifier. Returns `{"logits", "aux_logits"}` (float32) at the features' resolution.

    `call(features, aux_features=None)`: `features` (B, h, w, C) feed the OCR branch; the soft
    object regions are computed from `aux_features` when given (the ResNet recipe uses stage 3),
    else from `features` (HRNet).

    style="hrnet" ([HR]): aux head conv1x1 C->C (bias)-BN-ReLU-conv1x1->K; pre-OCR conv3x3 with
    bias; OCR convs without bias.
    style="openseg" ([OS]): aux head conv3x3->`aux_channels` (bias)-BN-ReLU-Dropout(0.05)-conv1x1
    ->K; every OCR conv with a bias.

    shared_stem=True (the phone model): one conv1x1-BN-ReLU stem of `mid_channels` feeds both the
    soft object regions and the OCR branch, instead of the aux head and the pre-OCR 3x3 conv.
    The head is then exactly an FCN head (stem + classifier, whose logits are the soft regions)
    plus the OCR module, so OCR's cost over the FCN baseline is the attention module alone
    (the paper's Table 8: MobileNetV2 31 FPS, + OCR 28 FPS).
    """

    STYLES = ("hrnet", "openseg")

    def __init__(
        self,
        num_classes,
        mid_channels=512,
        key_channels=256,
        style="hrnet",
        aux_channels=None,
        dropout=0.05,
        scale=1,
        align_corners=True,
        synchronized=False,
        shared_stem=False,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if int(num_classes) < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}.")
        if style not in self.STYLES:
            raise ValueError(f"style must be one of {self.STYLES}, got {style!r}.")
        self.num_classes = int(num_classes)
        self.mid_channels = int(mid_channels)
        self.key_channels = int(key_channels)
        self.style = style
        self.aux_channels = None if aux_channels is None else int(aux_channels)
        self.dropout = float(dropout)
        self.scale = int(scale)
        self.align_corners = bool(align_corners)
        self.synchronized = bool(synchronized)
        self.shared_stem = bool(shared_stem)
        ocr_bias = style == "openseg"
        sync = self.synchronized

        self.aux_head = None  # width depends on the input channels (hrnet), built in build()
        self.aux_dropout = keras.layers.Dropout(self.dropout, name="aux_dropout") if style == "openseg" else None
        self.aux_cls = keras.layers.Conv2D(self.num_classes, 1, use_bias=True, dtype=self._float32_policy(), name="aux_cls")
        self.conv3x3_ocr = (
            None if self.shared_stem else ConvBN(self.mid_channels, 3, use_bias=True, synchronized=sync, name="conv3x3_ocr")
        )
        self.gather = SpatialGather(name="ocr_gather_head")
        self.ocr = SpatialOCR(
            self.key_channels,
            self.mid_channels,
            dropout=self.dropout,
            scale=self.scale,
            use_bias=ocr_bias,
            align_corners=self.align_corners,
            synchronized=sync,
            name="ocr_distri_head",
        )
        self.cls_head = keras.layers.Conv2D(self.num_classes, 1, use_bias=True, dtype=self._float32_policy(), name="cls_head")

    def _float32_policy(self):
        # Logits in float32 under mixed precision (numerically safe softmax / loss).
        return "float32"

    def build(self, features_shape, aux_features_shape=None):
        _check_rank(self.name, features_shape, 4, "features (B, h, w, C)")
        aux_shape = features_shape if aux_features_shape is None else aux_features_shape
        _check_rank(self.name, aux_shape, 4, "aux features (B, h, w, C)")
        _check_batch(self.name, features_shape, aux_shape, "features", "aux features")
        if self.shared_stem:
            if aux_features_shape is not None:
                raise ValueError(f"{self.name}: shared_stem=True takes one input (features), not aux features.")
            width, kernel = self.mid_channels, 1
        elif self.style == "hrnet":
            width, kernel = self.aux_channels or aux_shape[-1], 1
        else:
            width, kernel = self.aux_channels or 512, 3
        self.aux_head = ConvBN(width, kernel, use_bias=True, synchronized=self.synchronized, name="aux_head")
        self.aux_head.build(aux_shape)
        self.aux_cls.build((None, None, None, width))
        if self.conv3x3_ocr is not None:
            self.conv3x3_ocr.build(features_shape)
        mid = (None, None, None, self.mid_channels)
        self.ocr.build(mid, (None, self.num_classes, self.mid_channels))
        self.cls_head.build(mid)
        self.built = True

    def call(self, features, aux_features=None, training=None):
        stem = self.aux_head(features if aux_features is None else aux_features, training=training)
        aux = self.aux_dropout(stem, training=training) if self.aux_dropout is not None else stem
        aux_logits = apply_conv(self.aux_cls, aux, training)  # self.aux_cls(aux), matmul gradients on CPU
        feats = stem if self.shared_stem else self.conv3x3_ocr(features, training=training)
        if aux_features is not None:
            # The ResNet recipe's stage 3 and 4 share one stride; guard against a mismatch anyway.
            aux_logits_at_feats = resize_bilinear(aux_logits, ops.shape(feats)[1:3], self.align_corners)
        else:
            aux_logits_at_feats = aux_logits
        regions = self.gather(feats, aux_logits_at_feats)
        feats = self.ocr(feats, regions, training=training)
        logits = apply_conv(self.cls_head, feats, training)
        return {"logits": logits, "aux_logits": aux_logits}

    def compute_output_shape(self, features_shape, aux_features_shape=None):
        return head_output_shapes(self.num_classes, features_shape, aux_features_shape)

    def get_config(self):
        config = super().get_config()
        config.update(
            num_classes=self.num_classes,
            mid_channels=self.mid_channels,
            key_channels=self.key_channels,
            style=self.style,
            aux_channels=self.aux_channels,
            dropout=self.dropout,
            scale=self.scale,
            align_corners=self.align_corners,
            synchronized=self.synchronized,
            shared_stem=self.shared_stem,
        )
        return config
