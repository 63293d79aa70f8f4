"""ocr_tf: Object-Contextual Representations for semantic segmentation in Keras 3.

    import ocr_tf
    seg = ocr_tf.Segmenter.from_preset("path/to/preset")  # or a name of ocr_tf.list_presets()
    labels = seg.predict(uint8_rgb_image)

Importing the package registers every serializable class with Keras, so
`keras.saving.load_model(...)` works after `import ocr_tf` alone. The commands
(`python -m ocr_tf.<verb>`) skip that at start-up so that `--help` answers without loading
TensorFlow; they import what they use.

Importing the package also asks TensorFlow for its caching CPU allocator (`ocr_tf.runtime`:
a W48 training step took 0.76x the time) unless TF_CPU_ALLOCATOR_USE_BFC is already set.
"""

import sys

from ocr_tf import runtime

runtime.use_bfc_cpu_allocator()

__version__ = "0.2.0"

_API = {
    "Segmenter": "ocr_tf.segmenter",
    "build_model": "ocr_tf.models",
    "list_models": "ocr_tf.models",
    "list_presets": "ocr_tf.presets",
    "load_segmenter": "ocr_tf.loading",
}


def register_all():
    """Import every module that registers Keras-serializable classes."""
    import importlib

    for module in ("ocr_tf.layers", "ocr_tf.layers.context", "ocr_tf.layers.ablations", "ocr_tf.models",
                   "ocr_tf.optim", "ocr_tf.metrics", "ocr_tf.segmenter"):
        importlib.import_module(module)


def __getattr__(name):
    if name in _API:
        import importlib

        return getattr(importlib.import_module(_API[name]), name)
    raise AttributeError(f"module 'ocr_tf' has no attribute {name!r}")


# `python -m ocr_tf.<verb>` imports this package while sys.argv[0] is still "-m" (documented
# for -m); the command then imports what it needs, so its --help needs no TensorFlow.
if sys.argv[:1] != ["-m"]:
    register_all()
