"""Registries: decorator, duplicates, unknown names, class paths and plugin entry points."""

from __future__ import annotations

import os
import subprocess
import sys
import types
from importlib import metadata

import pandas as pd
import pytest

from medad.detectors.ae import AEDetector
from medad.registry import DATASETS, DETECTORS, Registry, RegistryError, register_detector
from tests.conftest import REPO_ROOT, write_config
from tests.support.detectors import TemplateDistance


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
    registry = Registry("thing", "medad.none", "medad.detectors", "medad.detectors.base:Detector")
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


@pytest.mark.processes
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


# ---- entry points: a class, a module, and what is refused ------------------------------------------------------


class FakeDistribution:
    def __init__(self, name: str) -> None:
        self.name = name


class FakeEntryPoint:
    """What ``importlib.metadata.entry_points`` yields, with ``load`` replaced by ``loader``."""

    def __init__(self, name: str, value: str, package: str, loader) -> None:
        self.name, self.value, self.dist, self.loader = name, value, FakeDistribution(package), loader

    def load(self):
        return self.loader()


class PatchDistance(TemplateDistance):
    """A plugin detector with no decorator: its entry point names the class."""


class OtherPatchDistance(TemplateDistance):
    """A second plugin's class that wants the same name."""


def registry_with_entry_points(monkeypatch, *entry_points: FakeEntryPoint) -> Registry:
    """A fresh detector registry (AEDetector as its one built-in) whose group yields ``entry_points``."""
    registry = Registry("detector", "medad.test-plugins", "medad.detectors", "medad.detectors.base:Detector")
    registry.register("ae")(AEDetector)
    real = metadata.entry_points
    monkeypatch.setattr(metadata, "entry_points",
                        lambda **kw: list(entry_points) if kw.get("group") == "medad.test-plugins" else real(**kw))
    return registry


def test_class_entry_point_registers_the_class_under_its_name(monkeypatch):
    registry = registry_with_entry_points(monkeypatch, FakeEntryPoint(
        "patch-distance", "my_plugin:PatchDistance", "my-plugin", lambda: PatchDistance))
    assert registry.get("patch-distance") is PatchDistance and PatchDistance.name == "patch-distance"
    assert registry.names() == ["ae", "patch-distance"]


def test_module_entry_point_registers_by_importing(monkeypatch):
    def import_module():   # what importing a plugin module does: its decorator runs
        registry.register("row-distance")(OtherPatchDistance)
        return types.ModuleType("my_plugin.registered")

    registry = registry_with_entry_points(monkeypatch, FakeEntryPoint(
        "row-distance", "my_plugin.registered", "my-plugin", import_module))
    assert registry.get("row-distance") is OtherPatchDistance


def test_module_entry_point_that_registers_nothing_names_the_package(monkeypatch):
    registry = registry_with_entry_points(monkeypatch, FakeEntryPoint(
        "row-distance", "my_plugin.empty", "my-plugin", lambda: types.ModuleType("my_plugin.empty")))
    with pytest.raises(RegistryError) as error:
        registry.names()
    message = str(error.value)
    assert "of package 'my-plugin'" in message and "registered no detector named 'row-distance'" in message
    assert "expected a subclass of medad.detectors.base.Detector" in message
    with pytest.raises(RegistryError, match="registered no detector"):   # again on the next lookup, not a partial registry
        registry.get("ae")


def test_entry_point_name_taken_is_an_error_naming_both_packages(monkeypatch):
    builtin = registry_with_entry_points(monkeypatch, FakeEntryPoint("ae", "my_plugin:PatchDistance", "my-plugin",
                                                                      lambda: PatchDistance))
    with pytest.raises(RegistryError) as error:
        builtin.names()
    assert "of package 'my-plugin'" in str(error.value)
    assert "already registered by medad.detectors.ae.AEDetector (package 'medad')" in str(error.value)
    two_plugins = registry_with_entry_points(
        monkeypatch, FakeEntryPoint("patch-distance", "my_plugin:PatchDistance", "my-plugin", lambda: PatchDistance),
        FakeEntryPoint("patch-distance", "their_plugin:Other", "their-plugin", lambda: OtherPatchDistance))
    with pytest.raises(RegistryError) as error:
        two_plugins.names()
    message = str(error.value)
    assert "of package 'their-plugin'" in message
    assert f"already registered by {__name__}.PatchDistance (package 'my-plugin')" in message


def test_module_entry_point_taking_a_name_is_an_error_naming_both_packages(monkeypatch):
    def registers(name: str):
        def import_module():   # what importing a plugin module does: its decorator runs
            registry.register(name)(OtherPatchDistance)
            return types.ModuleType("their_plugin.detectors")
        return import_module

    registry = registry_with_entry_points(monkeypatch, FakeEntryPoint("ae", "their_plugin.detectors", "their-plugin",
                                                                      registers("ae")))
    with pytest.raises(RegistryError) as error:
        registry.names()
    message = str(error.value)
    assert "'ae' = 'their_plugin.detectors' of package 'their-plugin'" in message and "failed to import" not in message
    assert f"detector name 'ae' of {__name__}.OtherPatchDistance (package 'their-plugin')" in message
    assert "already registered by medad.detectors.ae.AEDetector (package 'medad')" in message

    registry = registry_with_entry_points(
        monkeypatch, FakeEntryPoint("patch-distance", "my_plugin:PatchDistance", "my-plugin", lambda: PatchDistance),
        FakeEntryPoint("patch-distance", "their_plugin.detectors", "their-plugin", registers("patch-distance")))
    with pytest.raises(RegistryError) as error:
        registry.names()
    message = str(error.value)
    assert f"of {__name__}.OtherPatchDistance (package 'their-plugin')" in message
    assert f"already registered by {__name__}.PatchDistance (package 'my-plugin')" in message


