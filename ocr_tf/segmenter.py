"""`Segmenter`: a network plus everything needed to use it (keras-hub's task shape).

A bare network maps normalised float images to logits at feature resolution; to use it one also
needs its class names, palette, input normalisation, `align_corners`, ignore label, how it was
built and where its weights came from. The Segmenter holds all of it in `get_config`, so one
`.keras` file (or preset folder) is the whole truth and every command reads it from there.

    import ocr_tf
    seg = ocr_tf.Segmenter.from_preset("path/to/preset")   # or a name from ocr_tf.list_presets()
    labels = seg.predict(uint8_image)                      # int32 (H, W), the input's size

Calling the Segmenter on normalised float images is calling its network (training, export and
the inference module use that); `predict` / `segment` take raw uint8 RGB images.
"""

import json
import os

import keras
import numpy as np

from ocr_tf.errors import MissingFileError, UserError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
PRESET_CONFIG = "config.json"
PRESET_WEIGHTS = "model.weights.h5"
PRESET_METADATA = "metadata.json"
PIPELINE_OUTPUTS = ("labels", "probabilities", "regions", "pipeline")


def _rgb_list(colors, what):
    colors = [[int(c) for c in color] for color in colors]
    bad = [c for c in colors if len(c) != 3 or min(c) < 0 or max(c) > 255]
    if bad:
        raise UserError(f"{what}: colours must be [r, g, b] in 0..255, got {bad[:3]}.")
    return colors


