"""Presets: a Segmenter saved as a folder, and the official checkpoints by name.

    ocr_tf.list_presets()                                    # the official HRNet-OCR checkpoints
    seg = ocr_tf.Segmenter.from_preset("hrnet_w48_ocr_cityscapes")

A name (or a `PresetSpec`, or the URL of a `.pth` with `model=` and `dataset=`) is downloaded once
with `keras.utils.get_file`, converted with `ocr_tf.convert` (PyTorch from the `[convert]` extra),
and saved as a preset folder in the cache (`$OCR_TF_CACHE` or ~/.cache/ocr_tf, under presets/);
later calls read that folder and need no network. The sha256 of every converted download is
recorded (the preset's provenance and presets/sha256.json); a later download of the same URL whose
sha256 differs is refused, as is one that differs from a sha256 given in the spec.

A preset folder holds
  config.json        the Segmenter's Keras config (network architecture + classes, palette,
                     normalisation, align_corners, build arguments, provenance)
  model.weights.h5   the weights
  metadata.json      provenance and the versions that wrote it (ocr_tf, keras)
  labels.txt         one class name per line (line k = train id k)
  README.md          a model card
It is written into a temporary folder beside the target and renamed when complete.
"""

import dataclasses
import hashlib
import json
import os
import shutil
import tempfile
import time
import urllib.parse

from ocr_tf.errors import MissingFileError, UserError
from ocr_tf.files import cache_root, file_sha256  # noqa: F401 (presets.cache_root is public)

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


# ---------------------------------------------------------------------------- checkpoints by name

# The [HR] README's release assets (HRNet/HRNet-Semantic-Segmentation, branch HRNet-OCR).
OFFICIAL_URL = "https://github.com/hsfzxjy/models.storage/releases/download/HRNet-OCR/"
# The official models resize with align_corners=True (seg_hrnet_ocr.py ALIGN_CORNERS, config default).
OFFICIAL_OVERRIDES = {"align_corners": True}
CHECKPOINT_SUFFIXES = (".pth", ".pt", ".npz")
URL_SCHEMES = ("http", "https", "file")
SHA_RECORD = "sha256.json"
EXTRA_HINT = 'pip install "ocr_tf[convert]"'
INPLACE_ABN_NOTE = "InPlaceABN scales read as |w| + 1e-5 (official code under PyTorch 0.4)"
# A download folder this old belongs to a process that was killed (no download takes a day).
STALE_DOWNLOAD_S = 24 * 3600


class MissingExtraError(UserError, ImportError):
    """An optional dependency is missing; the message names the extra that installs it."""


@dataclasses.dataclass(frozen=True)
class PresetSpec:
    """Where a preset's checkpoint comes from and how to convert it.

    Args:
        name: the preset name (also the name of its folder in the cache).
        url: the checkpoint's URL: an official `.pth` (read with torch) or an `.npz` state_dict.
        model: the network's registry name (`ocr_tf.build_model`), e.g. "hrnet_w48_ocr".
        dataset: a dataset of `ocr_tf.data.datasets` (classes, palette, ignore label, flip pairs),
            or the path of a class list file.
        published_miou: the mIoU (%) its authors published, or None.
        miou_protocol: how that mIoU was measured (split, scales, flip).
        description: one line.
        sha256: the checkpoint's sha256 if known; None: recorded at the first download.
        model_overrides: `build_model` overrides the checkpoint needs (widths, align_corners).
        parity: a measured agreement with the official PyTorch model, if known (text).
        inplace_abn: the file's BN weights are InPlaceABN scales (`ocr_tf.convert.inplace_abn_weights`);
            None: so for the `_torch04` release files (trained under PyTorch 0.4.1).
    """

    name: str
    url: str
    model: str
    dataset: str
    published_miou: float | None = None
    miou_protocol: str = ""
    description: str = ""
    sha256: str | None = None
    model_overrides: dict = dataclasses.field(default_factory=lambda: dict(OFFICIAL_OVERRIDES))
    parity: str | None = None
    inplace_abn: bool | None = None

    def __post_init__(self):
        if not self.name or os.sep in self.name or self.name.startswith("."):
            raise UserError(f"preset name {self.name!r}: expected a plain folder name.")
        if urllib.parse.urlsplit(self.url).scheme not in URL_SCHEMES:
            raise UserError(f"preset {self.name}: url {self.url!r} is not an {'/'.join(URL_SCHEMES)} URL.")
        if not self.file_name.endswith(CHECKPOINT_SUFFIXES):
            raise UserError(f"preset {self.name}: {self.url} does not name a checkpoint "
                            f"(expected a file ending in {', '.join(CHECKPOINT_SUFFIXES)}).")
        if self.sha256 is not None and (len(self.sha256) != 64 or set(self.sha256) - set("0123456789abcdef")):
            raise UserError(f"preset {self.name}: sha256 {self.sha256!r} is not 64 lowercase hex digits.")

    @property
    def file_name(self):
        return os.path.basename(urllib.parse.unquote(urllib.parse.urlsplit(self.url).path))

    @property
    def reads_inplace_abn(self):
        from ocr_tf.convert import is_torch04_file

        return is_torch04_file(self.file_name) if self.inplace_abn is None else bool(self.inplace_abn)

    def as_dict(self):
        return {**dataclasses.asdict(self), "file_name": self.file_name}


