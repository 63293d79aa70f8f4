"""The training loss of hierarchical multi-scale attention, as NVIDIA's `two_scale_forward` with its
Cityscapes recipe computes it (`rmi_loss: true`, `supervised_mscale_loss_wt: 0.05`; [NV] in
../shared/ANCHORS.md):

  loss = 0.4 * BCE(merged aux) + [0.5 * BCE + 0.5 * RMI](merged logits)
         + 0.05 * BCE(up(logits at scale 0.5)) + 0.05 * BCE(logits at scale 1.0)

on the outputs of `ocr_tf.layers.mscale.two_scale_outputs` (all at the input size).

* BCE: sigmoid binary cross-entropy of every class logit against the one-hot label, summed over
  the valid pixels (label < K; 255 is ignored) and classes, divided by (valid pixels + 1).
* RMI (Zhao et al., "Region Mutual Information Loss for Semantic Segmentation"): on sigmoid
  probabilities (times the valid mask, + 1e-6) and the masked one-hot labels, both average-pooled
  4x4 / stride 4 / zero padding 2 (padding counted); every 3x3 neighbourhood is a 9-vector; per
  image and class, with centred vectors, Var = C_yy - C_yp (C_pp + 5e-4 I)^-1 C_yp^T and the loss is
  0.5 * log det(Var + 5e-4 I) (via Cholesky; + 1e-8 on the diagonal before the log), averaged over
  the batch, divided by 9 and summed over the classes. In float64, as the reference.
Written in keras.ops (every backend); no library has RMI.
"""

from keras import ops

from ocr_tf.layers.common import resize_bilinear
from ocr_tf.preprocessing import IGNORE_LABEL

_CLIP_MIN = 1e-6
_POS_ALPHA = 5e-4


def _valid_onehot(labels, num_classes):
    """(mask (B, H, W, 1) float32, one-hot (B, H, W, K) float32 zeroed where invalid)."""
    labels = ops.cast(labels, "int32")
    valid = ops.logical_and(labels >= 0, labels < num_classes)
    mask = ops.cast(valid, "float32")[..., None]
    onehot = ops.one_hot(ops.where(valid, labels, 0), num_classes, dtype="float32") * mask
    return mask, onehot


def _to_label_size(logits, labels):
    """Logits at the labels' size (half-pixel bilinear, as NVIDIA's align_corners=False)."""
    logits = ops.cast(logits, "float32")
    got, want = tuple(logits.shape[1:3]), tuple(labels.shape[1:3])
    if None in got + want:  # sizes known only at run time: keras.ops.image.resize needs ints
        return resize_bilinear(logits, ops.shape(labels)[1:3], align_corners=False)
    if got != want:
        logits = ops.image.resize(logits, want, interpolation="bilinear", antialias=False)
    return logits


def binary_cross_entropy(labels, logits, num_classes):
    """NVIDIA's BCE: sum over valid pixels and classes / (valid pixels + 1)."""
    logits = _to_label_size(logits, labels)
    mask, onehot = _valid_onehot(labels, num_classes)
    # Stable sigmoid cross-entropy with logits: max(z, 0) - z * y + log(1 + exp(-|z|)).
    per = ops.maximum(logits, 0.0) - logits * onehot + ops.log1p(ops.exp(-ops.abs(logits)))
    return ops.sum(per * mask) / (ops.sum(mask) + 1.0)


