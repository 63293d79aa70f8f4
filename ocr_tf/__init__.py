"""ocr_tf: Object-Contextual Representations for semantic segmentation in Keras 3."""

__version__ = "0.1.0"


def __getattr__(name):
    # Lazy, so `import ocr_tf` stays light (no TensorFlow import until a model is wanted).
    if name == "build_model":
        from ocr_tf.models import build_model

        return build_model
    raise AttributeError(f"module 'ocr_tf' has no attribute {name!r}")