def _official(name, file_name, model, dataset, miou, protocol, description):
    return PresetSpec(name, OFFICIAL_URL + file_name, model, dataset, miou, protocol, description)


_PRESETS = {
    spec.name: spec
    for spec in (
        _official("hrnet_w48_ocr_cityscapes", "hrnet_ocr_cs_8162_torch11.pth", "hrnet_w48_ocr", "cityscapes",
                  81.6, "Cityscapes val, single scale 1024x2048, no flip",
                  "HRNetV2-W48 + OCR, Cityscapes train (19 classes)"),
        _official("hrnet_w48_ocr_cityscapes_trainval", "hrnet_ocr_cs_trainval_8227_torch11.pth", "hrnet_w48_ocr",
                  "cityscapes", 82.3, "Cityscapes test server, multi-scale 0.5-1.75 + flip",
                  "HRNetV2-W48 + OCR, Cityscapes train+val, for test-server submissions"),
        _official("hrnet_w48_ocr_lip", "hrnet_ocr_lip_5648_torch04.pth", "hrnet_w48_ocr", "lip",
                  56.48, "LIP val, 473x473, flip", "HRNetV2-W48 + OCR, LIP human parts (20 classes), PyTorch 0.4.1"),
        _official("hrnet_w48_ocr_pascal_context", "hrnet_ocr_pascal_ctx_5618_torch11.pth", "hrnet_w48_ocr",
                  "pascal_context", 56.2, "PASCAL-Context 59 classes, 520x520, multi-scale 0.5-2.0 + flip",
                  "HRNetV2-W48 + OCR, PASCAL-Context (59 classes)"),
        _official("hrnet_w48_ocr_coco_stuff", "hrnet_ocr_cocostuff_3965_torch04.pth", "hrnet_w48_ocr", "coco_stuff",
                  39.7, "COCO-Stuff, 520x520, single scale; 40.6 with multi-scale 0.5-2.0 + flip",
                  "HRNetV2-W48 + OCR, COCO-Stuff (171 classes), OHEM, PyTorch 0.4.1"),
        _official("hrnet_w48_ocr_ade20k", "hrnet_ocr_ade20k_4451_torch04.pth", "hrnet_w48_ocr", "ade20k",
                  44.5, "ADE20K val, 520x520, single scale; 45.5 with multi-scale 0.5-2.0 + flip",
                  "HRNetV2-W48 + OCR, ADE20K (150 classes), OHEM, PyTorch 0.4.1"),
        _official("hrnet_w48_fcn_cityscapes", "hrnet_cs_8090_torch11.pth", "hrnet_w48_fcn", "cityscapes",
                  80.9, "Cityscapes val, single scale 1024x2048, no flip",
                  "HRNetV2-W48 baseline (FCN head), Cityscapes train (19 classes)"),
        _official("hrnet_w48_fcn_lip", "hrnet_lip_5583_torch04.pth", "hrnet_w48_fcn", "lip",
                  55.83, "LIP val, 473x473, flip", "HRNetV2-W48 baseline (FCN head), LIP (20 classes), PyTorch 0.4.1"),
        _official("hrnet_w48_fcn_pascal_context", "hrnet_pascal_ctx_5410_torch11.pth", "hrnet_w48_fcn",
                  "pascal_context", 54.1, "PASCAL-Context 59 classes, 520x520, multi-scale 0.5-2.0 + flip",
                  "HRNetV2-W48 baseline (FCN head), PASCAL-Context (59 classes)"),
        _official("hrnet_w48_fcn_coco_stuff", "hrnet_cocostuff_3617_torch04.pth", "hrnet_w48_fcn", "coco_stuff",
                  36.2, "COCO-Stuff, 520x520, single scale; 37.9 with multi-scale 0.5-2.0 + flip",
                  "HRNetV2-W48 baseline (FCN head), COCO-Stuff (171 classes), OHEM, PyTorch 0.4.1"),
        _official("hrnet_w48_fcn_ade20k", "hrnet_ade20k_4312_torch04.pth", "hrnet_w48_fcn", "ade20k",
                  43.1, "ADE20K val, 520x520, single scale; 44.2 with multi-scale 0.5-2.0 + flip",
                  "HRNetV2-W48 baseline (FCN head), ADE20K (150 classes), OHEM, PyTorch 0.4.1"),
    )
}


