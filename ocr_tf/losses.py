"""The training loss of the OCR paper, computed as the official HRNet-OCR code does ([HR]).

    loss = CE(final logits) + aux_weight * CE(soft object region logits),  aux_weight = 0.4

Both logits come out of the network at feature resolution (1/4 or 1/8 of the input); they are
resized bilinearly (align_corners=True) to the label size before the loss, pixels labelled
`ignore_label` (255) do not count, and the optional class weights follow PyTorch's
`nn.CrossEntropyLoss(weight=...)`: a weighted mean, sum(w_y * ce) / sum(w_y).

OHEM ([HR] `OhemCrossEntropy`, on the final logits only): among the valid pixels, keep those
whose softmax probability of the true class is below max(threshold, the `min_kept`-th smallest
such probability), and average their (class-weighted) losses.

Losses are means over the pixels of the local (per-replica) batch, as the reference computes
them per GPU; the caller divides by the number of replicas before gradients are summed
(`keras.Model` does this via `scale_loss_for_distribution`).

Written in `keras.ops`: the same code runs on the TensorFlow, JAX and PyTorch backends.
"""

from keras import ops

from ocr_tf.layers.common import resize_bilinear
from ocr_tf.preprocessing import IGNORE_LABEL


def resize_to_labels(logits, labels, align_corners=True):
    """Logits (B, h, w, K) -> float32 (B, H, W, K) at the labels' (B, H, W) size."""
    # At equal sizes the align_corners=True resize is the identity, so no special case is needed.
    return resize_bilinear(ops.cast(logits, "float32"), ops.shape(labels)[1:3], align_corners)


def _pixel_losses(labels, logits, ignore_label, class_weights):
    """Per-pixel CE (flattened), the valid mask, the per-pixel weights and the true-class logits'
    flat indices. Logits must already be at label size."""
    logits = ops.reshape(logits, (-1, ops.shape(logits)[-1]))
    labels = ops.reshape(ops.cast(labels, "int32"), (-1,))
    valid = ops.not_equal(labels, ignore_label)
    safe = ops.where(valid, labels, 0)
    ce = ops.sparse_categorical_crossentropy(safe, logits, from_logits=True)
    if class_weights is None:
        weights = ops.ones_like(ce)
    else:
        weights = ops.take(ops.convert_to_tensor(class_weights, "float32"), safe)
    weights = weights * ops.cast(valid, "float32")
    return ce, valid, weights, safe, logits


def cross_entropy(labels, logits, ignore_label=IGNORE_LABEL, class_weights=None, align_corners=True):
    """Mean CE over valid pixels (weighted mean with class weights); 0 when no pixel is valid."""
    logits = resize_to_labels(logits, labels, align_corners)
    ce, _, weights, _, _ = _pixel_losses(labels, logits, ignore_label, class_weights)
    return ops.divide_no_nan(ops.sum(ce * weights), ops.sum(weights))


def ohem_cross_entropy(
    labels,
    logits,
    ignore_label=IGNORE_LABEL,
    threshold=0.7,
    min_kept=100000,
    class_weights=None,
    align_corners=True,
):
    """OHEM CE as [HR]: mean of the (weighted) losses of the valid pixels whose true-class
    probability is below max(threshold, the min_kept-th smallest true-class probability,
    0-based index min(min_kept, n_valid - 1)). 0 when nothing is kept."""
    logits = resize_to_labels(logits, labels, align_corners)
    ce, valid, weights, safe, flat_logits = _pixel_losses(labels, logits, ignore_label, class_weights)
    prob = ops.take_along_axis(ops.softmax(flat_logits, axis=-1), safe[:, None], axis=1)[:, 0]
    num_valid = ops.sum(ops.cast(valid, "int32"))
    # Invalid pixels sort last (probabilities are <= 1), so index k < num_valid picks a valid one.
    ranked = ops.sort(ops.where(valid, prob, 2.0))
    k = ops.maximum(ops.minimum(int(min_kept), num_valid - 1), 0)
    cut = ops.maximum(ops.take(ranked, k), float(threshold))
    keep = ops.logical_and(valid, prob < cut)
    # A masked sum rather than a boolean mask: static shapes, so the loss also compiles under
    # XLA (TF's jit_compile, JAX).
    kept_sum = ops.sum(ops.where(keep, ce * weights, 0.0))
    return ops.divide_no_nan(kept_sum, ops.sum(ops.cast(keep, "float32")))


class SegmentationLoss:
    """CE(final) (or OHEM CE) + aux_weight * CE(aux), the OCR training objective.

    `__call__(labels, outputs)` takes int labels (B, H, W) and the model's output dict
    {"logits", "aux_logits"} and returns {"loss", "main_loss", "aux_loss"} (float32 scalars,
    means over the local batch's pixels).
    """

    def __init__(
        self,
        num_classes,
        ignore_label=IGNORE_LABEL,
        aux_weight=0.4,
        class_weights=None,
        ohem=False,
        ohem_threshold=0.9,
        ohem_min_kept=131072,
        align_corners=True,
    ):
        if class_weights is not None and len(class_weights) != num_classes:
            raise ValueError(f"class_weights has {len(class_weights)} entries for {num_classes} classes.")
        self.num_classes = int(num_classes)
        self.ignore_label = int(ignore_label)
        self.aux_weight = float(aux_weight)
        self.class_weights = None if class_weights is None else [float(w) for w in class_weights]
        self.ohem = bool(ohem)
        self.ohem_threshold = float(ohem_threshold)
        self.ohem_min_kept = int(ohem_min_kept)
        self.align_corners = bool(align_corners)

    def main_loss(self, labels, logits):
        if self.ohem:
            return ohem_cross_entropy(
                labels,
                logits,
                self.ignore_label,
                self.ohem_threshold,
                self.ohem_min_kept,
                self.class_weights,
                self.align_corners,
            )
        return cross_entropy(labels, logits, self.ignore_label, self.class_weights, self.align_corners)

    def __call__(self, labels, outputs):
        main = self.main_loss(labels, outputs["logits"])
        total = main
        aux = ops.zeros((), "float32")
        if self.aux_weight and outputs.get("aux_logits") is not None:
            aux = cross_entropy(
                labels, outputs["aux_logits"], self.ignore_label, self.class_weights, self.align_corners
            )
            total = main + self.aux_weight * aux
        return {"loss": total, "main_loss": main, "aux_loss": aux}
