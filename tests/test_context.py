"""The compared context heads: shapes at odd sizes, analytic parameter counts, .keras round
trips, and their attention / pooling blocks against NumPy float64 references."""

import numpy as np
import pytest

import keras
import tensorflow as tf

import ocr_reference as ref
from ocr_tf.layers.context import (
    CONTEXT_HEADS,
    ChannelAttention,
    CrissCrossAttention,
    DoubleAttention,
    PositionAttention,
    adaptive_avg_pool,
)

K, C, C_AUX, MID, KEY, AUX = 5, 12, 10, 8, 4, 6  # tiny widths so the suite runs on 2 cores
TINY = {
    "ppm": dict(mid_channels=MID, branch_channels=3),
    "aspp": dict(mid_channels=MID, rates=(1, 2, 3)),
    "self_attention": dict(mid_channels=MID, key_channels=KEY),
    "double_attention": dict(mid_channels=MID, key_channels=KEY, num_regions=3),
    "danet": dict(mid_channels=MID, key_channels=KEY),
    "cc_attention": dict(mid_channels=MID, key_channels=KEY),
}


def randomize(layer, seed=0):
    """Random weights everywhere, BN statistics and the attention gammas included (so eval-mode
    BN is not the identity and the attentions, which start at gamma = 0, matter)."""
    rng = np.random.default_rng(seed)
    for w in layer.weights:
        shape, name = tuple(w.shape), w.path
        if name.endswith(("moving_variance", "gamma", "beta_scale")):
            value = rng.uniform(0.5, 1.5, shape)
        elif name.endswith("kernel"):
            value = rng.normal(0, 1.5 / np.sqrt(np.prod(shape[:-1])), shape)
        elif name.endswith("/beta") and shape == ():  # channel attention's scalar
            value = rng.uniform(0.5, 1.5, shape)
        else:  # bias, BN beta, moving_mean
            value = rng.normal(0, 0.2, shape)
        w.assign(value.astype(np.float32))


def n_trainable(layer):
    return sum(int(np.prod(w.shape)) for w in layer.trainable_weights)


# Parameter counts by hand. conv_bn(i, o, k): a k x k conv without bias (use_bias=False) and
# BN's trainable gamma and beta; conv(i, o): a 1x1 conv with bias.
def conv_bn(i, o, k=1, bias=False):
    return k * k * i * o + (o if bias else 0) + 2 * o


def conv(i, o):
    return i * o + o


def expected_params(name, c, k, mid, aux=512, c_aux=None, **w):
    # The aux FCN on the aux features: conv3x3 (bias)-BN, conv1x1.
    aux_branch = conv_bn(c if c_aux is None else c_aux, aux, 3, bias=True) + conv(aux, k)
    cls = conv(mid, k)
    stem, fuse = conv_bn(c, mid, 3), conv_bn(2 * mid, mid)  # relational heads: conv3x3 stem, [ctx, x] fuse
    if name == "ppm":  # one conv1x1 per bin, conv3x3 on [x, branches]
        b, bins = w.get("branch_channels", 512), 4
        body = bins * conv_bn(c, b) + conv_bn(c + bins * b, mid, 3)
    elif name == "aspp":  # 1x1, three dilated 3x3, image pool, projection of the 5 branches
        body = 2 * conv_bn(c, mid) + 3 * conv_bn(c, mid, 3) + conv_bn(5 * mid, mid)
    elif name == "self_attention":  # phi, psi: two conv1x1 each; delta, rho: one
        kc = w.get("key_channels", 256)
        body = stem + 2 * (conv_bn(mid, kc) + conv_bn(kc, kc)) + conv_bn(mid, kc) + conv_bn(kc, mid) + fuse
    elif name == "double_attention":  # values conv-BN, gather and distribute convs (bias), up conv-BN
        kc, r = w.get("key_channels", 256), w.get("num_regions", 64)
        body = stem + conv_bn(mid, kc) + 2 * conv(mid, r) + conv_bn(kc, mid) + fuse
    elif name in ("danet", "cc_attention"):  # q, k, v convs (bias) + gamma [+ CAM's beta], merge conv-BN
        kc = w.get("key_channels", 64)
        scalars = 2 if name == "danet" else 1
        body = stem + 2 * conv(mid, kc) + conv(mid, mid) + scalars + conv_bn(mid, mid) + fuse
    return aux_branch + body + cls