def _as_spec(spec):
    if isinstance(spec, PresetSpec):
        return spec
    if isinstance(spec, dict):
        fields = {f.name for f in dataclasses.fields(PresetSpec)}
        unknown = sorted(set(spec) - fields - {"file_name"})
        if unknown:
            raise UserError(f"preset fields {unknown} unknown; expected some of {sorted(fields)}.")
        missing = sorted({"name", "url", "model", "dataset"} - set(spec))
        if missing:
            raise UserError(f"preset {spec.get('name', '?')}: missing field(s) {missing}.")
        return PresetSpec(**{k: v for k, v in spec.items() if k != "file_name"})
    raise UserError(f"a preset spec is a PresetSpec or a dict, got {type(spec).__name__}.")


def register_preset(spec, replace=False):
    """Add a named preset (a `PresetSpec` or a dict of its fields) to `list_presets()`.

    Args:
        spec: the preset; its `name` becomes loadable with `Segmenter.from_preset(name)`.
        replace: allow replacing a preset of the same name.
    """
    spec = _as_spec(spec)
    if spec.name in _PRESETS and not replace:
        raise UserError(f"preset {spec.name!r} exists already (pass replace=True to replace it).")
    _PRESETS[spec.name] = spec
    return spec


def list_presets():
    """{name: {url, file_name, model, dataset, published_miou, miou_protocol, description, sha256,
    model_overrides, parity}} of the known presets (the official checkpoints first)."""
    return {name: spec.as_dict() for name, spec in _PRESETS.items()}


def preset_of_file(file_name):
    """The preset whose checkpoint file is named `file_name`, or None."""
    return next((s for s in _PRESETS.values() if s.file_name == os.path.basename(file_name)), None)


def require_torch(what):
    """Import torch or say which extra installs it (one line)."""
    try:
        import torch
    except ImportError:
        raise MissingExtraError(f"{what} is a PyTorch checkpoint; converting it needs the [convert] extra: "
                                f"{EXTRA_HINT}") from None
    return torch


def _sha_records(root):
    path = os.path.join(root, "presets", SHA_RECORD)
    if not os.path.isfile(path):
        return {}
    try:
        with open(path, encoding="utf-8") as f:
            records = json.load(f)
    except (OSError, ValueError) as e:
        raise UserError(f"{path} is not a JSON object of url -> sha256 ({e}); fix or delete it.") from None
    if not isinstance(records, dict):
        raise UserError(f"{path} is not a JSON object of url -> sha256; fix or delete it.")
    return records


