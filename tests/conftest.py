"""Shared fixtures: tiny synthetic subsets and small configs."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))  # `tests.support` for detectors used only by tests

# pytest-xdist runs one test process per core: each on one thread (more threads would only fight over the
# cores), and runs started by a test stay in its process unless the test asks for workers.
if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(1)
else:
    torch.set_num_threads(min(2, torch.get_num_threads()))
os.environ.setdefault("MEDAD_WORKERS", "1")


@pytest.fixture(autouse=True)
def _in_own_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every test runs in its own temporary folder: the CLI's relative defaults (``results/``, ``reports/``) never
    land in the checkout, nor in a folder that a test running beside it writes too."""
    monkeypatch.chdir(tmp_path)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The detectors' separation tests (``slow``, 35-80 s each) first: pytest-xdist hands tests out in collection
    order, and the longest ones started last would leave one core idle while the other finishes them."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)


# Tests that need an optional extra (Ray, submitit) skip where it is missing, as after the README's install
# (``.[dev]``). With ``MEDAD_SKIPPED_FOR_EXTRAS=FILE`` set, the node ids of the tests skipped that way are written to
# FILE, one a line: CI installs the extras afterwards and runs exactly those.
EXTRA_MODULES = ("ray", "submitit")
SKIPPED_FOR_EXTRAS_ENV = "MEDAD_SKIPPED_FOR_EXTRAS"


def skipped_for_a_missing_extra(report: pytest.TestReport) -> bool:
    """Whether ``report`` is a skip by ``pytest.importorskip`` of one of :data:`EXTRA_MODULES`."""
    if not report.skipped or not isinstance(report.longrepr, tuple):
        return False
    reason = str(report.longrepr[2])
    return any(f"could not import {module!r}" in reason for module in EXTRA_MODULES)


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    """Record the tests skipped for a missing extra (on the controller, also under pytest-xdist)."""
    record = os.environ.get(SKIPPED_FOR_EXTRAS_ENV)
    if record and not os.environ.get("PYTEST_XDIST_WORKER") and skipped_for_a_missing_extra(report):
        with open(record, "a", encoding="utf-8") as handle:
            handle.write(f"{report.nodeid}\n")


@pytest.fixture
def offline_hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty torch hub cache (``TORCH_HOME`` in the test's folder) on a machine whose downloads fail as offline
    ones do; returns the folder torchvision's weights API looks in (``<TORCH_HOME>/hub/checkpoints``)."""
    from urllib.error import URLError

    def offline(url, *args, **kwargs):
        raise URLError("no network")

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    return tmp_path / "hub" / "checkpoints"


def tiny_synthetic(image_size: int = 32, subset: str = "obvious", **params):
    """A small, very obvious synthetic subset: what smoke fits are judged on."""
    from medad.datasets.synthetic import SyntheticHeadCT

    defaults = dict(n_train=64, n_val=16, n_test=40, n_anomaly_pool=8,
                    lesion_radius=[0.14, 0.18], lesion_contrast=[0.25, 0.3])
    return SyntheticHeadCT(image_size=image_size, **{**defaults, **params}).load(subset)


@pytest.fixture(scope="session")
def tiny_subset():
    return tiny_synthetic()


def write_config(path: Path, *, detectors: list[dict], name: str = "tiny", image_size: int = 32,
                 seeds: tuple[int, ...] = (0,), subsets: tuple[str, ...] = ("obvious",), dataset_params=None) -> Path:
    """A YAML config over the tiny synthetic dataset."""
    import yaml

    params = dataset_params or {"n_train": 48, "n_val": 12, "n_test": 24}
    config = {"name": name, "image_size": image_size, "seeds": list(seeds), "device": "cpu",
              "datasets": [{"name": "synthetic", "subsets": list(subsets), "params": params}],
              "detectors": detectors}
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path