def build_model(name, head_kwargs=None, c=C, c_aux=C_AUX):
    head = CONTEXT_HEADS[name](K, aux_channels=AUX, **(TINY[name] if head_kwargs is None else head_kwargs))
    features = keras.Input((None, None, c))
    aux = keras.Input((None, None, c_aux))
    model = keras.Model([features, aux], head(features, aux))
    return model, head


@pytest.mark.parametrize("name", sorted(CONTEXT_HEADS))
def test_head_shapes_params_and_keras_round_trip(name, tmp_path):
    model, head = build_model(name)
    randomize(model)
    assert n_trainable(head) == expected_params(name, C, K, MID, AUX, c_aux=C_AUX, **TINY[name])

    rng = np.random.default_rng(1)
    for h, w in ((7, 9), (5, 3)):  # odd sizes, one model (None h/w)
        x = rng.normal(size=(2, h, w, C)).astype(np.float32)
        a = rng.normal(size=(2, h, w, C_AUX)).astype(np.float32)
        out = model([x, a], training=False)
        assert set(out) == {"logits", "aux_logits"}
        for key in out:
            assert tuple(out[key].shape) == (2, h, w, K) and out[key].dtype == tf.float32
        assert np.all(np.isfinite(out["logits"].numpy()))

    path = str(tmp_path / f"{name}.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    x = rng.normal(size=(1, 7, 9, C)).astype(np.float32)
    a = rng.normal(size=(1, 7, 9, C_AUX)).astype(np.float32)
    before, after = model([x, a], training=False), loaded([x, a], training=False)
    for key in before:
        np.testing.assert_array_equal(before[key].numpy(), after[key].numpy())
    assert loaded.layers[-1].get_config() == head.get_config()


def test_aux_logits_come_from_features_without_aux_features():
    head = CONTEXT_HEADS["danet"](K, aux_channels=AUX, **TINY["danet"])
    x = tf.random.normal((1, 6, 5, C))
    out = head(x, training=False)
    np.testing.assert_allclose(out["aux_logits"].numpy(), head.aux_head(x, training=False).numpy(), rtol=1e-6)


def test_table4_widths_land_on_the_paper_parameter_counts():
    """Context module only (no aux branch) at C = 2048, K = 19; the paper's Table 4 in comments."""
    counts = {}
    for name, cls in CONTEXT_HEADS.items():
        head = cls(19)
        head.build((None, None, None, 2048))
        counts[name] = n_trainable(head) - n_trainable(head.aux_head)
        assert n_trainable(head) == expected_params(name, 2048, 19, head.mid_channels)
    assert counts == {
        "ppm": 23_083_539,  # 23.1M
        "aspp": 15_539_987,  # 15.5M
        "self_attention": 10_632_211,  # 10.5M
        "double_attention": 10_302_611,  # 10.2M
        "danet": 10_564_757,  # 10.6M
        "cc_attention": 10_564_756,  # 10.6M
    }


def np_adaptive_pool(x, bins):
    """PyTorch's adaptive_avg_pool2d, written as its definition: bin i spans
    [floor(i * n / bins), ceil((i + 1) * n / bins))."""
    b, h, w, c = x.shape
    out = np.zeros((b, bins, bins, c))
    for i in range(bins):
        r0, r1 = (i * h) // bins, -((-(i + 1) * h) // bins)
        for j in range(bins):
            c0, c1 = (j * w) // bins, -((-(j + 1) * w) // bins)
            out[:, i, j] = x[:, r0:r1, c0:c1].mean(axis=(1, 2))
    return out


@pytest.mark.parametrize("bins", [1, 2, 3, 6])
def test_adaptive_avg_pool_matches_pytorch_definition(bins):
    x = np.random.default_rng(bins).normal(size=(2, 7, 5, 3))
    unknown_size = [tf.TensorSpec((None, None, None, 3), tf.float64)]
    got = tf.function(lambda t: adaptive_avg_pool(t, bins), input_signature=unknown_size)(x)
    np.testing.assert_allclose(got.numpy(), np_adaptive_pool(x, bins), rtol=1e-12, atol=1e-12)


def dense(layer, x):
    return x @ layer.kernel.numpy()[0, 0].astype(np.float64) + layer.bias.numpy()


def test_position_and_channel_attention_match_numpy():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(2, 5, 3, 6)).astype(np.float32)
    pam, cam = PositionAttention(2), ChannelAttention()
    pam.build(x.shape), cam.build(x.shape)
    randomize(pam), randomize(cam)
    flat = x.reshape(2, -1, 6).astype(np.float64)
    q, k, v = dense(pam.query, flat), dense(pam.key, flat), dense(pam.value, flat)
    att = ref.softmax(np.einsum("bic,bjc->bij", q, k), axis=-1)
    want = float(pam.gamma.numpy()) * np.einsum("bij,bjc->bic", att, v) + flat
    np.testing.assert_allclose(pam(x).numpy().reshape(2, -1, 6), want, rtol=1e-4, atol=1e-5)

    energy = np.einsum("bnc,bnd->bcd", flat, flat)
    att = ref.softmax(energy.max(axis=-1, keepdims=True) - energy, axis=-1)
    want = float(cam.beta.numpy()) * np.einsum("bcd,bnd->bnc", att, flat) + flat
    np.testing.assert_allclose(cam(x).numpy().reshape(2, -1, 6), want, rtol=1e-4, atol=1e-5)


