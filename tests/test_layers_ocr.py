"""The paper's OCR layers (eqs. 3-6) against the NumPy float64 reference in ocr_reference.py."""

import numpy as np
import pytest

import keras
import tensorflow as tf

import ocr_reference as ref
from ocr_tf.layers import ConvBN, ObjectAttention, OCRHead, SpatialGather, SpatialOCR


def rel_err(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return np.max(np.abs(a - b)) / np.max(np.abs(b))


def randomize(layer, seed=0):
    """Random weights everywhere, including BatchNorm statistics (so eval-mode BN is not identity)."""
    rng = np.random.default_rng(seed)
    for w in layer.weights:
        shape, name = tuple(w.shape), w.path
        if name.endswith("moving_variance"):
            value = rng.uniform(0.5, 1.5, shape)
        elif name.endswith("gamma"):
            value = rng.uniform(0.5, 1.5, shape)
        elif name.endswith("kernel"):
            fan_in = np.prod(shape[:-1])
            value = rng.normal(0, 1.5 / np.sqrt(fan_in), shape)
        else:  # bias, beta, moving_mean
            value = rng.normal(0, 0.2, shape)
        w.assign(value.astype(np.float32))


def conv_bn_weights(block):
    out = {
        "kernel": block.conv.kernel.numpy().astype(np.float64),
        "gamma": block.bn.gamma.numpy().astype(np.float64),
        "beta": block.bn.beta.numpy().astype(np.float64),
        "moving_mean": block.bn.moving_mean.numpy().astype(np.float64),
        "moving_variance": block.bn.moving_variance.numpy().astype(np.float64),
    }
    if block.conv.use_bias:
        out["bias"] = block.conv.bias.numpy().astype(np.float64)
    return out


def attention_weights(att):
    return {
        "f_pixel_0": conv_bn_weights(att.f_pixel[0]),
        "f_pixel_1": conv_bn_weights(att.f_pixel[1]),
        "f_object_0": conv_bn_weights(att.f_object[0]),
        "f_object_1": conv_bn_weights(att.f_object[1]),
        "f_down": conv_bn_weights(att.f_down),
        "f_up": conv_bn_weights(att.f_up),
    }


def head_weights(head):
    w = attention_weights(head.ocr.attention)
    w["conv_bn"] = conv_bn_weights(head.ocr.fuse)
    w["aux_head"] = conv_bn_weights(head.aux_head)
    if head.conv3x3_ocr is not None:
        w["conv3x3_ocr"] = conv_bn_weights(head.conv3x3_ocr)
    for name in ("aux_cls", "cls_head"):
        layer = getattr(head, name)
        w[name] = {"kernel": layer.kernel.numpy().astype(np.float64), "bias": layer.bias.numpy().astype(np.float64)}
    return w


def random_inputs(seed, *shapes):
    rng = np.random.default_rng(seed)
    return [rng.normal(0, 1, s).astype(np.float32) for s in shapes]


# ---------------------------------------------------------------- equations against NumPy


def test_spatial_gather_eq4_matches_numpy_and_softmax_is_over_space():
    pixels, regions = random_inputs(1, (2, 7, 9, 12), (2, 7, 9, 5))
    got = SpatialGather()(pixels, regions).numpy()
    want = ref.region_representations(pixels.astype(np.float64), regions.astype(np.float64))
    assert got.shape == (2, 5, 12)
    assert rel_err(got, want) < 1e-5
    # Over space: constant pixels give back that constant for every region (weights sum to 1 per region).
    const = np.full((1, 4, 6, 3), 2.5, np.float32)
    np.testing.assert_allclose(SpatialGather()(const, regions[:1, :4, :6]).numpy(), 2.5, rtol=1e-6)


def test_spatial_gather_scale_sharpens_the_softmax():
    pixels, regions = random_inputs(2, (1, 5, 5, 4), (1, 5, 5, 3))
    got = SpatialGather(scale=3.0)(pixels, regions).numpy()
    want = ref.region_representations(pixels.astype(np.float64), 3.0 * regions.astype(np.float64))
    assert rel_err(got, want) < 1e-5


def test_object_attention_eq5_eq3_matches_numpy():
    pixels, regions = random_inputs(3, (2, 6, 11, 16), (2, 4, 16))
    att = ObjectAttention(key_channels=8)
    att(pixels, regions)
    randomize(att, seed=3)
    got = att(pixels, regions, training=False).numpy()
    want = ref.object_contextual(pixels.astype(np.float64), regions.astype(np.float64), attention_weights(att), 8)
    assert got.shape == (2, 6, 11, 16)
    assert rel_err(got, want) < 1e-5


def test_object_attention_scale_pools_then_resizes_back():
    pixels, regions = random_inputs(4, (1, 8, 12, 6), (1, 3, 6))
    att = ObjectAttention(key_channels=4, scale=2)
    att(pixels, regions)
    randomize(att, seed=4)
    got = att(pixels, regions, training=False).numpy()
    p = pixels.astype(np.float64)
    pooled = p.reshape(1, 4, 2, 6, 2, 6).max(axis=(2, 4))  # 2x2 max-pooling
    small = ref.object_contextual(pooled, regions.astype(np.float64), attention_weights(att), 4)
    want = ref.resize_bilinear(small, (8, 12), align_corners=True)
    assert got.shape == (1, 8, 12, 6)
    assert rel_err(got, want) < 1e-5


def test_spatial_ocr_eq6_concatenates_context_first():
    pixels, regions = random_inputs(5, (2, 5, 7, 10), (2, 3, 10))
    layer = SpatialOCR(key_channels=6, out_channels=9, dropout=0.05)
    layer(pixels, regions)
    randomize(layer, seed=5)
    w = attention_weights(layer.attention)
    w["conv_bn"] = conv_bn_weights(layer.fuse)
    got = layer(pixels, regions, training=False).numpy()
    want = ref.augmented(pixels.astype(np.float64), regions.astype(np.float64), w, 6)
    assert got.shape == (2, 5, 7, 9)
    assert rel_err(got, want) < 1e-5
    # The order matters: the reference with [pixels, context] gives something else.
    swapped = dict(w)
    kernel = w["conv_bn"]["kernel"]
    swapped["conv_bn"] = dict(w["conv_bn"], kernel=np.concatenate([kernel[:, :, 10:], kernel[:, :, :10]], axis=2))
    assert rel_err(got, ref.augmented(pixels.astype(np.float64), regions.astype(np.float64), swapped, 6)) > 1e-2


def test_ocr_head_hrnet_style_matches_numpy():
    (features,) = random_inputs(6, (2, 7, 9, 24))
    head = OCRHead(5, mid_channels=16, key_channels=8)
    head(features)
    randomize(head, seed=6)
    out = head(features, training=False)
    logits, aux = ref.ocr_head(features.astype(np.float64), head_weights(head), 8)
    assert out["logits"].shape == (2, 7, 9, 5) and out["aux_logits"].shape == (2, 7, 9, 5)
    assert rel_err(out["aux_logits"], aux) < 1e-5
    assert rel_err(out["logits"], logits) < 1e-5
    # [HR]: the aux head keeps the input width with a 1x1 conv.
    assert head.aux_head.conv.kernel.shape == (1, 1, 24, 24)


def test_ocr_head_openseg_style_uses_aux_features_with_3x3():
    features, stage3 = random_inputs(7, (1, 9, 7, 20), (1, 9, 7, 12))
    head = OCRHead(4, mid_channels=16, key_channels=8, style="openseg", aux_channels=10)
    head(features, stage3)
    randomize(head, seed=7)
    out = head(features, stage3, training=False)
    logits, aux = ref.ocr_head(features.astype(np.float64), head_weights(head), 8, aux_features=stage3.astype(np.float64), aux_pad=1)
    assert head.aux_head.conv.kernel.shape == (3, 3, 12, 10)
    assert head.ocr.fuse.conv.use_bias  # [OS]: every OCR conv has a bias
    assert rel_err(out["aux_logits"], aux) < 1e-5
    assert rel_err(out["logits"], logits) < 1e-5


def test_ocr_head_shared_stem_is_fcn_plus_the_ocr_module():
    (features,) = random_inputs(12, (2, 6, 9, 20))
    head = OCRHead(4, mid_channels=16, key_channels=8, shared_stem=True)
    head(features)
    randomize(head, seed=12)
    out = head(features, training=False)
    logits, aux = ref.ocr_head(features.astype(np.float64), head_weights(head), 8, shared_stem=True)
    assert head.conv3x3_ocr is None and head.aux_head.conv.kernel.shape == (1, 1, 20, 16)
    assert rel_err(out["aux_logits"], aux) < 1e-5
    assert rel_err(out["logits"], logits) < 1e-5
    with pytest.raises(ValueError, match="shared_stem"):
        OCRHead(4, shared_stem=True)(features, features)


# ---------------------------------------------------------------- shapes and Keras behaviour


@pytest.mark.parametrize("batch,height,width,classes", [(1, 5, 7, 1), (3, 9, 4, 150), (1, 1, 1, 3)])
def test_head_shapes_batch_odd_sizes_and_class_counts(batch, height, width, classes):
    (features,) = random_inputs(8, (batch, height, width, 12))
    out = OCRHead(classes, mid_channels=8, key_channels=4)(features)
    for key in ("logits", "aux_logits"):
        assert out[key].shape == (batch, height, width, classes)
        assert out[key].dtype == tf.float32
        assert np.all(np.isfinite(out[key].numpy()))


def make_model(num_classes=5, channels=12):
    inputs = keras.Input((None, None, channels))
    outputs = OCRHead(num_classes, mid_channels=8, key_channels=4, name="ocr_head")(inputs)
    return keras.Model(inputs, outputs)


def test_none_spatial_dims_in_a_keras_model():
    model = make_model()
    assert model.output["logits"].shape == (None, None, None, 5)
    for shape in [(1, 6, 10, 12), (2, 13, 3, 12)]:
        out = model.predict(np.zeros(shape, np.float32), verbose=0)
        assert out["logits"].shape == shape[:3] + (5,)


def test_keras_round_trip_gives_identical_outputs(tmp_path):
    model = make_model()
    randomize(model, seed=9)
    (x,) = random_inputs(9, (2, 7, 5, 12))
    before = model(x, training=False)
    path = tmp_path / "ocr.keras"
    model.save(path)
    loaded = keras.models.load_model(path)
    after = loaded(x, training=False)
    for key in ("logits", "aux_logits"):
        np.testing.assert_array_equal(before[key].numpy(), after[key].numpy())
    head = loaded.get_layer("ocr_head")
    assert isinstance(head, OCRHead) and head.key_channels == 4 and head.mid_channels == 8


def test_layer_configs_round_trip():
    for layer in [
        SpatialGather(scale=2.0),
        ObjectAttention(16, out_channels=32, scale=2, synchronized=True),
        SpatialOCR(8, 24, dropout=0.1, align_corners=False),
        OCRHead(7, mid_channels=32, key_channels=16, style="openseg", aux_channels=64),
        OCRHead(3, mid_channels=8, key_channels=4, shared_stem=True),
        ConvBN(8, 3, strides=2, use_bias=True, activation=None, synchronized=True),
    ]:
        clone = layer.__class__.from_config(layer.get_config())
        assert clone.get_config() == layer.get_config()


def test_every_trainable_weight_receives_a_gradient():
    model = make_model(num_classes=3)
    (x,) = random_inputs(10, (2, 6, 8, 12))
    labels = np.random.default_rng(10).integers(0, 3, (2, 6, 8))
    with tf.GradientTape() as tape:
        out = model(x, training=True)
        loss = sum(
            tf.reduce_mean(keras.losses.sparse_categorical_crossentropy(labels, out[k], from_logits=True))
            for k in ("logits", "aux_logits")
        )
    grads = tape.gradient(loss, model.trainable_weights)
    missing = [w.path for w, g in zip(model.trainable_weights, grads) if g is None or not np.any(g.numpy())]
    assert not missing, f"no gradient for {missing}"
    # Soft object regions are trained through both losses, OCR through the final one only.
    assert len(model.trainable_weights) == len(grads) > 20


def test_mixed_float16_keeps_logits_float32_and_finite():
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        model = make_model()
        (x,) = random_inputs(11, (1, 9, 7, 12))
        out = model(x, training=False)
        head = model.get_layer("ocr_head")
        assert head.conv3x3_ocr.conv.compute_dtype == "float16"  # the body really runs in float16
    finally:
        keras.mixed_precision.set_global_policy("float32")
    for key in ("logits", "aux_logits"):
        assert out[key].dtype == tf.float32
        assert np.all(np.isfinite(out[key].numpy()))


def test_table4_parameter_count():
    """OCR head at the paper's Table 4 setting: 2048 input channels, 512 mid, 256 key, K = 19.

    Context module (what Table 4 counts, 10.5M in the paper):
      conv3x3_ocr   3*3*2048*512 + 512 (bias)                      = 9,437,696
      f_pixel       512*256 + 256*256 (no bias)                     =   196,608
      f_object      512*256 + 256*256                               =   196,608
      f_down        512*256                                         =   131,072
      f_up          256*512                                         =   131,072
      conv_bn       1024*512                                        =   524,288
      BN gamma+beta 2*(512 + 4*256 + 256 + 512 + 512)               =     5,632
      cls_head      512*19 + 19                                     =     9,747
                                                             total = 10,632,723
    Soft object region head ([HR], 1x1): 2048*2048 + 2048 + 2*2048 (BN) + 2048*19 + 19 = 4,239,379.
    """
    inputs = keras.Input((None, None, 2048))
    head = OCRHead(19, mid_channels=512, key_channels=256, name="ocr_head")
    keras.Model(inputs, head(inputs))

    def count(layers):
        return sum(int(np.prod(w.shape)) for layer in layers for w in layer.trainable_weights)

    context = count([head.conv3x3_ocr, head.ocr, head.cls_head])
    assert context == 10_632_723
    assert abs(context - 10.5e6) / 10.5e6 < 0.015  # near the paper's 10.5M
    assert count([head.aux_head, head.aux_cls]) == 4_239_379
    assert count([head]) == 10_632_723 + 4_239_379


# ---------------------------------------------------------------- bad input


def test_wrong_rank_is_refused_with_the_expected_shape():
    with pytest.raises(ValueError, match=r"rank 4"):
        SpatialGather()(np.zeros((2, 5, 8), np.float32), np.zeros((2, 5, 8, 3), np.float32))
    with pytest.raises(ValueError, match=r"region representations \(B, K, C\)"):
        ObjectAttention(4)(np.zeros((1, 3, 3, 8), np.float32), np.zeros((1, 3, 3, 8), np.float32))
    with pytest.raises(ValueError, match=r"features \(B, h, w, C\)"):
        OCRHead(3, mid_channels=8, key_channels=4)(np.zeros((4, 4, 8), np.float32))


def test_mismatched_batch_is_refused_naming_both_shapes():
    with pytest.raises(ValueError, match=r"batch sizes differ.*\(2, 5, 5, 8\).*\(3, 5, 5, 4\)"):
        SpatialGather()(np.zeros((2, 5, 5, 8), np.float32), np.zeros((3, 5, 5, 4), np.float32))
    with pytest.raises(ValueError, match=r"batch sizes differ"):
        ObjectAttention(4)(np.zeros((2, 3, 3, 8), np.float32), np.zeros((1, 4, 8), np.float32))


def test_mismatched_spatial_size_is_refused():
    with pytest.raises(ValueError, match=r"same height and width"):
        SpatialGather()(np.zeros((1, 5, 6, 8), np.float32), np.zeros((1, 5, 5, 4), np.float32))


@pytest.mark.parametrize("bad", [0, -3])
def test_num_classes_below_one_is_refused(bad):
    with pytest.raises(ValueError, match=r"num_classes must be >= 1"):
        OCRHead(bad)


def test_unknown_style_is_refused():
    with pytest.raises(ValueError, match=r"style must be one of"):
        OCRHead(3, style="mmseg")
