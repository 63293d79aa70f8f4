"""OCR ablations: ground-truth regions and relations, the DA / ACF relation schemes, regions
without supervision, and the coarse-to-fine baselines, against NumPy float64 references."""

import numpy as np
import pytest

import keras
import tensorflow as tf

import ocr_reference as ref
from ocr_tf.layers import ObjectAttention
from ocr_tf.layers.ablations import (
    ABLATION_HEADS,
    AblationOCRHead,
    GroundTruthGather,
    LabelEnsembleHead,
    LabelRefinementHead,
    SchemeObjectAttention,
    build_ablation_head,
    labels_to_onehot,
)
from ocr_tf.preprocessing import IGNORE_LABEL

K, C, C_AUX, MID, KEY, AUX = 4, 10, 6, 8, 5, 7
TINY = dict(mid_channels=MID, key_channels=KEY, aux_channels=AUX)


def randomize(layer, seed=0):
    rng = np.random.default_rng(seed)
    for w in layer.weights:
        shape, name = tuple(w.shape), w.path
        if name.endswith(("moving_variance", "gamma")):
            value = rng.uniform(0.5, 1.5, shape)
        elif name.endswith("kernel"):
            value = rng.normal(0, 1.5 / np.sqrt(np.prod(shape[:-1])), shape)
        else:
            value = rng.normal(0, 0.2, shape)
        w.assign(value.astype(np.float32))


def bn(block):
    out = {
        "kernel": block.conv.kernel.numpy().astype(np.float64),
        "gamma": block.bn.gamma.numpy(),
        "beta": block.bn.beta.numpy(),
        "moving_mean": block.bn.moving_mean.numpy(),
        "moving_variance": block.bn.moving_variance.numpy(),
    }
    if block.conv.use_bias:
        out["bias"] = block.conv.bias.numpy()
    return out


def class_means(x, labels, k):
    """Mean feature of each class's pixels (zeros for an absent class): ours*' regions."""
    b, _, _, c = x.shape
    out = np.zeros((b, k, c))
    for i in range(b):
        for cls in range(k):
            mask = labels[i] == cls
            if mask.any():
                out[i, cls] = x[i][mask].mean(axis=0)
    return out


def test_ground_truth_gather_builds_class_mean_regions():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 5, 7, C)).astype(np.float32)
    labels = rng.integers(0, K - 1, size=(2, 5, 7))  # class K-1 absent
    labels[0, 0, :3] = IGNORE_LABEL
    onehot = labels_to_onehot(labels, K, (5, 7))
    regions = GroundTruthGather()(x, onehot).numpy()
    np.testing.assert_allclose(regions, class_means(x.astype(np.float64), labels, K), rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(regions[:, K - 1], 0.0)


def test_labels_to_onehot_resizes_like_pytorch_nearest_and_drops_ignored():
    labels = np.arange(48).reshape(1, 6, 8) % 3
    labels[0, 4, 5] = IGNORE_LABEL
    onehot = labels_to_onehot(labels, 3, (3, 3)).numpy()
    rows, cols = [0, 2, 4], [0, 2, 5]  # floor(dst * in / out)
    picked = labels[0][np.ix_(rows, cols)]
    for i in range(3):
        for j in range(3):
            want = np.zeros(3) if picked[i, j] == IGNORE_LABEL else np.eye(3)[picked[i, j]]
            np.testing.assert_array_equal(onehot[0, i, j], want)
    assert picked[2, 2] == IGNORE_LABEL  # the ignored pixel is one of those picked
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"labels must be in \[0, 3\)"):
        labels_to_onehot(np.full((1, 2, 2), 3), 3, (2, 2))


def test_ocr_relation_is_object_attention():
    """relation="ocr" re-implements ObjectAttention: same weight names, same outputs."""
    rng = np.random.default_rng(1)
    pixels = rng.normal(size=(2, 3, 5, MID)).astype(np.float32)
    regions = rng.normal(size=(2, K, MID)).astype(np.float32)
    ours, scheme = ObjectAttention(KEY), SchemeObjectAttention(KEY, "ocr")
    ours.build(pixels.shape, regions.shape)
    scheme.build(pixels.shape, regions.shape)
    randomize(ours)
    source = {w.path.split("/", 1)[1]: w for w in ours.weights}
    assert sorted(source) == sorted(w.path.split("/", 1)[1] for w in scheme.weights)
    for w in scheme.weights:
        w.assign(source[w.path.split("/", 1)[1]])
    np.testing.assert_allclose(
        scheme(pixels, regions, training=False).numpy(), ours(pixels, regions, training=False).numpy(), rtol=1e-6
    )


