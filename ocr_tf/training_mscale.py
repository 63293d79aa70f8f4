"""Two-scale training of a multi-scale attention network (NVIDIA's `two_scale_forward`), plugged
into the ordinary `SegmentationTrainer`: the trainer sees `TwoScaleTraining(network)`, whose
outputs are the merged {"logits", "aux_logits"} at the input size (so mIoU and the loss trackers
work unchanged) plus the per-scale logits the loss supervises; the bare network is what gets
checkpointed and exported.
"""

import keras

from ocr_tf.layers.mscale import two_scale_outputs
from ocr_tf.losses_mscale import MscaleLoss


@keras.saving.register_keras_serializable(package="ocr_tf")
class TwoScaleTraining(keras.Model):
    """`call(images)` -> `two_scale_outputs(network, images, lo_scale)` (all at the input size).

    Args:
        network: a `build_mscale_ocr` network (its variables are this model's).
        lo_scale: the low training scale (NVIDIA's MSCALE_LO_SCALE, 0.5).
    """

    def __init__(self, network, lo_scale=0.5, **kwargs):
        super().__init__(**kwargs)
        if not 0.0 < float(lo_scale) < 1.0:
            raise ValueError(f"lo_scale must be in (0, 1), got {lo_scale}.")
        self.network = network
        self.lo_scale = float(lo_scale)

    def call(self, images, training=None):
        return two_scale_outputs(self.network, images, self.lo_scale, training=bool(training))


def mscale_training_parts(network, num_classes, loss_cfg, ignore_label=255):
    """(model for the trainer, loss) for a multi-scale network, from the config's `loss` section.

    Refuses what NVIDIA's recipe does not define for this loss (class weights, OHEM) instead of
    silently ignoring it.
    """
    if loss_cfg.class_weights is not None or loss_cfg.ohem:
        raise ValueError(
            "loss.class_weights / loss.ohem are not used by the multi-scale loss (NVIDIA's BCE + RMI); "
            "remove them from the config."
        )
    loss = MscaleLoss(
        num_classes, aux_weight=loss_cfg.aux_weight, scale_weight=loss_cfg.mscale_scale_weight,
        rmi=loss_cfg.mscale_rmi, ignore_label=ignore_label,
    )
    return TwoScaleTraining(network, loss_cfg.mscale_lo_scale, name="two_scale"), loss
