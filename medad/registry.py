"""Name -> class registries for detectors and datasets, with plugin entry points.

A built-in class registers itself with ``@register_detector("name")`` / ``@register_dataset("name")``.
A package outside medad registers through the entry-point groups ``medad.detectors`` and
``medad.datasets``: each entry point names a module (or a class) that is imported on first lookup,
and importing it runs the decorators. A dotted ``package.module:Class`` path also works without
registration, for a quick experiment.
"""

from __future__ import annotations

import importlib
import re
from importlib import metadata
from typing import Generic, TypeVar

T = TypeVar("T", bound=type)

_NAME_PATTERN = re.compile(r"^[a-z0-9]+(-[a-z0-9]+)*$")


class RegistryError(KeyError):
    """An unknown or duplicate registry name."""

    def __str__(self) -> str:  # KeyError quotes its message; show it plainly
        return str(self.args[0]) if self.args else ""


class Registry(Generic[T]):
    """A name -> class map filled by a decorator and by entry points."""

    def __init__(self, kind: str, entry_point_group: str, builtin_package: str) -> None:
        self.kind = kind
        self.entry_point_group = entry_point_group
        self.builtin_package = builtin_package
        self._classes: dict[str, T] = {}
        self._loaded = False

    def register(self, name: str):
        """Class decorator: register ``cls`` under ``name`` (lower-case kebab-case)."""
        if not _NAME_PATTERN.match(name):
            raise ValueError(f"{self.kind} name {name!r} must be lower-case kebab-case, like 'multi-kd'")

        def decorator(cls: T) -> T:
            existing = self._classes.get(name)
            if existing is not None and existing is not cls:
                raise RegistryError(
                    f"{self.kind} name {name!r} is already registered by "
                    f"{existing.__module__}.{existing.__qualname__}; "
                    f"choose another name (known: {', '.join(sorted(self._classes))})"
                )
            cls.name = name
            self._classes[name] = cls
            return cls

        return decorator

    def _load(self) -> None:
        if self._loaded:
            return
        self._loaded = True
        importlib.import_module(self.builtin_package)
        for entry_point in metadata.entry_points(group=self.entry_point_group):
            try:
                entry_point.load()
            except Exception as error:  # a broken plugin must not hide the built-ins
                raise RegistryError(
                    f"plugin entry point {entry_point.name!r} = {entry_point.value!r} in group "
                    f"{self.entry_point_group!r} failed to import: {type(error).__name__}: {error}"
                ) from error

    def names(self) -> list[str]:
        """All registered names, sorted."""
        self._load()
        return sorted(self._classes)

    def get(self, name: str) -> T:
        """The class registered under ``name``, or the class at a dotted ``module:Class`` path."""
        self._load()
        if name in self._classes:
            return self._classes[name]
        if ":" in name:
            module_name, _, class_name = name.partition(":")
            try:
                return getattr(importlib.import_module(module_name), class_name)
            except (ImportError, AttributeError) as error:
                raise RegistryError(f"cannot import {self.kind} class path {name!r}: {error}") from error
        raise RegistryError(
            f"unknown {self.kind} {name!r}; known {self.kind}s: {', '.join(self.names())}"
        )

    def items(self) -> list[tuple[str, T]]:
        """(name, class) pairs, sorted by name."""
        self._load()
        return sorted(self._classes.items())


DETECTORS: Registry = Registry("detector", "medad.detectors", "medad.detectors")
DATASETS: Registry = Registry("dataset", "medad.datasets", "medad.datasets")


def register_detector(name: str):
    """Register a :class:`medad.detectors.base.Detector` subclass under ``name``."""
    return DETECTORS.register(name)


def register_dataset(name: str):
    """Register a :class:`medad.datasets.base.Dataset` subclass under ``name``."""
    return DATASETS.register(name)
