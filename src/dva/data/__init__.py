"""Datasets: publishers' layouts, evaluation protocols, robust decoding, loaders."""

from dva.data.images import ImageDecodeError, load_image
from dva.data.records import Box, Catalog, DataSplit, ImageRecord, SplitSide, data_fingerprint
from dva.data.registry import DatasetInfo, get_dataset, list_datasets, load_catalog, read_catalog, register_dataset
from dva.data.splits import PROTOCOLS, SPLIT_FIELDS, carve_validation, make_split, split_from_config, split_key

__all__ = [
    "PROTOCOLS",
    "SPLIT_FIELDS",
    "Box",
    "Catalog",
    "DataSplit",
    "DatasetInfo",
    "ImageDecodeError",
    "ImageRecord",
    "SplitSide",
    "data_fingerprint",
    "carve_validation",
    "get_dataset",
    "list_datasets",
    "load_catalog",
    "load_image",
    "make_split",
    "split_from_config",
    "split_key",
    "read_catalog",
    "register_dataset",
]
