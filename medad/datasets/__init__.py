"""Datasets: importing this package registers every built-in dataset adapter."""

from medad.datasets import synthetic  # noqa: F401  (registers "synthetic")
from medad.datasets import (  # noqa: F401  (the real datasets' adapters register themselves)
    cnmc, covid_ct, covidx, head_ct, mias, montgomery_shenzhen, oct, rider, yes_no,
)
from medad.datasets.base import Dataset, DatasetError, ImageSet, Subset

__all__ = ["Dataset", "DatasetError", "ImageSet", "Subset"]
