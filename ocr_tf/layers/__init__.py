"""Keras layers of ocr_tf: the paper's OCR steps and shared building blocks."""

from ocr_tf.layers.common import ConvBN, ResizeTo, resize_bilinear
from ocr_tf.layers.ocr import ObjectAttention, OCRHead, SpatialGather, SpatialOCR
from ocr_tf.layers.mscale import MscaleOCRHead, ScaleAttentionHead  # noqa: E402 (registers them)

__all__ = [
    "ConvBN",
    "ResizeTo",
    "resize_bilinear",
    "SpatialGather",
    "ObjectAttention",
    "SpatialOCR",
    "OCRHead",
    "MscaleOCRHead",
    "ScaleAttentionHead",
]
