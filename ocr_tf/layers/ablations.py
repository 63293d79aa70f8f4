"""The paper's ablations of OCR (Table 1, Figure 1, Table 6) as Keras heads.

`AblationOCRHead(num_classes, regions=..., relation=...)` is the ResNet-recipe OCR head ([OS]:
deep-supervision FCN on stage 3, conv3x3 stem on stage 4, gather, object attention, [context,
pixels] fuse, classifier) with one part swapped, exactly as the paper describes:

  regions="supervised"     (ours) the soft object regions are the supervised stage-3 prediction.
  regions="unsupervised"   (Table 1, w/o supervision) the regions come from a second, identical
                           branch that no loss reaches; the supervised aux branch stays for the
                           "auxiliary loss in the stage-3" the paper adds.
  regions="ground_truth"   (Figure 1, ours*) m_ki = 1 if l_i = k: f_k is the mean of class k's pixels.
  relation="ocr"           (ours) w_ik = softmax_k(phi(x_i)^T psi(f_k) / sqrt(kc)).
  relation="double_attention"  (Table 1, DA scheme) predicted from the pixel alone:
                           w_ik = softmax_k(phi(x_i)^T v_k), v_k learned vectors (a conv1x1
                           kc -> K) in place of psi(f_k); psi is gone.
  relation="acf"           (Table 1, ACF scheme) the intermediate segmentation map is the
                           relation: w_ik = softmax_k(m_ik), the soft region logits; phi, psi gone.
  relation="ground_truth"  (ours*) w_ik = 1 if l_i = k else 0 (ignored pixels get no context).

Every other weight (stem, delta, rho, fuse, classifier, aux branch) keeps OCR's shape and name.
Labels for the ground-truth variants are passed as `labels=` (B, H, W) class ids, `IGNORE_LABEL`
for unlabelled pixels; they are resized to the features by nearest neighbour (PyTorch 'nearest').

Coarse-to-fine baselines of Table 6, on the same stage 3 / stage 4 inputs:
  `FCNHead`             the dilated-ResNet baseline: "fine only" = logits, "coarse only" = aux_logits.
  `LabelRefinementHead` the coarse map (softmax of the stage-3 prediction) concatenated to the
                        stage-4 features, then the final classifier (conv3x3-BN-ReLU-conv1x1).
  `LabelEnsembleHead`   logits = w * coarse + (1 - w) * fine, w = `coarse_weight`.

Written in `keras.ops`: the same code runs on the TensorFlow, JAX and PyTorch backends.
"""

import keras
from keras import ops

from ocr_tf.layers.common import ConvBN, check_label_range, head_output_shapes, resize_bilinear
from ocr_tf.layers.context import AuxFCN, ContextHead
from ocr_tf.layers.conv_grad import apply_conv
from ocr_tf.layers.ocr import SpatialGather
from ocr_tf.preprocessing import IGNORE_LABEL

REGIONS = ("supervised", "unsupervised", "ground_truth")
RELATIONS = ("ocr", "double_attention", "acf", "ground_truth")


def labels_to_onehot(labels, num_classes, size, ignore_label=IGNORE_LABEL):
    """(B, H, W) or (B, H, W, 1) integer labels -> (B, h, w, K) float32 one-hot at `size` (h, w).

    Resized by nearest neighbour as PyTorch's `F.interpolate(mode="nearest")` (source index
    floor(dst * in / out)); `ignore_label` pixels get an all-zero row. Any other label outside
    [0, K) is an error (`check_label_range`).
    """
    labels = ops.convert_to_tensor(labels)
    if len(labels.shape) == 4:
        labels = labels[..., 0]
    if len(labels.shape) != 3:
        raise ValueError(f"labels must be (B, H, W) or (B, H, W, 1) class ids, got shape {tuple(labels.shape)}.")
    labels = ops.cast(labels, "int32")
    check_label_range(labels, num_classes, ignore_label)
    for axis, out_size in ((1, size[0]), (2, size[1])):
        in_size = ops.shape(labels)[axis]
        scale = ops.cast(in_size, "float32") / ops.cast(out_size, "float32")
        index = ops.cast(ops.floor(ops.cast(ops.arange(out_size), "float32") * scale), "int32")
        labels = ops.take(labels, ops.minimum(index, in_size - 1), axis=axis)
    # Compared with every class id: ignore_label (>= K) matches none and gives a zero row.
    return ops.cast(ops.equal(labels[..., None], ops.arange(num_classes, dtype="int32")), "float32")


