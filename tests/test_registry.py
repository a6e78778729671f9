"""Registries: decorator, duplicates, unknown names, class paths and plugin entry points."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from medad.detectors.ae import AEDetector
from medad.registry import DATASETS, DETECTORS, Registry, RegistryError, register_detector
from tests.conftest import REPO_ROOT, write_config


def test_builtins_are_registered():
    assert "ae" in DETECTORS.names()
    assert "synthetic" in DATASETS.names()
    assert DETECTORS.get("ae") is AEDetector


def test_unknown_name_lists_known_names():
    with pytest.raises(RegistryError) as error:
        DETECTORS.get("no-such-detector")
    message = str(error.value)
    assert "no-such-detector" in message and "ae" in message


def test_duplicate_name_is_an_error_naming_the_owner():
    with pytest.raises(RegistryError) as error:
        @register_detector("ae")
        class Another(AEDetector):
            pass
    assert "already registered" in str(error.value) and "AEDetector" in str(error.value)


def test_names_must_be_kebab_case():
    registry = Registry("thing", "medad.none", "medad.detectors")
    with pytest.raises(ValueError):
        registry.register("Not_Kebab")


def test_dotted_class_path_works_without_registration():
    cls = DETECTORS.get("tests.support.detectors:TemplateDistance")
    assert cls.__name__ == "TemplateDistance"
    with pytest.raises(RegistryError):
        DETECTORS.get("tests.support.detectors:Missing")


def test_medad_list_prints_both_registries():
    result = subprocess.run([sys.executable, "-m", "medad", "list"], capture_output=True, text=True, check=True)
    assert result.stdout.startswith("detectors (") and "\ndatasets:" in result.stdout
    assert "\n  ae " in result.stdout and "\n  synthetic " in result.stdout


def test_plugin_package_registers_through_entry_point_and_runs(tmp_path):
    """Install examples/plugin_detector into a private folder; `medad run` finds it via its entry point."""
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                    "--target", str(target), str(REPO_ROOT / "examples" / "plugin_detector")], check=True)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(target), str(REPO_ROOT)])}
    listing = subprocess.run([sys.executable, "-m", "medad", "list"], capture_output=True, text=True, env=env, check=True)
    assert "mean-deviation" in listing.stdout
    config = write_config(tmp_path / "plugin.yaml", detectors=[{"name": "mean-deviation"}])
    run = subprocess.run([sys.executable, "-m", "medad", "run", "--config", str(config), "--results", str(tmp_path / "r"),
                          "--run-id", "plugin", "--quiet"], capture_output=True, text=True, env=env)
    assert run.returncode == 0, run.stderr
    metrics = (tmp_path / "r" / "plugin" / "metrics.csv").read_text()
    assert "mean-deviation" in metrics and "roc_auc" in metrics
    plugin = REPO_ROOT / "examples" / "plugin_detector"  # its own pyproject.toml as the configuration, as in its repo
    own = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-c", str(plugin / "pyproject.toml"),
                          "--rootdir", str(plugin), str(plugin / "tests")],
                         capture_output=True, text=True, env=env, cwd=tmp_path)
    assert own.returncode == 0 and "8 passed" in own.stdout, own.stdout + own.stderr