@keras.saving.register_keras_serializable(package="ocr_tf")
class Segmenter(keras.Model):
    """A segmentation network with its classes, palette, normalisation and provenance.

    Args:
        network: a `keras.Model` mapping normalised float32 NHWC images to
            `{"logits", "aux_logits"}` (B, h, w, K) at feature resolution (`ocr_tf.build_model`).
        class_names: K class names (train id k = class_names[k]).
        palette: K [r, g, b] colours; default: the dataset's, else the PASCAL VOC colour map.
        mean, std: per-channel normalisation of RGB / 255 (ImageNet's by default).
        align_corners: how logits are resized to the image (as the network was trained).
        ignore_label: the label id that marks "no class" in targets and outputs.
        dataset: the dataset name the classes come from ("cityscapes", "demo", ...), or None.
        model_name, model_overrides: how to rebuild the network (`build_model(model_name,
            K, **model_overrides)`); None for networks that are not in the registry.
        output_stride: input size / logits size (4 for HRNet, 8 for dilated ResNet).
        flip_pairs: class pairs swapped by a horizontal flip (LIP's left/right parts).
        provenance: a JSON-able dict: source checkpoint, its sha256, converter version, parity, ...

    Example:
        >>> import numpy as np, ocr_tf
        >>> net = ocr_tf.build_model("hrnet_tiny_ocr", 3, mid_channels=16, key_channels=8)
        >>> seg = ocr_tf.Segmenter(net, ["sky", "road", "car"])
        >>> seg.predict(np.zeros((40, 60, 3), np.uint8)).shape
        (40, 60)
    """

    def __init__(
        self,
        network,
        class_names,
        palette=None,
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        align_corners=True,
        ignore_label=255,
        dataset=None,
        model_name=None,
        model_overrides=None,
        output_stride=None,
        flip_pairs=(),
        provenance=None,
        **kwargs,
    ):
        inputs = keras.Input(network.input_shape[1:], name="image")
        outputs = network(inputs)
        kwargs.setdefault("name", "segmenter")
        super().__init__(inputs=inputs, outputs=outputs, **kwargs)
        self.network = network
        self.class_names = [str(n) for n in class_names]
        num_classes = self.num_classes
        if len(self.class_names) != num_classes:
            raise UserError(
                f"{len(self.class_names)} class names for a network with {num_classes} classes "
                f"({network.name}): give one name per class."
            )
        if palette is None:
            from ocr_tf.data.datasets.base import voc_palette

            palette = voc_palette(num_classes)
        self.palette = _rgb_list(palette, "palette")
        if len(self.palette) != num_classes:
            raise UserError(f"palette has {len(self.palette)} colours for {num_classes} classes.")
        self.mean = [float(v) for v in mean]
        self.std = [float(v) for v in std]
        if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
            raise UserError(f"mean and std must be 3 numbers each (std > 0), got {mean} and {std}.")
        self.align_corners = bool(align_corners)
        self.ignore_label = int(ignore_label)
        self.dataset = dataset
        self.model_name = model_name
        self.model_overrides = dict(model_overrides or {})
        self.output_stride = None if output_stride is None else int(output_stride)
        self.flip_pairs = [tuple(int(c) for c in pair) for pair in flip_pairs]
        self.provenance = dict(provenance or {})
        self._infer = None

    # ------------------------------------------------------------------------------ metadata

    @property
    def num_classes(self):
        return int(self.network.output["logits"].shape[-1])

    def metadata(self):
        """Everything but the network, JSON-able: what a SavedModel or a preset carries."""
        return {
            "class_names": self.class_names,
            "palette": self.palette,
            "mean": self.mean,
            "std": self.std,
            "align_corners": self.align_corners,
            "ignore_label": self.ignore_label,
            "dataset": self.dataset,
            "model_name": self.model_name,
            "model_overrides": self.model_overrides,
            "output_stride": self.output_stride,
            "flip_pairs": [list(p) for p in self.flip_pairs],
            "provenance": self.provenance,
        }

    def dataset_info(self):
        """The classes as an `ocr_tf.data.datasets.DatasetInfo` (what the data and metric code take)."""
        from ocr_tf.data.datasets.base import DatasetInfo

        return DatasetInfo(
            self.dataset or "custom", self.num_classes, tuple(self.class_names),
            tuple(tuple(c) for c in self.palette), self.ignore_label, tuple(self.flip_pairs),
        )

    def get_config(self):
        # keras.Model's functional config is replaced by the constructor's arguments (keras-hub's
        # Task does the same), so loading rebuilds the Segmenter through __init__.
        return {
            "name": self.name,
            "trainable": self.trainable,
            "network": keras.saving.serialize_keras_object(self.network),
            **self.metadata(),
        }

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["network"] = keras.saving.deserialize_keras_object(config["network"])
        return cls(**config)

    def with_classes(self, class_names, palette=None, dataset=None, flip_pairs=()):
        """The same network (shared weights) under other class names / palette."""
        meta = {**self.metadata(), "class_names": class_names, "palette": palette, "dataset": dataset,
                "flip_pairs": flip_pairs}
        return Segmenter(self.network, **meta)

    def with_network(self, network):
        """Another network (e.g. `ocr_tf.fold_bn.fold_batch_norm(seg.network)`) with this metadata."""
        return Segmenter(network, **self.metadata())

    # ------------------------------------------------------------------------------ inference

    def normalize(self, images):
        """uint8 RGB (..., 3) -> the network's float32 input (tensors of the active backend)."""
        x = keras.ops.cast(images, "float32") / 255.0
        return (x - keras.ops.convert_to_tensor(self.mean)) / keras.ops.convert_to_tensor(self.std)

    def _as_batch(self, images):
        """Validated uint8 batch (B, H, W, 3) as NumPy, and whether the input was one image."""
        array = np.asarray(images)
        if array.dtype == np.uint16 or array.dtype == np.int32 and array.max(initial=0) > 255:
            raise UserError(
                f"got a {array.dtype} image: 16-bit images are not read silently; convert to 8-bit "
                "first (e.g. (image / image.max() * 255).astype('uint8') if its range is full)."
            )
        if array.dtype != np.uint8:
            if array.dtype.kind in "iu" and array.size and 0 <= array.min() and array.max() <= 255:
                array = array.astype(np.uint8)
            else:
                raise UserError(
                    f"images must be uint8 RGB (0..255), got dtype {array.dtype}; for normalised "
                    "floats call the Segmenter itself (seg(x)) instead of predict."
                )
        single = array.ndim == 3
        if single:
            array = array[None]
        if array.ndim != 4 or array.shape[-1] != 3:
            raise UserError(f"images must be (H, W, 3) or (B, H, W, 3) RGB, got shape {array.shape}.")
        return array, single

    def _runner(self):
        if self._infer is None:
            from ocr_tf.inference import compiled_runner

            self._infer = compiled_runner(self.network)
        return self._infer

    def predict_scores(self, images, **inference):
        """Merged class scores (B, H, W, K) of uint8 images at their size (see `ocr_tf.inference`)."""
        from ocr_tf.inference import predict_logits

        batch, single = self._as_batch(images)
        options = {"align_corners": self.align_corners, "flip_pairs": self.flip_pairs, **inference}
        scores = predict_logits(self._runner(), self.normalize(batch), num_classes=self.num_classes, **options)
        scores = keras.ops.convert_to_numpy(scores)
        return scores[0] if single else scores

    def predict(self, images, scales=(1.0,), flip=False, mode="whole", crop_size=None, stride=None, **kwargs):
        """int32 labels at the input size for uint8 RGB images (H, W, 3) or (B, H, W, 3).

        Args:
            images: uint8 RGB array(s) of any size; a list of arrays of different sizes gives a list.
            scales, flip, mode, crop_size, stride: test-time inference (`ocr_tf.inference`).
        """
        if kwargs:
            raise UserError(
                f"Segmenter.predict takes uint8 images and inference options; unknown {sorted(kwargs)}. "
                "Keras' predict on normalised floats is `seg.network.predict(x)`."
            )
        if isinstance(images, (list, tuple)) and len({np.shape(i) for i in images}) > 1:
            return [self.predict(i, scales, flip, mode, crop_size, stride) for i in images]
        options = dict(scales=scales, flip=flip, mode=mode, crop_size=crop_size, stride=stride)
        return np.argmax(self.predict_scores(images, **options), axis=-1).astype(np.int32)

    def soft_regions(self, image):
        """The soft object regions of one uint8 image: (h, w, K), each class's map sums to 1
        (the weights of the paper's gather step, eq. 4)."""
        from ocr_tf.visualize import soft_regions

        batch, _ = self._as_batch(image)
        aux = self._runner()(self.normalize(batch[:1]))["aux_logits"]
        return soft_regions(keras.ops.convert_to_numpy(aux)[0])

    def segment(self, inputs, output="labels", **inference):
        """Segment files, folders, globs, PIL images or uint8 arrays; one result per image.

        output: "labels" (int32 (H, W)), "probabilities" (float32 (H, W, K), softmax of the
            merged scores), "regions" (the soft object regions, see `soft_regions`), or
            "pipeline": HuggingFace's image-segmentation format, a list of
            {"label", "score", "mask"} per class present (mask: uint8 0/255, score: the mean
            probability of the class over its mask).
        """
        if output not in PIPELINE_OUTPUTS:
            raise UserError(f"output must be one of {PIPELINE_OUTPUTS}, got {output!r}.")
        results = []
        for image in _images_of(inputs):
            if output == "regions":
                results.append(self.soft_regions(image))
                continue
            scores = self.predict_scores(image, **inference)
            labels = np.argmax(scores, axis=-1).astype(np.int32)
            if output == "labels":
                results.append(labels)
                continue
            # Both merges give non-negative scores; normalised, they are probabilities (with one
            # scale and merge="exp", exactly the softmax of the logits).
            probs = (scores / np.maximum(scores.sum(axis=-1, keepdims=True), 1e-30)).astype(np.float32)
            if output == "probabilities":
                results.append(probs)
                continue
            entries = []
            for k in np.unique(labels):
                mask = labels == k
                entries.append({
                    "label": self.class_names[k],
                    "score": float(probs[..., k][mask].mean()),
                    "mask": mask.astype(np.uint8) * 255,
                })
            results.append(entries)
        return results

    # ------------------------------------------------------------------------------ presets

    def save_to_preset(self, preset_dir):
        """Write a preset folder: config.json, model.weights.h5, metadata.json (provenance and
        versions), labels.txt and a README.md model card. Written under a temporary name and
        renamed, so a kill never leaves a half-written preset."""
        from ocr_tf.presets import write_preset

        return write_preset(self, preset_dir)

    @classmethod
    def from_preset(cls, preset, **kwargs):
        """A Segmenter from a preset folder (`save_to_preset`), a name of `ocr_tf.list_presets()`
        (downloaded and converted once, then cached) or a URL of a preset archive / checkpoint."""
        from ocr_tf.presets import load_preset

        return load_preset(preset, **kwargs)


def _images_of(inputs):
    """uint8 RGB arrays from paths / folders / globs / PIL images / arrays (one or a list)."""
    from PIL import Image

    if isinstance(inputs, (str, os.PathLike)) or isinstance(inputs, Image.Image):
        inputs = [inputs]
    elif isinstance(inputs, np.ndarray):
        inputs = list(inputs) if inputs.ndim == 4 else [inputs]
    for item in inputs:
        if isinstance(item, (str, os.PathLike)):
            from ocr_tf.predict import list_inputs, read_image

            for path in list_inputs([os.fspath(item)]):
                yield read_image(path)
        elif isinstance(item, Image.Image):
            yield np.asarray(item.convert("RGB"))
        else:
            yield np.asarray(item)


def read_saved_model_metadata(path):
    """The Segmenter metadata a SavedModel export carries (assets.extra/segmenter.json), or None."""
    meta = os.path.join(path, "assets.extra", "segmenter.json")
    if not os.path.isfile(meta):
        return None
    with open(meta, encoding="utf-8") as f:
        return json.load(f)


def require_file(path, what):
    if not os.path.exists(path):
        raise MissingFileError(f"{what} {path} not found.")
    return path