def _record_sha(root, url, digest):
    """Add url -> sha256 to the cache's record (atomically: temp file, then rename)."""
    records = {**_sha_records(root), url: digest}
    folder = os.path.join(root, "presets")
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-sha256-", dir=folder)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        json.dump(records, f, indent=1, sort_keys=True)
    os.replace(tmp, os.path.join(folder, SHA_RECORD))


def converted_segmenter(network, model, checkpoint, dataset=None, model_overrides=None, provenance=None, source=None):
    """Wrap a converted network in a Segmenter with the dataset's classes and the provenance.

    Args:
        network: the network the checkpoint was loaded into (`build_model(model, ...)`).
        model: its registry name; model_overrides: the overrides it was built with.
        checkpoint: the checkpoint file (its sha256 and name go into the provenance).
        dataset: dataset name or class list file (classes, palette, ignore label, flip pairs);
            None: classes named class_0, class_1, ... with the VOC palette.
        provenance: extra provenance entries (None values are dropped).
        source: how to name the checkpoint (e.g. its URL); default: its path.
    """
    import ocr_tf
    from ocr_tf.segmenter import Segmenter

    source = source or os.fspath(checkpoint)
    num_classes = int(network.output["logits"].shape[-1])
    if dataset is None:
        names, palette, ignore, flip_pairs, dataset_name = [f"class_{k}" for k in range(num_classes)], None, 255, (), None
    else:
        info = dataset_info(dataset, source)
        if info.num_classes != num_classes:
            raise UserError(f"{source}: the network has {num_classes} classes, dataset {info.name} {info.num_classes}.")
        names, palette, ignore, flip_pairs, dataset_name = (
            info.class_names, info.palette, info.ignore_label, info.flip_pairs, info.name)
    overrides = dict(model_overrides or {})
    provenance = {
        **(provenance or {}),
        "source_file": os.path.basename(urllib.parse.urlsplit(source).path) or os.path.basename(os.fspath(checkpoint)),
        "sha256": file_sha256(checkpoint),
        "converter": f"ocr_tf {ocr_tf.__version__} (ocr_tf.convert)",
    }
    return Segmenter(
        network, names, palette=palette, align_corners=overrides.get("align_corners", True), ignore_label=ignore,
        dataset=dataset_name, model_name=model, model_overrides=overrides,
        output_stride=4 if model.startswith("hrnet") else None, flip_pairs=flip_pairs,
        provenance={k: v for k, v in provenance.items() if v is not None},
    )


def dataset_info(dataset, source):
    """`get_dataset_info(dataset)`, its error naming `source` (the checkpoint it is for)."""
    from ocr_tf.data.datasets import get_dataset_info

    try:
        return get_dataset_info(dataset)
    except (ValueError, OSError) as e:
        raise UserError(f"dataset {dataset!r} for {source}: {e}") from None


def segmenter_from_checkpoint(checkpoint, model, dataset, model_overrides=None, provenance=None, source=None,
                              inplace_abn=False):
    """Convert an official checkpoint file into a Segmenter with the dataset's classes.

    Args:
        checkpoint: a `.pth` (needs torch) or `.npz` state_dict of an official HRNet OCR/FCN model.
        model: the registry name of the network, e.g. "hrnet_w48_ocr".
        dataset: dataset name or class list file (classes, palette, ignore label, flip pairs).
        model_overrides: `build_model` overrides (widths, align_corners).
        provenance: extra provenance entries; sha256, source_file and converter are added.
        source: how to name the checkpoint in errors (e.g. its URL); default: its path.
        inplace_abn: the BN weights are InPlaceABN scales (`ocr_tf.convert.inplace_abn_weights`).
    """
    from ocr_tf.convert import clean_state_dict, inplace_abn_weights, load_official_weights, read_state_dict
    from ocr_tf.models import build_model

    source = source or os.fspath(checkpoint)
    info = dataset_info(dataset, source)
    if os.fspath(checkpoint).endswith((".pth", ".pt")):
        require_torch(source)
    try:
        state = read_state_dict(checkpoint)
    except Exception as e:  # torch.load's errors on a damaged file vary (zip, pickle, EOF)
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise UserError(f"{source} is not a readable checkpoint ({type(e).__name__}: {first}).") from None
    overrides = dict(model_overrides or {})
    network = build_model(model, info.num_classes, **overrides)
    state = clean_state_dict(state, "fcn" if model.endswith("_fcn") else "ocr")
    load_official_weights(network, inplace_abn_weights(state) if inplace_abn else state, source=source)
    provenance = {**(provenance or {}), "bn_weights": INPLACE_ABN_NOTE if inplace_abn else None}
    return converted_segmenter(network, model, checkpoint, dataset, overrides, provenance, source)


