"""Dataset metadata registry: `get_dataset_info(name)` -> `DatasetInfo`.

Each benchmark has its own module holding its class table, label mapping and file layout;
`DatasetInfo.from_class_file(path)` makes the metadata of your own `folder` dataset.
"""

import importlib

from ocr_tf.data.datasets.base import IGNORE_LABEL, DatasetInfo, voc_palette
from ocr_tf.errors import UserError

DATASETS = ("cityscapes", "ade20k", "lip", "pascal_context", "coco_stuff", "demo")


def get_module(name):
    """The module of a named dataset (or 'folder')."""
    if name not in DATASETS + ("folder",):
        raise UserError(f"unknown dataset {name!r}; known: {', '.join(DATASETS + ('folder',))}")
    return importlib.import_module(f"ocr_tf.data.datasets.{name}")


def get_dataset_info(name):
    """DatasetInfo of a named dataset; a path to a class list file gives a folder dataset's."""
    if name not in DATASETS and name.endswith((".txt", ".names")):
        return DatasetInfo.from_class_file(name)
    if name == "folder":
        raise UserError("a folder dataset's classes come from its class file: "
                         "use DatasetInfo.from_class_file(path) or get_dataset_info(path)")
    return get_module(name).INFO


__all__ = ["DATASETS", "IGNORE_LABEL", "DatasetInfo", "get_dataset_info", "get_module", "voc_palette"]
