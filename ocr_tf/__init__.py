"""ocr_tf: Object-Contextual Representations for semantic segmentation in Keras 3."""

__version__ = "0.1.0"