def write_converted_preset(network, model, checkpoint, out, dataset=None, model_overrides=None, official=None,
                           parity=None, inplace_abn=False):
    """`python -m ocr_tf.convert`'s preset: the converted network with its classes and provenance.

    Args:
        network, model, model_overrides: the converted network, its registry name and overrides.
        checkpoint: the converted file; out: the preset folder to write.
        dataset: dataset name or class list file (None: class_0, class_1, ...).
        official: the `PresetSpec` of an official release of that file name (source URL and
            published mIoU go into the provenance), or None.
        parity: {check name: max |a-b|/max|b|} of the verifications that ran, if any.
        inplace_abn: whether the BN weights were read as InPlaceABN scales (noted in the provenance).
    """
    provenance = {"bn_weights": INPLACE_ABN_NOTE if inplace_abn else None}
    if official is not None:
        provenance.update({"preset": official.name, "source_url": official.url,
                           "published_miou": official.published_miou, "miou_protocol": official.miou_protocol or None})
    if parity:
        provenance["parity"] = f"max |a-b|/max|b| {max(parity.values()):.3g} ({', '.join(sorted(parity))})"
    segmenter = converted_segmenter(network, model, checkpoint, dataset, model_overrides, provenance)
    return write_preset(segmenter, out)


def _cached_provenance(preset_dir):
    """The provenance in a cached preset's metadata.json (read without loading the weights)."""
    try:
        with open(os.path.join(preset_dir, METADATA), encoding="utf-8") as f:
            return json.load(f).get("provenance") or {}
    except (OSError, ValueError):
        return {}


def fetch_preset(spec, cache_dir=None):
    """The Segmenter of `spec`: from its cached preset folder, else downloaded, checked and converted
    once (the converted preset is cached; the download itself is not kept).

    Args:
        spec: a `PresetSpec` (or a dict of its fields).
        cache_dir: the cache root (default: `cache_root()`).
    """
    spec = _as_spec(spec)
    root = os.path.abspath(cache_dir or cache_root())
    target = os.path.join(root, "presets", spec.name)
    if is_preset_dir(target):
        cached = _cached_provenance(target)
        if cached.get("source_url") == spec.url:
            if spec.sha256 and cached.get("sha256") != spec.sha256:
                raise UserError(f"cached preset {target} was converted from a file with sha256 "
                                f"{cached.get('sha256')}, not {spec.sha256} as preset {spec.name} says: "
                                "delete the folder to download it again.")
            return read_preset_dir(target)
        # converted from another URL (the spec changed): convert anew, replacing it
    return _download_and_convert(spec, root, target)


