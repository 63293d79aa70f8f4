"""The cases the backend harness runs everywhere: tiny models, one training step, shared by the
TensorFlow parent (tests/backend/test_backends.py) and the per-backend child
(tests/backend/backend_checks.py). Plain Keras, no backend-specific code."""

import numpy as np

import keras

K, C, MID, KEY = 4, 12, 8, 4  # tiny widths: the harness runs on 2 cores
H, W = 9, 11  # features; labels are 4x larger, as at the network's stride 4
CONTEXT_WIDTHS = {
    "ppm": dict(mid_channels=MID, branch_channels=3),
    "aspp": dict(mid_channels=MID, rates=(1, 2, 3)),
    "self_attention": dict(mid_channels=MID, key_channels=KEY),
    "double_attention": dict(mid_channels=MID, key_channels=KEY, num_regions=3),
    "danet": dict(mid_channels=MID, key_channels=KEY),
    "cc_attention": dict(mid_channels=MID, key_channels=KEY),
}
ABLATIONS = ("ocr_unsupervised_regions", "ocr_da_relation", "ocr_acf_relation", "label_refinement", "label_ensemble")
HEAD_NAMES = ("ocr_hrnet", "ocr_openseg", "ocr_shared_stem", "ocr_scale2", *CONTEXT_WIDTHS, *ABLATIONS)
# Whole registered models for the backbones HRNet's fixture does not cover, at their smallest:
# the registry has no ResNet width override, so ResNet-50 (dilated, output stride 8, keras stem
# with CaffeInput) at a 32x32 image; MobileNetV2 at alpha 0.35 with the phone OCR head and FCN;
# the multi-scale attention model on the tiny HRNet.
IMAGE = (32, 32)
BACKBONE_MODELS = {
    "resnet50_ocr": dict(mid_channels=MID, key_channels=KEY),
    "mobilenetv2_ocr": dict(alpha=0.35, mid_channels=MID, key_channels=KEY),
    "mobilenetv2_fcn": dict(alpha=0.35, mid_channels=MID),
    # NVIDIA's hierarchical multi-scale attention on the tiny HRNet (one scale per call: the
    # network returns the logits and the attention that the merge across scales uses)
    "hrnet_tiny_mscale_ocr": dict(mid_channels=MID, key_channels=KEY, attn_channels=KEY),
}


def head_models():
    """name -> a keras.Model (features (B, h, w, C) [, stage-3 features]) -> {"logits", "aux_logits"}
    for every head family: OCR (both styles and the phone model's shared stem), the compared
    context heads and the ablations."""
    from ocr_tf.layers import OCRHead
    from ocr_tf.layers.ablations import build_ablation_head
    from ocr_tf.layers.context import CONTEXT_HEADS

    def wrap(head, aux=False):
        feats = keras.Input((None, None, C))
        inputs = [feats, keras.Input((None, None, C))] if aux else feats
        out = head(feats, inputs[1]) if aux else head(feats)
        return keras.Model(inputs, out)

    models = {
        "ocr_hrnet": wrap(OCRHead(K, mid_channels=MID, key_channels=KEY, dropout=0.0)),
        "ocr_openseg": wrap(OCRHead(K, mid_channels=MID, key_channels=KEY, style="openseg", aux_channels=6, dropout=0.0), aux=True),
        "ocr_shared_stem": wrap(OCRHead(K, mid_channels=MID, key_channels=KEY, shared_stem=True, dropout=0.0)),
        "ocr_scale2": wrap(OCRHead(K, mid_channels=MID, key_channels=KEY, scale=2, dropout=0.0)),
    }
    for name, widths in CONTEXT_WIDTHS.items():
        models[name] = wrap(CONTEXT_HEADS[name](K, aux_channels=6, dropout=0.0, aux_dropout=0.0, **widths))
    for name in ABLATIONS:
        models[name] = wrap(
            build_ablation_head(name, K, mid_channels=MID, aux_channels=6, dropout=0.0, aux_dropout=0.0)
            if name.startswith("label")
            else build_ablation_head(name, K, mid_channels=MID, key_channels=KEY, aux_channels=6, dropout=0.0),
            aux=True,
        )
    return models


def backbone_models():
    """name -> the registry's model (`build_model`) with random BatchNorm statistics to come."""
    from ocr_tf.models import build_model

    return {name: build_model(name, K, dropout=0.0, **kw) for name, kw in BACKBONE_MODELS.items()}


def randomize(model, seed=0):
    """Random weights everywhere, BatchNorm statistics and attention gammas included."""
    rng = np.random.default_rng(seed)
    for w in model.weights:
        shape, name = tuple(w.shape), w.path
        if name.endswith(("moving_variance", "gamma")):
            value = rng.uniform(0.5, 1.5, shape)
        elif name.endswith("kernel"):
            value = rng.normal(0, 1.5 / np.sqrt(np.prod(shape[:-1])), shape)
        else:
            value = rng.normal(0, 0.2, shape)
        w.assign(value.astype(w.dtype))


def inputs_for(model, seed=1):
    rng = np.random.default_rng(seed)
    if model.inputs[0].shape[-1] == 3:  # an image model (backbone_models)
        return rng.normal(size=(1, *IMAGE, 3)).astype(np.float32)
    shapes = [(2, H, W, C)] * len(model.inputs)
    xs = [rng.normal(size=s).astype(np.float32) for s in shapes]
    return xs if len(xs) > 1 else xs[0]


def train_batch(seed=2):
    """(features, labels): labels at 4x the features with ignored (255) pixels."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(2, H, W, C)).astype(np.float32)
    y = rng.integers(0, K, (2, 4 * H, 4 * W)).astype(np.int32)
    y[rng.random(y.shape) < 0.1] = 255
    return x, y


def trainer_for(network):
    """The project's training model (loss 1.0 CE + 0.4 aux CE, mIoU) with SGD + PolyLR."""
    from ocr_tf.losses import SegmentationLoss
    from ocr_tf.optim import SGD, PolyLR
    from ocr_tf.training_model import SegmentationTrainer

    trainer = SegmentationTrainer(network, SegmentationLoss(K), K)
    trainer.compile(
        optimizer=SGD(PolyLR(0.05, 10, warmup_steps=2), momentum=0.9, weight_decay=5e-4, head_lr_multiplier=2.0)
    )
    return trainer
