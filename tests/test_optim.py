"""Poly LR schedule and PyTorch-semantics SGD (L2 weight decay in the gradient, momentum buffer
of raw gradients, head LR multiplier) against torch.optim.SGD with two parameter groups."""

import keras
import numpy as np
import pytest
import torch

from ocr_tf.config import TrainConfig
from ocr_tf.optim import SGD, PolyLR, build_optimizer


def test_poly_lr_values():
    s = PolyLR(0.01, 100, power=0.9)
    for step in (0, 1, 37, 99, 100, 150):
        ref = 0.01 * (1 - min(step, 100) / 100) ** 0.9
        np.testing.assert_allclose(float(s(step)), ref, rtol=1e-6, atol=1e-12)


def test_poly_lr_warmup_is_linear_then_poly():
    s = PolyLR(0.1, 100, power=0.9, warmup_steps=10, warmup_factor=0.1)
    for step in (0, 5, 10, 50):
        alpha = min(step / 10, 1.0)
        ref = 0.1 * (1 - step / 100) ** 0.9 * (0.1 + 0.9 * alpha)
        np.testing.assert_allclose(float(s(step)), ref, rtol=1e-6)
    assert float(s(0)) == pytest.approx(0.01)


def test_poly_lr_config_round_trip_and_bad_args():
    s = PolyLR(0.02, 150000, warmup_steps=5)
    t = PolyLR.from_config(s.get_config())
    assert float(t(1234)) == float(s(1234))
    with pytest.raises(ValueError, match="warmup_steps"):
        PolyLR(0.01, 10, warmup_steps=10)


def _torch_reference(w0, grads, lrs, momentum, wd, head_mult, head_mask):
    """torch.optim.SGD with backbone / head parameter groups (the [HR] NONBACKBONE_MULT)."""
    params = [torch.nn.Parameter(torch.tensor(w, dtype=torch.float64)) for w in w0]
    groups = [
        {"params": [p for p, h in zip(params, head_mask) if not h], "lr": lrs[0]},
        {"params": [p for p, h in zip(params, head_mask) if h], "lr": lrs[0] * head_mult},
    ]
    opt = torch.optim.SGD(groups, lr=lrs[0], momentum=momentum, weight_decay=wd)
    for step, g in enumerate(grads):
        opt.param_groups[0]["lr"] = lrs[step]
        opt.param_groups[1]["lr"] = lrs[step] * head_mult
        for p, gi in zip(params, g):
            p.grad = torch.tensor(gi, dtype=torch.float64)
        opt.step()
    return [p.detach().numpy() for p in params]


def test_sgd_matches_torch_sgd_with_weight_decay_poly_lr_and_head_multiplier():
    rng = np.random.default_rng(0)
    shapes = {"backbone/conv/kernel": (3, 3, 2, 4), "head/aux_cls/kernel": (1, 1, 4, 3), "head/cls_head/bias": (3,)}
    names = list(shapes)
    w0 = [rng.normal(size=s) for s in shapes.values()]
    steps = 6
    grads = [[rng.normal(size=s) for s in shapes.values()] for _ in range(steps)]
    schedule = PolyLR(0.05, 10, power=0.9)
    lrs = [float(schedule(t)) for t in range(steps)]

    variables = [keras.Variable(w.astype(np.float32), name=n.split("/")[-1]) for n, w in zip(names, w0)]
    opt = SGD(schedule, momentum=0.9, weight_decay=5e-4, head_lr_multiplier=10.0)
    # Keras variable paths come from the layer scope; give ours the names a model would have.
    head_mask = [n.startswith("head/") for n in names]
    opt.is_head_variable = lambda v: head_mask[[id(x) for x in variables].index(id(v))]
    for g in grads:
        opt.apply_gradients(zip([keras.ops.convert_to_tensor(x.astype(np.float32)) for x in g], variables))
    ref = _torch_reference(w0, grads, lrs, 0.9, 5e-4, 10.0, head_mask)
    for v, r, n in zip(variables, ref, names):
        np.testing.assert_allclose(v.numpy(), r, rtol=1e-5, atol=1e-6, err_msg=n)
    assert int(opt.iterations.numpy()) == steps

    # Keras' own SGD(weight_decay=...) is decoupled decay + lr-scaled momentum: not the reference.
    kv = [keras.Variable(w.astype(np.float32)) for w in w0]
    keras_opt = keras.optimizers.SGD(schedule, momentum=0.9, weight_decay=5e-4)
    for g in grads:
        keras_opt.apply_gradients(zip([keras.ops.convert_to_tensor(x.astype(np.float32)) for x in g], kv))
    ref1 = _torch_reference(w0, grads, lrs, 0.9, 5e-4, 1.0, [False] * 3)
    assert max(np.abs(v.numpy() - r).max() for v, r in zip(kv, ref1)) > 1e-4


def test_head_variables_selected_by_path_in_a_model():
    from ocr_tf.layers import ConvBN, OCRHead

    x = keras.Input((None, None, 3))
    f = ConvBN(4, 3, strides=2, name="stem")(x)
    out = OCRHead(3, mid_channels=4, key_channels=2, name="head")(f)
    model = keras.Model(x, out)
    opt = SGD(0.1, head_lr_multiplier=10.0)
    opt.build(model.trainable_variables)
    mults = dict(zip([v.path for v in model.trainable_variables], opt._lr_multipliers))
    assert mults["stem/conv/kernel"] == 1.0 and mults["stem/bn/gamma"] == 1.0
    assert mults["head/cls_head/kernel"] == 10.0
    assert mults["head/ocr_distri_head/object_context_block/f_pixel_0/conv/kernel"] == 10.0
    assert sum(m == 10.0 for m in mults.values()) == len(mults) - 3  # all but the stem's 3


@pytest.mark.parametrize("name", ["hrnet_tiny_ocr", "hrnet_tiny_fcn", "hrnet_tiny_ppm", "hrnet_tiny_aspp",
                                  "mobilenetv2_ocr"])
def test_head_multiplier_reaches_every_head_variable_of_every_head(name):
    """[HR]'s substrings cls/aux/ocr reached 8 of 23 PPM, 8 of 26 ASPP and 2 of 6 FCN variables."""
    from ocr_tf.models import build_model

    kwargs = {"mid_channels": 8, "key_channels": 4} if name.endswith("_ocr") else {}
    model = build_model(name, 3, **kwargs)
    opt = SGD(0.1, head_lr_multiplier=10.0)
    opt.build(model.trainable_variables)
    head = {id(v) for v in model.get_layer("head").trainable_variables}
    assert head
    for v, mult in zip(model.trainable_variables, opt._lr_multipliers):
        assert mult == (10.0 if id(v) in head else 1.0), v.path


def test_build_optimizer_from_config_and_round_trip():
    cfg = TrainConfig(lr=0.02, iterations=1000, weight_decay=1e-4, head_lr_multiplier=10.0, warmup_steps=10)
    opt = build_optimizer(cfg)
    assert opt.l2_weight_decay == 1e-4 and opt.momentum == 0.9 and opt.head_lr_multiplier == 10.0
    assert opt.weight_decay is None  # Keras' decoupled decay must stay off
    again = SGD.from_config(opt.get_config())
    assert again.l2_weight_decay == 1e-4 and again.head_layers == ("head",)
    np.testing.assert_allclose(float(again.learning_rate), 0.02 * 0.1, rtol=1e-6)  # warmup start
