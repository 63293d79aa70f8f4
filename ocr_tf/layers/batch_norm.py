"""BatchNormalization that runs TensorFlow's fused kernel where it can.

Keras 3's `BatchNormalization` computes batch statistics with `ops.moments` and normalises with
elementwise ops, so on TensorFlow a training step makes several passes over every feature map
forwards and backwards. TensorFlow has one op for it (`FusedBatchNormV3`, with its own gradient
kernel); Keras 2 used it, Keras 3 does not. This layer is `keras.layers.BatchNormalization` (same weights, names, config and
checkpoints) whose `call` uses that op when training on the TensorFlow backend with 4-D
channels-last inputs; everything else (inference, JAX, PyTorch, synchronized BatchNorm, masks,
renorm, other ranks) is Keras' own code.

The moving variance moves with the biased batch variance, as Keras' code does (the fused op
returns the unbiased one; it is scaled back by (n - 1) / n), so that TensorFlow, JAX, PyTorch and
synchronized BatchNorm keep one set of statistics for the same batches. (PyTorch's `running_var`
moves with the unbiased one: see ANCHORS.md.)
"""

import keras

# Set to False (e.g. by a benchmark) to run Keras' own BatchNormalization code everywhere.
USE_FUSED = [True]


def _fused_applies(layer, inputs, mask, training):
    # Training only: in inference the fused op measured no faster (BENCHMARKS.md, issue 13), and
    # grappler would fuse it into the preceding conv in graphs but not eagerly, so a graph and an
    # eager call would round differently.
    if not USE_FUSED[0] or not (training and layer.trainable) or keras.backend.backend() != "tensorflow":
        return False
    if mask is not None or layer.synchronized or layer.renorm:
        return False
    rank = len(inputs.shape)
    return rank == 4 and layer.axis in (-1, 3) and layer.scale and layer.center


@keras.saving.register_keras_serializable(package="ocr_tf")
class FusedBatchNormalization(keras.layers.BatchNormalization):
    """`keras.layers.BatchNormalization` on TensorFlow's fused kernel (see the module docstring).

    Args: those of `keras.layers.BatchNormalization`.

    Example:
        >>> bn = FusedBatchNormalization(epsilon=1e-5, momentum=0.9)
        >>> y = bn(keras.ops.ones((2, 4, 4, 3)), training=True)
    """

    def call(self, inputs, training=None, mask=None):
        if not _fused_applies(self, inputs, mask, training):
            return super().call(inputs, training=training, mask=mask)
        import tensorflow as tf  # the branch above is taken on the TensorFlow backend only

        # The op takes float16/bfloat16 activations with float32 statistics and computes in float32.
        x = tf.convert_to_tensor(inputs)
        if x.dtype not in (tf.float16, tf.bfloat16, tf.float32):
            x = tf.cast(x, tf.float32)
        gamma = tf.cast(self.gamma, tf.float32)
        beta = tf.cast(self.beta, tf.float32)
        empty = tf.constant([], tf.float32)
        y, mean, variance = tf.raw_ops.FusedBatchNormV3(
            x=x, scale=gamma, offset=beta, mean=empty, variance=empty,
            epsilon=self.epsilon, is_training=True, data_format="NHWC",
        )[:3]
        n = tf.cast(tf.size(x) // tf.shape(x)[-1], tf.float32)  # values per channel
        variance = variance * tf.maximum(n - 1.0, 0.0) / n  # unbiased -> biased, as Keras
        m = self.momentum
        self.moving_mean.assign(self.moving_mean * m + tf.cast(mean, self.moving_mean.dtype) * (1.0 - m))
        self.moving_variance.assign(
            self.moving_variance * m + tf.cast(variance, self.moving_variance.dtype) * (1.0 - m)
        )
        return tf.cast(y, self.compute_dtype)
