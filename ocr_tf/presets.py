"""Presets: a Segmenter saved as a folder, and the official checkpoints by name.

A preset folder holds
  config.json        the Segmenter's Keras config (network architecture + classes, palette,
                     normalisation, align_corners, build arguments, provenance)
  model.weights.h5   the weights
  metadata.json      provenance and the versions that wrote it (ocr_tf, keras)
  labels.txt         one class name per line (line k = train id k)
  README.md          a model card
It is written into a temporary folder beside the target and renamed when complete.
"""

import json
import os
import shutil
import tempfile

from ocr_tf.errors import MissingFileError, UserError

CONFIG = "config.json"
WEIGHTS = "model.weights.h5"
METADATA = "metadata.json"
LABELS = "labels.txt"
CARD = "README.md"


def is_preset_dir(path):
    return os.path.isfile(os.path.join(path, CONFIG)) and os.path.isfile(os.path.join(path, WEIGHTS))


def model_card(segmenter):
    """A Markdown card: what the model is, where its weights come from, its classes."""
    p = segmenter.provenance
    lines = [f"# {segmenter.model_name or segmenter.network.name}", ""]
    lines.append(f"- classes: {segmenter.num_classes} ({segmenter.dataset or 'custom'})")
    if segmenter.model_overrides:
        lines.append(f"- build arguments: `{json.dumps(segmenter.model_overrides, sort_keys=True)}`")
    lines.append(f"- input: uint8 RGB, normalised with mean {segmenter.mean} and std {segmenter.std} of RGB/255")
    lines.append(f"- logits resized with align_corners={segmenter.align_corners}; ignore label {segmenter.ignore_label}")
    for key in sorted(p):
        lines.append(f"- {key.replace('_', ' ')}: {p[key]}")
    lines += ["", "| id | class | colour |", "|---|---|---|"]
    for k, (name, color) in enumerate(zip(segmenter.class_names, segmenter.palette)):
        lines.append(f"| {k} | {name} | {tuple(color)} |")
    lines += ["", "```python", "import ocr_tf", "seg = ocr_tf.Segmenter.from_preset(\"<this folder>\")",
              "labels = seg.predict(uint8_rgb_image)  # int32 (H, W)", "```", ""]
    return "\n".join(lines)


def write_preset(segmenter, preset_dir):
    """Write `segmenter` as a preset folder (atomically: a temporary folder renamed at the end).
    An existing preset folder is replaced; any other existing path is an error."""
    import keras

    import ocr_tf

    preset_dir = os.path.abspath(preset_dir)
    if os.path.exists(preset_dir) and not is_preset_dir(preset_dir):
        if not os.path.isdir(preset_dir) or os.listdir(preset_dir):
            raise UserError(f"{preset_dir} exists and is not a preset folder: choose a new folder.")
    parent = os.path.dirname(preset_dir)
    try:
        os.makedirs(parent, exist_ok=True)
    except (NotADirectoryError, FileExistsError):
        raise UserError(f"cannot create {preset_dir}: a parent path is a file.") from None
    tmp = tempfile.mkdtemp(prefix=f".tmp-{os.path.basename(preset_dir)}-", dir=parent)
    try:
        config = keras.saving.serialize_keras_object(segmenter)
        with open(os.path.join(tmp, CONFIG), "w", encoding="utf-8") as f:
            json.dump(config, f, indent=1)
        segmenter.save_weights(os.path.join(tmp, WEIGHTS))
        meta = {"ocr_tf_version": ocr_tf.__version__, "keras_version": keras.__version__,
                "provenance": segmenter.provenance}
        with open(os.path.join(tmp, METADATA), "w", encoding="utf-8") as f:
            json.dump(meta, f, indent=1)
        with open(os.path.join(tmp, LABELS), "w", encoding="utf-8") as f:
            f.write("\n".join(segmenter.class_names) + "\n")
        with open(os.path.join(tmp, CARD), "w", encoding="utf-8") as f:
            f.write(model_card(segmenter))
        if os.path.isdir(preset_dir):
            old = f"{tmp}-old"
            os.rename(preset_dir, old)
            os.rename(tmp, preset_dir)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, preset_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return preset_dir


def read_preset_dir(preset_dir):
    """The Segmenter saved in a preset folder."""
    import keras

    import ocr_tf

    ocr_tf.register_all()  # every serializable class (commands skip it at start-up)

    if not is_preset_dir(preset_dir):
        raise MissingFileError(f"{preset_dir} is not a preset folder (expected {CONFIG} and {WEIGHTS} in it).")
    with open(os.path.join(preset_dir, CONFIG), encoding="utf-8") as f:
        config = json.load(f)
    segmenter = keras.saving.deserialize_keras_object(config)
    weights = os.path.join(preset_dir, WEIGHTS)
    try:
        segmenter.load_weights(weights)
    except ValueError as e:
        raise UserError(f"{weights} does not fit the network of {preset_dir}/{CONFIG} ({str(e).splitlines()[0]}).") from None
    return segmenter


def load_preset(preset, **kwargs):
    """A Segmenter from a preset folder or a registered preset name."""
    if os.path.isdir(preset):
        return read_preset_dir(preset)
    raise MissingFileError(f"preset {preset!r} is not a preset folder.")
