"""Datasets: importing this package registers every built-in dataset adapter."""

from medad.datasets import synthetic  # noqa: F401  (registers "synthetic")
from medad.datasets.base import Dataset, DatasetError, ImageSet, Subset

__all__ = ["Dataset", "DatasetError", "ImageSet", "Subset"]
