"""Datasets held in memory as uint8 tensors, with batched augmentation on the device."""

from imgcls.data import named  # noqa: F401 - registers the named datasets
from imgcls.data.augment import Augment, prepare
from imgcls.data.core import Dataset, Split, stratified_split
from imgcls.data.registry import DATASETS, dataset_name, load_dataset

__all__ = ["Augment", "DATASETS", "Dataset", "Split", "dataset_name", "load_dataset", "prepare", "stratified_split"]
