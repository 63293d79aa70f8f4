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
"""

import tensorflow as tf

from ocr_tf.layers.common import resize_bilinear
from ocr_tf.preprocessing import IGNORE_LABEL


def resize_to_labels(logits, labels, align_corners=True):
    """Logits (B, h, w, K) -> float32 (B, H, W, K) at the labels' (B, H, W) size."""
    # At equal sizes the align_corners=True resize is the identity, so no special case is needed.
    return resize_bilinear(tf.cast(logits, tf.float32), tf.shape(labels)[1:3], align_corners)


def _pixel_losses(labels, logits, ignore_label, class_weights):
    """Per-pixel CE (flattened), the valid mask, the per-pixel weights and the true-class logits'
    flat indices. Logits must already be at label size."""
    num_classes = tf.shape(logits)[-1]
    labels = tf.reshape(tf.cast(labels, tf.int32), [-1])
    logits = tf.reshape(logits, [-1, num_classes])
    valid = tf.not_equal(labels, ignore_label)
    safe = tf.where(valid, labels, 0)
    ce = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=safe, logits=logits)
    if class_weights is None:
        weights = tf.ones_like(ce)
    else:
        weights = tf.gather(tf.constant(class_weights, tf.float32), safe)
    weights = weights * tf.cast(valid, tf.float32)
    return ce, valid, weights, safe, logits


def cross_entropy(labels, logits, ignore_label=IGNORE_LABEL, class_weights=None, align_corners=True):
    """Mean CE over valid pixels (weighted mean with class weights); 0 when no pixel is valid."""
    logits = resize_to_labels(logits, labels, align_corners)
    ce, _, weights, _, _ = _pixel_losses(labels, logits, ignore_label, class_weights)
    return tf.math.divide_no_nan(tf.reduce_sum(ce * weights), tf.reduce_sum(weights))


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
    prob = tf.gather(tf.nn.softmax(flat_logits, axis=-1), safe, axis=1, batch_dims=1)
    num_valid = tf.reduce_sum(tf.cast(valid, tf.int32))
    # Invalid pixels sort last (probabilities are <= 1), so index k < num_valid picks a valid one.
    ranked = tf.sort(tf.where(valid, prob, 2.0))
    k = tf.maximum(tf.minimum(tf.cast(min_kept, tf.int32), num_valid - 1), 0)
    cut = tf.maximum(ranked[k], tf.cast(threshold, tf.float32))
    keep = tf.logical_and(valid, prob < cut)
    # A masked sum rather than boolean_mask: static shapes, so the loss also compiles under XLA.
    kept_sum = tf.reduce_sum(tf.where(keep, ce * weights, 0.0))
    return tf.math.divide_no_nan(kept_sum, tf.reduce_sum(tf.cast(keep, tf.float32)))


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
        aux = tf.zeros((), tf.float32)
        if self.aux_weight and outputs.get("aux_logits") is not None:
            aux = cross_entropy(
                labels, outputs["aux_logits"], self.ignore_label, self.class_weights, self.align_corners
            )
            total = main + self.aux_weight * aux
        return {"loss": total, "main_loss": main, "aux_loss": aux}
