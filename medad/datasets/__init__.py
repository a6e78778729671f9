"""Datasets: importing this package registers every built-in dataset adapter (``synthetic`` and the real ones)."""

from medad.datasets import cnmc, covid_ct, covidx, folder, head_ct, mias, montgomery_shenzhen, oct, rider, synthetic, yes_no  # noqa: F401  (each module registers its adapter)
from medad.datasets.base import Dataset, DatasetError, ImageSet, Subset

__all__ = ["Dataset", "DatasetError", "ImageSet", "Subset"]
