"""Data sets (NumPy, fixed splits) and grain pipelines."""

from ._pipeline import pipeline as pipeline
from ._sources import (
    BUILTIN_NAMES as BUILTIN_NAMES,
    Dataset as Dataset,
    FASHION_MNIST_DIR as FASHION_MNIST_DIR,
    load as load,
)