def weight_shapes(head):
    return {w.path.split("/", 1)[1]: tuple(w.shape) for w in head.trainable_weights}


def build_head(**kwargs):
    head = AblationOCRHead(K, **TINY, **kwargs)
    labels = np.random.default_rng(2).integers(0, K, size=(2, 7, 9))
    out = head(tf.zeros((2, 7, 9, C)), tf.zeros((2, 7, 9, C_AUX)), labels=labels, training=False)
    return head, out


def test_relation_schemes_differ_from_ours_only_where_the_paper_says():
    ours, ours_out = build_head()
    base = weight_shapes(ours)
    phi = {k for k in base if k.startswith("object_context_block/f_pixel")}
    psi = {k for k in base if k.startswith("object_context_block/f_object")}
    assert phi and psi
    expected = {
        # DA: the relation is predicted from the pixel alone: psi(f_k) becomes learned v_k.
        ("supervised", "double_attention"): (psi, {"object_context_block/region_keys/kernel": (1, 1, KEY, K)}),
        # ACF: the segmentation map is the relation: no phi, no psi.
        ("supervised", "acf"): (phi | psi, {}),
        # ours*: regions and relation from the labels: no phi, no psi.
        ("ground_truth", "ground_truth"): (phi | psi, {}),
        # w/o supervision: a second region branch like the aux one, which no loss reaches.
        ("unsupervised", "ocr"): (
            set(),
            {k.replace("aux_head/", "region_head/"): s for k, s in base.items() if k.startswith("aux_head/")},
        ),
    }
    for (regions, relation), (removed, added) in expected.items():
        head, out = build_head(regions=regions, relation=relation)
        shapes = weight_shapes(head)
        assert {k for k in base if k not in shapes} == removed, (regions, relation)
        assert {k: s for k, s in shapes.items() if k not in base} == added, (regions, relation)
        assert all(shapes[k] == s for k, s in base.items() if k in shapes)  # the rest: same shapes
        assert {k: v.shape for k, v in out.items()} == {k: v.shape for k, v in ours_out.items()}


@pytest.mark.parametrize("relation", ["double_attention", "acf"])
def test_relation_schemes_match_numpy(relation):
    rng = np.random.default_rng(3)
    pixels = rng.normal(size=(2, 3, 5, MID)).astype(np.float32)
    regions = rng.normal(size=(2, K, MID)).astype(np.float32)
    seg = rng.normal(size=(2, 3, 5, K)).astype(np.float32)
    att = SchemeObjectAttention(KEY, relation)
    att.build(pixels.shape, regions.shape)
    randomize(att)
    x, f = pixels.astype(np.float64), regions[:, :, None, :].astype(np.float64)
    if relation == "acf":
        w = ref.softmax(seg.reshape(2, -1, K).astype(np.float64), axis=-1)
    else:
        phi = ref.conv_bn_relu(ref.conv_bn_relu(x, bn(att.f_pixel[0])), bn(att.f_pixel[1]))
        w = ref.softmax(phi.reshape(2, -1, KEY) @ att.region_keys.kernel.numpy()[0, 0], axis=-1)
    value = ref.conv_bn_relu(f, bn(att.f_down))[:, :, 0, :]
    want = ref.conv_bn_relu((w @ value).reshape(2, 3, 5, KEY), bn(att.f_up))
    got = att(pixels, regions, seg, training=False).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_ground_truth_ocr_head_matches_numpy():
    """ours*: f_k = class means of the stem's output, w_ik = [l_i = k]; ignored pixels get rho(0)."""
    rng = np.random.default_rng(4)
    head = AblationOCRHead(K, regions="ground_truth", relation="ground_truth", **TINY)
    x = rng.normal(size=(2, 5, 6, C)).astype(np.float32)
    labels = rng.integers(0, K, size=(2, 10, 12))  # twice the feature size: nearest picks even pixels
    labels[1, 2, 4] = IGNORE_LABEL
    head(x, labels=labels)
    randomize(head)
    got = head(x, labels=labels, training=False)["logits"].numpy()

    small = labels[:, ::2, ::2]
    feats = ref.conv_bn_relu(x.astype(np.float64), bn(head.conv3x3_ocr), pad=1)
    f = class_means(feats, small, K)[:, :, None, :]
    value = ref.conv_bn_relu(f, bn(head.attention.f_down))[:, :, 0, :]
    onehot = (small[..., None] == np.arange(K)).astype(np.float64)  # ignore -> all zeros
    context = ref.conv_bn_relu(np.einsum("bhwk,bkc->bhwc", onehot, value), bn(head.attention.f_up))
    fused = ref.conv_bn_relu(np.concatenate([context, feats], axis=-1), bn(head.fuse))
    want = fused @ head.cls_head.kernel.numpy()[0, 0] + head.cls_head.bias.numpy()
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)

    with pytest.raises(ValueError, match="pass labels"):
        head(x)


