"""Image normalisation shared by training, evaluation, prediction and export.

The references feed RGB / 255 normalised with the ImageNet mean and std (../shared/ANCHORS.md);
one definition here keeps the training pipeline and the exported models in agreement.
"""

import tensorflow as tf

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
IGNORE_LABEL = 255


def normalize_image(image):
    """uint8 (or 0-255 float) RGB image(s), any leading shape, channels last -> float32 normalised."""
    x = tf.cast(image, tf.float32) / 255.0
    return (x - tf.constant(IMAGENET_MEAN, tf.float32)) / tf.constant(IMAGENET_STD, tf.float32)