def rmi_lower_bound(onehot, probs, radius=3, pool=4):
    """RMI term of `onehot` and `probs` (B, H, W, K) float32 (see the module docstring)."""
    pad = [[0, 0], [pool // 2, pool // 2], [pool // 2, pool // 2], [0, 0]]
    onehot = ops.average_pool(ops.pad(onehot, pad), pool, pool, padding="valid")
    probs = ops.average_pool(ops.pad(probs, pad), pool, pool, padding="valid")
    shape = ops.shape(onehot)  # Python ints, or tensors when the size is known only at run time
    new_h, new_w = shape[1] - (radius - 1), shape[2] - (radius - 1)
    d = radius * radius

    def vectors(x):  # (B, H, W, K) -> (B, K, d, N) in float64
        parts = [x[:, y : y + new_h, xx : xx + new_w, :] for y in range(radius) for xx in range(radius)]
        v = ops.stack(parts, axis=1)  # (B, d, h', w', K)
        v = ops.reshape(v, (shape[0], d, -1, shape[3]))
        v = ops.cast(ops.transpose(v, (0, 3, 1, 2)), "float64")
        return v - ops.mean(v, axis=3, keepdims=True)

    la, pr = vectors(onehot), vectors(probs)
    eye = ops.eye(d, dtype="float64")[None, None] * _POS_ALPHA

    def cov(a, b):
        return ops.matmul(a, ops.transpose(b, (0, 1, 3, 2)))

    la_pr = cov(la, pr)
    var = cov(la, la) - ops.matmul(ops.matmul(la_pr, ops.linalg.inv(cov(pr, pr) + eye)), ops.transpose(la_pr, (0, 1, 3, 2)))
    chol = ops.linalg.cholesky(var + eye)
    diag = ops.diagonal(chol, axis1=-2, axis2=-1)
    rmi = ops.sum(ops.log(diag + 1e-8), axis=-1)  # 0.5 * log det = sum log diag(chol)
    per_class = ops.cast(ops.mean(rmi, axis=0), "float32") / float(d)
    return ops.sum(per_class)


def rmi_loss(labels, logits, num_classes, weight_lambda=0.5):
    """NVIDIA's `RMILoss` with RMI on: lambda * BCE + (1 - lambda) * RMI."""
    logits = _to_label_size(logits, labels)
    mask, onehot = _valid_onehot(labels, num_classes)
    bce = binary_cross_entropy(labels, logits, num_classes)
    probs = ops.sigmoid(logits) * mask + _CLIP_MIN
    return weight_lambda * bce + (1.0 - weight_lambda) * rmi_lower_bound(onehot, probs)


class MscaleLoss:
    """The two-scale objective (module docstring). `__call__(labels, outputs)` takes int labels
    (B, H, W) and `two_scale_outputs` {"logits", "aux_logits", "logits_lo", "logits_hi"} and
    returns {"loss", "main_loss", "aux_loss"} (float32 scalars; main_loss is the merged BCE+RMI).

    Args:
        num_classes: K (labels >= K, e.g. 255, are ignored).
        aux_weight: weight of BCE on the merged aux logits (NVIDIA's OCR_ALPHA 0.4).
        scale_weight: weight of BCE on each scale's own logits (SUPERVISED_MSCALE_WT 0.05).
        rmi: RMI on the merged logits (the Cityscapes recipe); False gives BCE alone.
    """

    def __init__(self, num_classes, aux_weight=0.4, scale_weight=0.05, rmi=True, ignore_label=IGNORE_LABEL):
        if ignore_label < num_classes:
            raise ValueError(f"ignore_label {ignore_label} must be >= num_classes {num_classes} (NVIDIA's BCE ignores label >= K).")
        self.num_classes = int(num_classes)
        self.aux_weight = float(aux_weight)
        self.scale_weight = float(scale_weight)
        self.rmi = bool(rmi)

    def __call__(self, labels, outputs):
        k = self.num_classes
        if self.rmi:
            main = rmi_loss(labels, outputs["logits"], k)
        else:
            main = binary_cross_entropy(labels, outputs["logits"], k)
        aux = binary_cross_entropy(labels, outputs["aux_logits"], k)
        total = main + self.aux_weight * aux
        if self.scale_weight:
            total = total + self.scale_weight * (
                binary_cross_entropy(labels, outputs["logits_lo"], k)
                + binary_cross_entropy(labels, outputs["logits_hi"], k)
            )
        return {"loss": total, "main_loss": main, "aux_loss": aux}