@keras.saving.register_keras_serializable(package="ocr_tf")
class GroundTruthGather(keras.layers.Layer):
    """Ground-truth object regions (ours*): f_k = sum_i m_ki x_i / sum_i m_ki with m the one-hot
    labels, i.e. the mean feature of class k's pixels (zeros for a class absent from the image).

    `call(pixels, onehot)`: pixels (B, h, w, C), one-hot labels (B, h, w, K) -> (B, K, C).
    """

    def call(self, pixels, onehot):
        shape = ops.shape(pixels)
        x = ops.reshape(ops.cast(pixels, "float32"), (shape[0], -1, shape[3]))
        m = ops.reshape(ops.cast(onehot, "float32"), (shape[0], -1, ops.shape(onehot)[3]))
        total = ops.einsum("bnk,bnc->bkc", m, x)
        count = ops.sum(m, axis=1)[..., None]
        return ops.cast(ops.divide_no_nan(total, count), pixels.dtype)

    def compute_output_shape(self, pixels_shape, onehot_shape):
        return (pixels_shape[0], onehot_shape[3], pixels_shape[3])


@keras.saving.register_keras_serializable(package="ocr_tf")
class SchemeObjectAttention(keras.layers.Layer):
    """`ObjectAttention` (eq. 3) with a choice of pixel-region relation (see the module doc).

    `call(pixels, regions, relation_map=None)`: pixels (B, h, w, C), regions (B, K, C); for
    relation "acf" `relation_map` is the soft region logits (B, h, w, K), for "ground_truth" the
    one-hot labels (B, h, w, K). Sub-layer names are ObjectAttention's (f_pixel_0/1, f_object_0/1,
    f_down, f_up), so with relation="ocr" the weights are interchangeable with it.
    """

    def __init__(
        self, key_channels, relation="ocr", out_channels=None, use_bias=False, synchronized=False, **kwargs
    ):
        super().__init__(**kwargs)
        if relation not in RELATIONS:
            raise ValueError(f"relation must be one of {RELATIONS}, got {relation!r}.")
        self.key_channels = int(key_channels)
        self.relation = relation
        self.out_channels = None if out_channels is None else int(out_channels)
        self.use_bias = bool(use_bias)
        self.synchronized = bool(synchronized)

        def block(filters, name):
            return ConvBN(filters, 1, use_bias=self.use_bias, synchronized=self.synchronized, name=name)

        kc = self.key_channels
        uses_phi = relation in ("ocr", "double_attention")
        self.f_pixel = [block(kc, "f_pixel_0"), block(kc, "f_pixel_1")] if uses_phi else []
        self.f_object = [block(kc, "f_object_0"), block(kc, "f_object_1")] if relation == "ocr" else []
        self.region_keys = None  # DA scheme: v_k, a conv1x1 kc -> K, built when K is known
        self.f_down = block(kc, "f_down")
        self.f_up = None

    def build(self, pixels_shape, regions_shape, relation_map_shape=None):
        if len(pixels_shape) != 4 or len(regions_shape) != 3:
            raise ValueError(
                f"{self.name}: expected pixels (B, h, w, C) and regions (B, K, C), got "
                f"{tuple(pixels_shape)} and {tuple(regions_shape)}."
            )
        c_pix, num_regions, c_reg, kc = pixels_shape[-1], regions_shape[1], regions_shape[-1], self.key_channels
        if self.f_pixel:
            self.f_pixel[0].build((None, None, None, c_pix))
            self.f_pixel[1].build((None, None, None, kc))
        if self.f_object:
            self.f_object[0].build((None, None, 1, c_reg))
            self.f_object[1].build((None, None, 1, kc))
        if self.relation == "double_attention":
            if num_regions is None:
                raise ValueError(
                    f"{self.name}: the DA scheme needs the number of regions K known, got {regions_shape}."
                )
            self.region_keys = keras.layers.Conv2D(num_regions, 1, use_bias=False, name="region_keys")
            self.region_keys.build((None, None, None, kc))
        self.f_down.build((None, None, 1, c_reg))
        self.f_up = ConvBN(
            self.out_channels or c_pix, 1, use_bias=self.use_bias, synchronized=self.synchronized, name="f_up"
        )
        self.f_up.build((None, None, None, kc))
        self.built = True

    def _relation(self, pixels, key_regions, relation_map, training):
        """(B, hw, K) float32 relation w_ik."""
        batch = ops.shape(pixels)[0]
        if self.relation in ("acf", "ground_truth"):
            if relation_map is None:
                raise ValueError(f"{self.name}: relation={self.relation!r} needs `relation_map`.")
            w = ops.reshape(ops.cast(relation_map, "float32"), (batch, -1, ops.shape(relation_map)[3]))
            return ops.softmax(w, axis=-1) if self.relation == "acf" else w
        query = pixels
        for layer in self.f_pixel:
            query = layer(query, training=training)
        if self.relation == "double_attention":
            logits = self.region_keys(query)
            return ops.softmax(ops.reshape(ops.cast(logits, "float32"), (batch, -1, ops.shape(logits)[3])), axis=-1)
        key = key_regions
        for layer in self.f_object:
            key = layer(key, training=training)
        query = ops.reshape(ops.cast(query, "float32"), (batch, -1, self.key_channels))
        key = ops.cast(ops.squeeze(key, axis=2), "float32")
        return ops.softmax(ops.einsum("bnc,bkc->bnk", query, key) * self.key_channels**-0.5, axis=-1)

    def call(self, pixels, regions, relation_map=None, training=None):
        f = regions[:, :, None, :]  # (B, K, 1, C) as ObjectAttention
        w = self._relation(pixels, f, relation_map, training)
        value = ops.squeeze(self.f_down(f, training=training), axis=2)
        batch, h, w_ = ops.shape(pixels)[:3]
        context = ops.einsum("bnk,bkc->bnc", ops.cast(w, value.dtype), value)
        context = ops.reshape(context, (batch, h, w_, self.key_channels))
        return self.f_up(context, training=training)

    def compute_output_shape(self, pixels_shape, regions_shape, relation_map_shape=None):
        return (*pixels_shape[:3], self.out_channels or pixels_shape[-1])

    def get_config(self):
        config = super().get_config()
        config.update(
            key_channels=self.key_channels,
            relation=self.relation,
            out_channels=self.out_channels,
            use_bias=self.use_bias,
            synchronized=self.synchronized,
        )
        return config


