"""Datasets, label protocols and transforms.

Every reader returns a :class:`MultiLabelData`; ``create_dataset(name, root)`` picks the reader.
"""

# Importing the reader modules registers them.
from mlrkit.data import coco, csv_labels, cub, nuswide, vg, voc  # noqa: F401
from mlrkit.data.dataset import (
    LABEL_VALUES,
    NEGATIVE,
    POSITIVE,
    UNKNOWN,
    DataFormatError,
    MultiLabelData,
    create_dataset,
    list_datasets,
    read_split_file,
    register_dataset,
)

__all__ = [
    "LABEL_VALUES",
    "NEGATIVE",
    "POSITIVE",
    "UNKNOWN",
    "DataFormatError",
    "MultiLabelData",
    "create_dataset",
    "list_datasets",
    "read_split_file",
    "register_dataset",
]