def test_unsupervised_regions_get_no_gradient_from_the_aux_loss():
    head = AblationOCRHead(K, regions="unsupervised", **TINY)
    x, a = tf.random.normal((1, 5, 5, C)), tf.random.normal((1, 5, 5, C_AUX))
    head(x, a)
    with tf.GradientTape(persistent=True) as tape:
        out = head(x, a, training=True)
        aux_loss, main_loss = tf.reduce_sum(out["aux_logits"] ** 2), tf.reduce_sum(out["logits"] ** 2)
    region_vars = head.region_head.trainable_weights
    assert all(g is None for g in tape.gradient(aux_loss, region_vars))
    assert all(g is not None and np.any(g.numpy() != 0) for g in tape.gradient(main_loss, region_vars))
    # Supervised (ours): the aux loss trains the very branch that forms the regions.
    assert head.region_head is not head.aux_head


def test_label_ensemble_and_refinement():
    rng = np.random.default_rng(5)
    x = rng.normal(size=(1, 5, 7, C)).astype(np.float32)
    a = rng.normal(size=(1, 5, 7, C_AUX)).astype(np.float32)
    ens = LabelEnsembleHead(K, coarse_weight=0.3, mid_channels=MID, aux_channels=AUX)
    out = ens(x, a, training=False)
    fine = ens.context_logits(x, training=False)
    want = 0.3 * out["aux_logits"].numpy() + 0.7 * fine.numpy()
    np.testing.assert_allclose(out["logits"].numpy(), want, rtol=1e-5, atol=1e-6)

    refine = LabelRefinementHead(K, mid_channels=MID, aux_channels=AUX)
    out = refine(x, a, training=False)
    assert refine.pre.conv.kernel.shape == (3, 3, C + K, MID)  # features + coarse map
    coarse = tf.nn.softmax(out["aux_logits"], axis=-1)
    want = refine.context_logits(tf.concat([x, coarse], axis=-1), training=False)
    np.testing.assert_allclose(out["logits"].numpy(), want.numpy(), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="coarse_weight"):
        LabelEnsembleHead(K, coarse_weight=1.5)


@pytest.mark.parametrize("name", ["ocr_ground_truth", "ocr_da_relation", "label_ensemble"])
def test_keras_round_trip(name, tmp_path):
    kwargs = TINY if name.startswith("ocr") else {"mid_channels": MID, "aux_channels": AUX}
    head = build_ablation_head(name, K, **kwargs)
    features, aux = keras.Input((None, None, C)), keras.Input((None, None, C_AUX))
    inputs = [features, aux]
    if name == "ocr_ground_truth":
        labels = keras.Input((None, None), dtype="int32")
        inputs.append(labels)
        outputs = head(features, aux, labels=labels)
    else:
        outputs = head(features, aux)
    model = keras.Model(inputs, outputs)
    randomize(model)
    rng = np.random.default_rng(6)
    data = [rng.normal(size=(1, 5, 7, C)).astype(np.float32), rng.normal(size=(1, 5, 7, C_AUX)).astype(np.float32)]
    if name == "ocr_ground_truth":
        data.append(rng.integers(0, K, size=(1, 5, 7)).astype(np.int32))
    path = str(tmp_path / f"{name}.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    before, after = model(data, training=False), loaded(data, training=False)
    for key in ("logits", "aux_logits"):
        np.testing.assert_array_equal(before[key].numpy(), after[key].numpy())


def test_unknown_names_are_errors():
    with pytest.raises(ValueError, match="relation must be one of"):
        AblationOCRHead(K, relation="acfnet")
    with pytest.raises(ValueError, match="regions must be one of"):
        AblationOCRHead(K, regions="gt")
    with pytest.raises(ValueError, match="Unknown ablation head 'ocr_star'"):
        build_ablation_head("ocr_star", K)
    table1_and_figure1 = {"ocr_unsupervised_regions", "ocr_da_relation", "ocr_acf_relation", "ocr_ground_truth"}
    assert set(ABLATION_HEADS) >= table1_and_figure1