@keras.saving.register_keras_serializable(package="ocr_tf")
class AblationOCRHead(keras.layers.Layer):
    """The OCR head of the ResNet recipe with the region formation and the pixel-region relation
    chosen by `regions` and `relation` (module doc). Defaults are the paper's OCR.

    `call(features, aux_features=None, labels=None)` -> {"logits", "aux_logits"} (float32, at the
    features' resolution); `labels` is required by the ground-truth variants only.
    """

    def __init__(
        self,
        num_classes,
        regions="supervised",
        relation="ocr",
        mid_channels=512,
        key_channels=256,
        aux_channels=512,
        dropout=0.05,
        use_bias=False,
        align_corners=True,
        synchronized=False,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if regions not in REGIONS:
            raise ValueError(f"regions must be one of {REGIONS}, got {regions!r}.")
        if relation not in RELATIONS:
            raise ValueError(f"relation must be one of {RELATIONS}, got {relation!r}.")
        self.num_classes = int(num_classes)
        self.regions = regions
        self.relation = relation
        self.mid_channels = int(mid_channels)
        self.key_channels = int(key_channels)
        self.aux_channels = int(aux_channels)
        self.dropout = float(dropout)
        self.use_bias = bool(use_bias)
        self.align_corners = bool(align_corners)
        self.synchronized = bool(synchronized)
        sync = self.synchronized
        self.aux_head = AuxFCN(self.num_classes, self.aux_channels, synchronized=sync, name="aux_head")
        # Table 1 w/o supervision: the same region branch, but no loss reaches it.
        self.region_head = (
            AuxFCN(self.num_classes, self.aux_channels, synchronized=sync, name="region_head")
            if regions == "unsupervised"
            else None
        )
        self.conv3x3_ocr = ConvBN(
            self.mid_channels, 3, use_bias=self.use_bias, synchronized=sync, name="conv3x3_ocr"
        )
        gather = GroundTruthGather if regions == "ground_truth" else SpatialGather
        self.gather = gather(name="ocr_gather_head")
        self.attention = SchemeObjectAttention(
            self.key_channels, relation, use_bias=self.use_bias, synchronized=sync, name="object_context_block"
        )
        self.fuse = ConvBN(self.mid_channels, 1, use_bias=self.use_bias, synchronized=sync, name="conv_bn")
        self.drop = keras.layers.SpatialDropout2D(self.dropout, name="dropout") if self.dropout > 0 else None
        self.cls_head = keras.layers.Conv2D(self.num_classes, 1, dtype="float32", name="cls_head")

    @property
    def needs_labels(self):
        return self.regions == "ground_truth" or self.relation == "ground_truth"

    def build(self, features_shape, aux_features_shape=None, labels_shape=None):
        aux_shape = features_shape if aux_features_shape is None else aux_features_shape
        for what, shape in (("features", features_shape), ("aux features", aux_shape)):
            if len(shape) != 4 or shape[-1] is None:
                raise ValueError(f"{self.name}: {what} must be (B, h, w, C) with C known, got {tuple(shape)}.")
        self.aux_head.build(aux_shape)
        if self.region_head is not None:
            self.region_head.build(aux_shape)
        self.conv3x3_ocr.build(features_shape)
        mid = (None, None, None, self.mid_channels)
        self.attention.build(mid, (None, self.num_classes, self.mid_channels))
        self.fuse.build((None, None, None, 2 * self.mid_channels))
        self.cls_head.build(mid)
        self.built = True

    def call(self, features, aux_features=None, labels=None, training=None):
        if self.needs_labels and labels is None:
            raise ValueError(
                f"{self.name}: regions={self.regions!r}, relation={self.relation!r} use the ground truth; "
                "pass labels=(B, H, W) class ids."
            )
        source = features if aux_features is None else aux_features
        aux_logits = self.aux_head(source, training=training)
        region_logits = aux_logits if self.region_head is None else self.region_head(source, training=training)
        feats = self.conv3x3_ocr(features, training=training)
        size = ops.shape(feats)[1:3]
        if aux_features is not None:
            region_logits = resize_bilinear(region_logits, size, self.align_corners)
        onehot = labels_to_onehot(labels, self.num_classes, size) if self.needs_labels else None
        if self.regions == "ground_truth":
            regions = self.gather(feats, ops.cast(onehot, feats.dtype))
        else:
            regions = self.gather(feats, region_logits)
        relation_map = {"acf": region_logits, "ground_truth": onehot}.get(self.relation)
        context = self.attention(feats, regions, relation_map, training=training)
        x = self.fuse(ops.concatenate([context, feats], axis=-1), training=training)
        if self.drop is not None:
            x = self.drop(x, training=training)
        return {"logits": apply_conv(self.cls_head, x, training), "aux_logits": aux_logits}

    def compute_output_shape(self, features_shape, aux_features_shape=None, labels_shape=None):
        return head_output_shapes(self.num_classes, features_shape, aux_features_shape)

    def get_config(self):
        config = super().get_config()
        config.update(
            num_classes=self.num_classes,
            regions=self.regions,
            relation=self.relation,
            mid_channels=self.mid_channels,
            key_channels=self.key_channels,
            aux_channels=self.aux_channels,
            dropout=self.dropout,
            use_bias=self.use_bias,
            align_corners=self.align_corners,
            synchronized=self.synchronized,
        )
        return config


# ----------------------------------------------------------------------------------------------
# Coarse-to-fine baselines (Table 6)


# Registered under its own name: models.FCNHead is "ocr_tf>FCNHead", and two classes under one
# name silently replace each other in Keras' registry.
@keras.saving.register_keras_serializable(package="ocr_tf", name="AblationFCNHead")
class FCNHead(ContextHead):
    """The dilated-ResNet baseline: conv3x3 C->mid-BN-ReLU-Dropout2d-classifier on stage 4 ("fine
    only" = logits); the aux branch on stage 3 is the "coarse only" prediction (aux_logits)."""

    DEFAULT_DROPOUT = 0.1

    def __init__(self, num_classes, mid_channels=512, **kwargs):
        super().__init__(num_classes, mid_channels=mid_channels, **kwargs)
        self.pre = self.conv_bn(self.mid_channels, 3, "pre")
        self.drop = self.make_dropout()

    def build_context(self, features_shape):
        self.pre.build(features_shape)

    def context(self, features, training=None):
        x = self.pre(features, training=training)
        return self.drop(x, training=training) if self.drop is not None else x


@keras.saving.register_keras_serializable(package="ocr_tf")
class LabelRefinementHead(FCNHead):
    """Label refinement: the coarse segmentation map (softmax over classes of the stage-3
    prediction, resized to stage 4) is concatenated to the stage-4 features and the final
    classifier (the baseline's conv3x3-BN-ReLU-dropout-conv1x1) predicts the refined map."""

    def build_context(self, features_shape):
        self.pre.build((*features_shape[:3], features_shape[-1] + self.num_classes))

    def call(self, features, aux_features=None, training=None):
        aux_logits = self.aux_head(features if aux_features is None else aux_features, training=training)
        coarse = ops.softmax(resize_bilinear(aux_logits, ops.shape(features)[1:3], self.align_corners), axis=-1)
        x = ops.concatenate([features, ops.cast(coarse, features.dtype)], axis=-1)
        return {"logits": self.context_logits(x, training=training), "aux_logits": aux_logits}


@keras.saving.register_keras_serializable(package="ocr_tf")
class LabelEnsembleHead(FCNHead):
    """Label ensemble: logits = coarse_weight * coarse + (1 - coarse_weight) * fine, the coarse map
    being the stage-3 prediction (aux_logits, resized) and the fine one the baseline's stage-4
    prediction. The weighted sum is of logits (the loss then sees one fused prediction)."""

    def __init__(self, num_classes, coarse_weight=0.5, **kwargs):
        super().__init__(num_classes, **kwargs)
        if not 0.0 <= float(coarse_weight) <= 1.0:
            raise ValueError(f"LabelEnsembleHead: coarse_weight must be in [0, 1], got {coarse_weight}.")
        self.coarse_weight = float(coarse_weight)

    def call(self, features, aux_features=None, training=None):
        aux_logits = self.aux_head(features if aux_features is None else aux_features, training=training)
        fine = self.context_logits(features, training=training)
        coarse = resize_bilinear(aux_logits, ops.shape(fine)[1:3], self.align_corners)
        logits = self.coarse_weight * coarse + (1.0 - self.coarse_weight) * fine
        return {"logits": logits, "aux_logits": aux_logits}

    def get_config(self):
        config = super().get_config()
        config.update(coarse_weight=self.coarse_weight)
        return config


# name -> (class, preset kwargs): the rows of Tables 1 and 6 and Figure 1.
ABLATION_HEADS = {
    "ocr": (AblationOCRHead, {}),
    "ocr_unsupervised_regions": (AblationOCRHead, {"regions": "unsupervised"}),
    "ocr_da_relation": (AblationOCRHead, {"relation": "double_attention"}),
    "ocr_acf_relation": (AblationOCRHead, {"relation": "acf"}),
    "ocr_ground_truth": (AblationOCRHead, {"regions": "ground_truth", "relation": "ground_truth"}),
    "fcn": (FCNHead, {}),
    "label_refinement": (LabelRefinementHead, {}),
    "label_ensemble": (LabelEnsembleHead, {}),
}


def build_ablation_head(name, num_classes, **kwargs):
    """The head of one ablation row by name (`ABLATION_HEADS`), extra kwargs override the preset."""
    if name not in ABLATION_HEADS:
        raise ValueError(f"Unknown ablation head {name!r}; known: {sorted(ABLATION_HEADS)}.")
    cls, preset = ABLATION_HEADS[name]
    return cls(num_classes, **{**preset, **kwargs})
