"""One way to get a Segmenter from what a user has: a .keras file, a preset, a weights file.

    load_segmenter("runs/demo/checkpoints/best.keras")            # the whole truth, one file
    load_segmenter("presets/hrnet_w48_ocr_cityscapes")             # a preset folder
    load_segmenter("best.weights.h5", model="hrnet_tiny_ocr",      # weights only: the build
                   overrides={"mid_channels": 64}, dataset="demo")   # arguments must be given

`dataset` replaces the model's class names and palette (and says so); it must have the same
number of classes. A `.keras` file holding a bare network (written before the Segmenter
existed) needs `dataset` for its class names.
"""

import os

from ocr_tf.errors import MissingFileError, UserError


def dataset_info(name):
    """`DatasetInfo` of a dataset name or class file, with a UserError for an unknown name."""
    from ocr_tf.data.datasets import DATASETS, get_dataset_info

    if name not in DATASETS and not os.path.isfile(name):
        hint = " (a class file path does not exist)" if name.endswith((".txt", ".names")) else ""
        raise UserError(f"unknown dataset {name!r}{hint}; known: {', '.join(DATASETS)}, or a class file (one name per line).")
    try:
        return get_dataset_info(name)
    except ValueError as e:
        raise UserError(str(e)) from None


def segmenter_from_network(network, info, model_name=None, overrides=None, provenance=None):
    """Wrap a bare network as a Segmenter with a dataset's classes (checks the class count)."""
    from ocr_tf.segmenter import Segmenter

    k = int(network.output["logits"].shape[-1])
    if k != info.num_classes:
        raise UserError(f"the model has {k} classes but dataset {info.name!r} has {info.num_classes}.")
    overrides = dict(overrides or {})
    return Segmenter(
        network, info.class_names, palette=info.palette, align_corners=overrides.get("align_corners", True),
        ignore_label=info.ignore_label, dataset=info.name, model_name=model_name,
        model_overrides={k: v for k, v in overrides.items() if k != "weights"},
        flip_pairs=info.flip_pairs, provenance=provenance,
    )


def _run_config_near(weights):
    """The config.yaml of the training run that wrote `weights` (<run>/checkpoints/x), if any."""
    run_dir = os.path.dirname(os.path.dirname(os.path.abspath(weights)))
    path = os.path.join(run_dir, "config.yaml")
    return path if os.path.isfile(path) else None


def _load_weights(network, weights, model, overrides):
    try:
        network.load_weights(weights)
    except (ValueError, KeyError, OSError) as e:
        detail = str(e).strip().splitlines()[0][:200] if str(e).strip() else e.__class__.__name__
        hint = ""
        run_config = _run_config_near(weights)
        if run_config:
            import yaml

            with open(run_config) as f:
                model_cfg = (yaml.safe_load(f) or {}).get("model", {})
            hint = (f"; the run that wrote it ({run_config}) built {model_cfg.get('name')!r} with overrides "
                    f"{model_cfg.get('overrides') or {}}: pass --config {run_config}, or use that run's best.keras")
        raise UserError(
            f"weights file {weights} does not fit model {model!r} built with overrides {overrides or {}} "
            f"({detail}){hint}."
        ) from None


def load_segmenter(weights, *, model=None, overrides=None, dataset=None, num_classes=None, say=print):
    """A Segmenter from a .keras file, a preset folder or a weights file (see the module docstring).

    Args:
        weights: path of a `.keras` file, a preset folder, or a weights file (`.weights.h5`)
            for `model`; None builds `model` with random weights.
        model, overrides: registry name and `build_model` overrides (weights files only).
        dataset: a dataset name or class file whose class names and palette replace the model's.
        num_classes: class count when neither the file nor `dataset` gives one.
        say: where to report what was overridden (print by default).
    """

    import ocr_tf

    ocr_tf.register_all()  # every serializable class (commands skip it at start-up)
    from ocr_tf.presets import is_preset_dir, read_preset_dir
    from ocr_tf.segmenter import Segmenter

    info = dataset_info(dataset) if dataset else None
    overrides = dict(overrides or {})
    if weights is not None and not os.path.exists(weights):
        raise MissingFileError(f"weights {weights} not found (expected a .keras file, a preset folder or a .weights.h5 file).")
    if weights is not None and (os.path.isdir(weights) or str(weights).endswith(".keras")):
        if overrides or model:
            raise UserError(f"--model/--model-arg cannot change {weights}: it carries its own architecture.")
        if os.path.isdir(weights):
            if not is_preset_dir(weights):
                raise UserError(f"{weights} is a folder but not a preset (no config.json + model.weights.h5 in it).")
            loaded = read_preset_dir(weights)
        else:
            loaded = _load_keras_file(weights)
        if not isinstance(loaded, Segmenter):
            if info is None:
                raise UserError(
                    f"{weights} holds a bare network with no class names (saved before ocr_tf 0.2): "
                    "give --dataset (a dataset name or a class file)."
                )
            return segmenter_from_network(loaded, info, provenance={"source": os.path.abspath(weights)})
        if info is not None and (list(info.class_names) != loaded.class_names or info.name != loaded.dataset):
            if info.num_classes != loaded.num_classes:
                raise UserError(
                    f"--dataset {dataset} has {info.num_classes} classes but {weights} has "
                    f"{loaded.num_classes} ({loaded.dataset or 'custom'})."
                )
            say(f"using the class names and palette of --dataset {info.name} instead of the model's ({loaded.dataset or 'custom'})")
            loaded = loaded.with_classes(info.class_names, info.palette, info.name, info.flip_pairs)
        return loaded
    if weights is not None and not str(weights).endswith((".h5", ".hdf5")):
        raise UserError(f"{weights} is not a model file: expected a .keras file, a preset folder or a .weights.h5 file.")
    if model is None:
        raise UserError(f"{weights or 'no --weights'}: a weights file needs --model (the registered name it was trained as).")
    if info is None and num_classes is None:
        raise UserError("a weights file has no class names: give --dataset (a dataset name or a class file).")
    from ocr_tf.models import build_model

    k = info.num_classes if info else int(num_classes)
    try:
        network = build_model(model, k, **overrides)
    except ValueError as e:
        raise UserError(str(e)) from None
    if weights is not None:
        _load_weights(network, weights, model, overrides)
    provenance = {"source": os.path.abspath(weights)} if weights else {"source": "random initialisation"}
    if info is None:
        return Segmenter(network, [f"class {i}" for i in range(k)], model_name=model, model_overrides=overrides,
                         provenance=provenance)
    return segmenter_from_network(network, info, model, overrides, provenance)


def _load_keras_file(path):
    import zipfile

    import keras

    if not zipfile.is_zipfile(path):
        raise UserError(f"{path} is not a .keras file (not a zip archive: truncated or another format).")
    try:
        return keras.saving.load_model(path, compile=False)
    except (ValueError, TypeError, KeyError, OSError, zipfile.BadZipFile) as e:
        detail = str(e).strip().splitlines()[0][:200] if str(e).strip() else e.__class__.__name__
        raise UserError(f"cannot load {path}: {detail}") from None