@pytest.mark.parametrize("loaded, what", [
    (lambda images: images.mean(), "resolves to a function"),
    (PatchDistance(image_size=8, channels=1), "resolves to a PatchDistance"),
    (dict, "class builtins.dict, which is not a Detector subclass"),
])
def test_entry_point_to_anything_but_a_detector_class_names_the_package(monkeypatch, loaded, what):
    registry = registry_with_entry_points(monkeypatch, FakeEntryPoint("patch-distance", "my_plugin:thing", "my-plugin",
                                                                      lambda: loaded))
    with pytest.raises(RegistryError) as error:
        registry.names()
    message = str(error.value)
    assert "'patch-distance' = 'my_plugin:thing' of package 'my-plugin'" in message and what in message
    assert ("expected a subclass of medad.detectors.base.Detector (patch-distance = \"module:Class\") or a module that "
            "registers 'patch-distance' when imported") in message


def test_entry_point_name_must_be_kebab_case(monkeypatch):
    registry = registry_with_entry_points(monkeypatch, FakeEntryPoint("Patch_Distance", "my_plugin:PatchDistance",
                                                                      "my-plugin", lambda: PatchDistance))
    with pytest.raises(RegistryError, match="of package 'my-plugin'.*must be lower-case kebab-case"):
        registry.names()


THROWAWAY_PLUGIN = {
    "pyproject.toml": """
[build-system]
requires = ["setuptools>=64"]
build-backend = "setuptools.build_meta"

[project]
name = "medad-throwaway-plugin"
version = "0.0.1"
dependencies = ["medad"]

[project.entry-points."medad.detectors"]
patch-distance = "my_plugin:PatchDistance"
row-distance = "my_plugin.registered"

[tool.setuptools]
packages = ["my_plugin"]
""",
    "my_plugin/__init__.py": '''
"""Distance of each 4 x 4 patch's mean to the training normals' mean: written against ``import medad`` only."""
import torch
import torch.nn.functional as F

import medad


class PatchDistance(medad.Detector):
    paper = "throwaway plugin: patch means against the training mean"

    def __init__(self, *, image_size, channels, device="cpu", seed=0, patch: int = 4):
        super().__init__(image_size=image_size, channels=channels, device=device, seed=seed)
        self.patch = patch
        self.template = torch.zeros(channels, image_size, image_size)

    def fit(self, train, val=None, log=None):
        self.template = train.float_images().mean(dim=0)
        (log or medad.TrainLog()).log(0, 0, template_mean=self.template.mean())

    def score_map(self, images):
        patches = F.avg_pool2d(images.float() - self.template.to(images.device), self.patch).abs().mean(dim=1)
        return F.interpolate(patches[:, None], scale_factor=self.patch, mode="nearest")[:, 0]

    def score(self, images):
        return self.score_map(images).flatten(1).amax(dim=1)

    def extra_state(self):
        return {"template": self.template}

    def load_extra_state(self, state):
        self.template = state["template"]
''',
    "my_plugin/registered.py": '''
import medad
from my_plugin import PatchDistance


@medad.register_detector("row-distance")
class RowDistance(PatchDistance):
    paper = "throwaway plugin: registered by its module's decorator"
''',
}


@pytest.mark.processes
def test_throwaway_plugin_of_each_form_lists_passes_the_kit_and_runs(tmp_path):
    """A package whose entry points name a class (no decorator) and a module; pip-installed into a private folder."""
    source = tmp_path / "plugin"
    for relpath, text in THROWAWAY_PLUGIN.items():
        (source / relpath).parent.mkdir(parents=True, exist_ok=True)
        (source / relpath).write_text(text.lstrip())
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                    "--target", str(target), str(source)], check=True)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(target), str(REPO_ROOT)])}
    listing = subprocess.run([sys.executable, "-m", "medad", "list"], capture_output=True, text=True, env=env, check=True)
    assert "\n  patch-distance " in listing.stdout and "\n  row-distance " in listing.stdout
    kit = subprocess.run([sys.executable, "-c", "from medad.testing import check_detector; check_detector('patch-distance')"],
                         capture_output=True, text=True, env=env, cwd=tmp_path)
    assert kit.returncode == 0, kit.stdout + kit.stderr
    config = write_config(tmp_path / "plugin.yaml", detectors=[{"name": "patch-distance"}, {"name": "row-distance"}],
                          seeds=(0, 1))
    run = subprocess.run([sys.executable, "-m", "medad", "run", "--config", str(config), "--results", str(tmp_path / "r"),
                          "--run-id", "plugin", "--quiet"], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    jobs = pd.read_csv(tmp_path / "r" / "plugin" / "jobs.csv")
    assert sorted(zip(jobs["detector"], jobs["seed"], jobs["status"])) == [
        ("patch-distance", 0, "done"), ("patch-distance", 1, "done"), ("row-distance", 0, "done"), ("row-distance", 1, "done")]
    metrics = pd.read_csv(tmp_path / "r" / "plugin" / "metrics.csv")
    assert set(metrics.loc[metrics["metric"] == "roc_auc", "detector"]) == {"patch-distance", "row-distance"}
