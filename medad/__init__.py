"""medad: a benchmark harness for unsupervised anomaly detection in medical images.

The public API (imported lazily, so ``import medad`` stays fast)::

    medad.Detector, medad.TrainLog                       # the detector contract
    medad.Dataset, medad.ImageSet, medad.Subset          # the dataset contract
    medad.register_detector, medad.register_dataset      # the registries' decorators
    medad.list_detectors(), medad.list_datasets()        # what is registered (plugins included)
    medad.run(config, **options) -> medad.Run            # run a matrix, as `medad run` does
    medad.load_run(path) -> medad.Run                    # a run folder's typed frames
    medad.__version__
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.2.0"

_EXPORTS = {
    "Detector": "medad.detectors.base", "TrainLog": "medad.detectors.base",
    "Dataset": "medad.datasets.base", "ImageSet": "medad.datasets.base", "Subset": "medad.datasets.base",
    "register_detector": "medad.registry", "register_dataset": "medad.registry",
    "list_detectors": "medad.api", "list_datasets": "medad.api", "run": "medad.api", "load_run": "medad.api",
    "Run": "medad.api",
}
__all__ = sorted(_EXPORTS) + ["__version__"]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'medad' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