def test_criss_cross_attention_matches_a_per_pixel_loop():
    rng = np.random.default_rng(4)
    x = rng.normal(size=(1, 4, 5, 6)).astype(np.float32)
    cca = CrissCrossAttention(3)
    cca.build(x.shape)
    randomize(cca)
    xd = x[0].astype(np.float64)
    q, k, v = dense(cca.query, xd), dense(cca.key, xd), dense(cca.value, xd)
    want = np.zeros_like(xd)
    for i in range(4):
        for j in range(5):
            # Row i (itself included once) and column j without itself.
            cells = [(i, w) for w in range(5)] + [(h, j) for h in range(4) if h != i]
            a = ref.softmax(np.array([q[i, j] @ k[c] for c in cells]), axis=0)
            want[i, j] = sum(a_n * v[c] for a_n, c in zip(a, cells))
    want = float(cca.gamma.numpy()) * want + xd
    np.testing.assert_allclose(cca(x).numpy()[0], want, rtol=1e-4, atol=1e-5)


def test_double_attention_matches_numpy():
    rng = np.random.default_rng(5)
    x = rng.normal(size=(2, 3, 5, 6)).astype(np.float32)
    da = DoubleAttention(key_channels=4, num_regions=3, out_channels=7)
    da.build(x.shape)
    randomize(da)
    xd = x.astype(np.float64)

    def bn_weights(block):
        return {
            "kernel": block.conv.kernel.numpy().astype(np.float64),
            "gamma": block.bn.gamma.numpy(),
            "beta": block.bn.beta.numpy(),
            "moving_mean": block.bn.moving_mean.numpy(),
            "moving_variance": block.bn.moving_variance.numpy(),
        }

    value = ref.conv_bn_relu(xd, bn_weights(da.f_value)).reshape(2, -1, 4)
    gather = ref.softmax(dense(da.f_gather, xd).reshape(2, -1, 3), axis=1)  # over the pixels
    regions = np.einsum("bnr,bnc->brc", gather, value)
    distribute = ref.softmax(dense(da.f_distribute, xd).reshape(2, -1, 3), axis=-1)  # over regions
    context = np.einsum("bnr,brc->bnc", distribute, regions).reshape(2, 3, 5, 4)
    want = ref.conv_bn_relu(context, bn_weights(da.f_up))
    np.testing.assert_allclose(da(x, training=False).numpy(), want, rtol=1e-4, atol=1e-5)


def test_bad_inputs_name_the_culprit():
    with pytest.raises(ValueError, match="num_classes"):
        CONTEXT_HEADS["ppm"](0)
    with pytest.raises(ValueError, match="bins"):
        CONTEXT_HEADS["ppm"](3, bins=(0, 2))
    head = CONTEXT_HEADS["aspp"](3)
    with pytest.raises(ValueError, match=r"features \(B, h, w, C\)"):
        head(tf.zeros((1, 4, 4)))


def test_mixed_precision_keeps_logits_float32():
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        x = tf.random.normal((1, 5, 7, C))
        for name, cls in CONTEXT_HEADS.items():
            head = cls(K, aux_channels=AUX, **TINY[name])
            out = head(x, training=False)
            assert head.aux_head.conv.compute_dtype == "bfloat16" and head.cls_head.compute_dtype == "float32"
            for key, value in out.items():
                assert value.dtype == tf.float32 and np.all(np.isfinite(value.numpy())), (name, key)
    finally:
        keras.mixed_precision.set_global_policy("float32")
