"""Data sets (NumPy or lazily read ArrayRecord files, fixed splits) and grain pipelines."""

from ._dataset import Dataset as Dataset
from ._pipeline import pipeline as pipeline
from ._records import RecordArray as RecordArray
from ._records_io import write_records as write_records
from ._sources import (
    BUILTIN_NAMES as BUILTIN_NAMES,
    FASHION_MNIST_DIR as FASHION_MNIST_DIR,
    load as load,
)