def _download_and_convert(spec, root, target):
    import keras

    record_file = os.path.join(root, "presets", SHA_RECORD)
    recorded = _sha_records(root).get(spec.url)
    if spec.file_name.endswith((".pth", ".pt")):
        require_torch(spec.url)  # before a download of hundreds of MB
    downloads = os.path.join(root, "downloads")
    os.makedirs(downloads, exist_ok=True)  # get_file falls back to /tmp when its cache_dir is not writable
    _remove_stale_downloads(downloads)
    # A fresh folder per download: get_file reuses any file at its target path, so a download killed
    # half-way must never sit where the next call would take it for complete.
    tmp = tempfile.mkdtemp(prefix=f".tmp-{spec.name}-", dir=downloads)
    try:
        try:
            path = keras.utils.get_file(fname=spec.file_name, origin=spec.url, cache_dir=tmp, cache_subdir="")
        except Exception as e:  # get_file wraps HTTP and URL errors in a bare Exception
            raise UserError(f"download of {spec.url} failed ({e}); nothing was cached.") from None
        digest = file_sha256(path)
        for expected, where in ((spec.sha256, f"preset {spec.name}'s sha256"),
                                (recorded, f"the sha256 recorded at its first download ({record_file})")):
            if expected and digest != expected:
                raise UserError(f"{spec.url}: sha256 {digest} differs from {where} {expected}; the file changed "
                                "upstream or the download is damaged: nothing was cached.")
        provenance = {"preset": spec.name, "source_url": spec.url, "published_miou": spec.published_miou,
                      "miou_protocol": spec.miou_protocol or None, "parity": spec.parity}
        segmenter = segmenter_from_checkpoint(path, spec.model, spec.dataset, spec.model_overrides,
                                              provenance, source=spec.url, inplace_abn=spec.reads_inplace_abn)
        write_preset(segmenter, target)
        _record_sha(root, spec.url, digest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return segmenter


def _remove_stale_downloads(downloads, max_age_s=STALE_DOWNLOAD_S):
    """Remove the temporary folders of downloads killed half-way (older than a day: not running)."""
    now = time.time()
    for entry in os.scandir(downloads):
        if entry.name.startswith(".tmp-") and entry.is_dir() and now - entry.stat().st_mtime > max_age_s:
            shutil.rmtree(entry.path, ignore_errors=True)


def _spec_from_url(url, model=None, dataset=None, name=None, **fields):
    missing = [k for k, v in (("model", model), ("dataset", dataset)) if not v]
    if missing:
        raise UserError(f"{url} is a checkpoint URL: from_preset needs {' and '.join(f'{k}=' for k in missing)} "
                        "too (e.g. model=\"hrnet_w48_ocr\", dataset=\"cityscapes\").")
    stem = os.path.splitext(os.path.basename(urllib.parse.urlsplit(url).path))[0] or "checkpoint"
    # the URL's hash in the name: two URLs of the same file name never share a cache folder
    name = name or f"{stem}-{hashlib.sha256(url.encode()).hexdigest()[:8]}"
    return PresetSpec(name=name, url=url, model=model, dataset=dataset, **fields)


def load_preset(preset, **kwargs):
    """A Segmenter from a preset folder, a name of `list_presets()`, a `PresetSpec` / dict, or the
    URL of a checkpoint (then `model=` and `dataset=` are required; `model_overrides=`, `sha256=`,
    `name=` optional).

    Args:
        preset: what to load (see above).
        cache_dir: the cache root for names, specs and URLs (default `$OCR_TF_CACHE` or ~/.cache/ocr_tf).
    """
    cache_dir = kwargs.pop("cache_dir", None)
    if isinstance(preset, (PresetSpec, dict)):
        spec = preset
    elif isinstance(preset, os.PathLike) or os.path.isdir(preset):  # a folder wins over a name
        spec = None
    elif preset in _PRESETS:
        spec = _PRESETS[preset]
    elif urllib.parse.urlsplit(preset).scheme in URL_SCHEMES:
        allowed = {"model", "dataset", "name", "model_overrides", "sha256", "published_miou", "miou_protocol"}
        unknown = sorted(set(kwargs) - allowed)
        if unknown:
            raise UserError(f"from_preset({preset!r}): unknown argument(s) {unknown}; allowed {sorted(allowed)}.")
        return fetch_preset(_spec_from_url(preset, **kwargs), cache_dir)
    else:
        raise MissingFileError(f"preset {preset!r} is not a preset folder, a URL, nor one of ocr_tf.list_presets(): "
                               f"{', '.join(_PRESETS)}.")
    if kwargs or (spec is None and cache_dir):
        raise UserError(f"from_preset({preset!r}) takes no {sorted(kwargs) or ['cache_dir']} "
                        "(only a checkpoint URL takes model=, dataset=, ...).")
    return read_preset_dir(preset) if spec is None else fetch_preset(spec, cache_dir)
