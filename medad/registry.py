"""Name -> class registries for detectors and datasets, with plugin entry points.

A built-in class registers itself with ``@register_detector("name")`` / ``@register_dataset("name")``.
A package outside medad registers through the entry-point groups ``medad.detectors`` and
``medad.datasets``, loaded on first lookup, in either of two forms:

- ``patch-distance = "my_plugin:PatchDistance"``: the entry point names the class (a subclass of the
  registry's base class, :class:`medad.Detector` or :class:`medad.Dataset`), which is registered under
  the entry point's name; it needs no decorator;
- ``patch-distance = "my_plugin.detectors"``: the entry point names a module whose import registers
  the name with the decorator.

Anything else is an error that names the package: an entry point that resolves to a function, an
instance or a class of another base, a module after whose import the name is still unknown, a name
that is not kebab-case, and a name already taken (by a built-in or another plugin). A dotted
``package.module:Class`` path also works without registration, for a quick experiment.

The base class is given as a dotted path and imported on first lookup, like the built-in package:
this module is the bottom layer and imports nothing of medad's above it.
"""

from __future__ import annotations

import importlib
import re
import types
from importlib import metadata
from typing import Generic, TypeVar

T = TypeVar("T", bound=type)

_NAME_PATTERN = re.compile(r"^[a-z0-9]+(-[a-z0-9]+)*$")


class RegistryError(KeyError):
    """An unknown or duplicate registry name."""

    def __str__(self) -> str:  # KeyError quotes its message; show it plainly
        return str(self.args[0]) if self.args else ""


def _import_object(path: str) -> object:
    """The object at a dotted ``package.module:attribute`` path."""
    module_name, _, attribute = path.partition(":")
    return getattr(importlib.import_module(module_name), attribute)


def _package_of_entry_point(entry_point: metadata.EntryPoint) -> str:
    """``package 'name'`` of the distribution that declares ``entry_point``, as far as it is known."""
    name = getattr(getattr(entry_point, "dist", None), "name", None)
    return f"package {name!r}" if name else "an unnamed package"


def _package_of_class(cls: type) -> str:
    """``module.Class (package 'name')``: where a registered class comes from."""
    top = cls.__module__.partition(".")[0]
    names = metadata.packages_distributions().get(top, [])
    where = f"package {names[0]!r}" if names else f"module {cls.__module__!r}"
    return f"{cls.__module__}.{cls.__qualname__} ({where})"


class Registry(Generic[T]):
    """A name -> class map filled by a decorator and by entry points.

    ``base`` is the dotted ``module:Class`` path of the class every entry-point class must subclass.
    """

    def __init__(self, kind: str, entry_point_group: str, builtin_package: str, base: str) -> None:
        self.kind = kind
        self.entry_point_group = entry_point_group
        self.builtin_package = builtin_package
        self.base = base
        self._classes: dict[str, T] = {}
        self._plugin_packages: dict[str, str] = {}   # name -> the plugin package that registered it
        self._importing: str | None = None   # the package of the plugin entry point being imported, if any
        self._loaded = False

    def register(self, name: str):
        """Class decorator: register ``cls`` under ``name`` (lower-case kebab-case)."""
        if not _NAME_PATTERN.match(name):
            raise ValueError(f"{self.kind} name {name!r} must be lower-case kebab-case, like 'multi-kd'")

        def decorator(cls: T) -> T:
            existing = self._classes.get(name)
            if existing is not None and existing is not cls:
                raise RegistryError(
                    f"{self.kind} name {name!r} of {self._where(cls, self._importing)} is already registered by "
                    f"{self._owner(name)}; one of the two must choose another name (known: "
                    f"{', '.join(sorted(self._classes))})"
                )
            cls.name = name
            self._classes[name] = cls
            if self._importing is not None:  # a plugin module's decorator, run by importing its entry point
                self._plugin_packages[name] = self._importing
            return cls

        return decorator

    @staticmethod
    def _where(cls: type, package: str | None) -> str:
        """``module.Class (package 'name')``, the package given (a plugin's) or looked up (:func:`_package_of_class`)."""
        return f"{cls.__module__}.{cls.__qualname__} ({package})" if package else _package_of_class(cls)

    def _owner(self, name: str) -> str:
        """Where the class registered as ``name`` comes from: its class path and its package."""
        return self._where(self._classes[name], self._plugin_packages.get(name))

    def _load(self) -> None:
        if self._loaded:
            return
        self._loaded = True   # before loading: a plugin may look a name up while it is imported
        try:
            importlib.import_module(self.builtin_package)
            base = _import_object(self.base)
            for entry_point in metadata.entry_points(group=self.entry_point_group):
                self._load_entry_point(entry_point, base)
        except BaseException:
            self._loaded = False   # the next lookup raises the same error instead of using a partial registry
            raise

    def _load_entry_point(self, entry_point: metadata.EntryPoint, base: type) -> None:
        """Register what one entry point names (a ``base`` subclass), or check that its module registered its name."""
        package = _package_of_entry_point(entry_point)
        where = f"plugin entry point {entry_point.name!r} = {entry_point.value!r} of {package} in group {self.entry_point_group!r}"
        expected = (f"expected a subclass of {base.__module__}.{base.__qualname__} ({entry_point.name} = \"module:Class\") "
                    f"or a module that registers {entry_point.name!r} when imported ({entry_point.name} = \"module\")")
        if not _NAME_PATTERN.match(entry_point.name):
            raise RegistryError(f"{where}: the name must be lower-case kebab-case, like 'multi-kd' (it becomes the "
                                f"{self.kind} name in configs and CSVs)")
        self._importing = package  # a module form registers with the decorator while it is imported
        try:
            loaded = entry_point.load()
        except RegistryError as error:  # its decorator took a name already registered: the error names both
            raise RegistryError(f"{where}: {error}") from error
        except Exception as error:  # a broken plugin must not hide the built-ins
            raise RegistryError(f"{where} failed to import: {type(error).__name__}: {error}") from error
        finally:
            self._importing = None
        if isinstance(loaded, types.ModuleType):
            if entry_point.name not in self._classes:
                raise RegistryError(f"{where}: importing module {loaded.__name__!r} registered no {self.kind} named "
                                    f"{entry_point.name!r} (known: {', '.join(sorted(self._classes))}); {expected}")
            return
        if not (isinstance(loaded, type) and issubclass(loaded, base)):
            what = (f"class {loaded.__module__}.{loaded.__qualname__}, which is not a {base.__qualname__} subclass"
                    if isinstance(loaded, type) else f"{type(loaded).__name__} {loaded!r:.80}")
            raise RegistryError(f"{where} resolves to a {what}; {expected}")
        existing = self._classes.get(entry_point.name)
        if existing is not None and existing is not loaded:
            raise RegistryError(f"{where}: {self.kind} name {entry_point.name!r} is already registered by "
                                f"{self._owner(entry_point.name)}; one of the two packages must choose another name")
        other_names = [name for name, cls in self._classes.items() if cls is loaded and name != entry_point.name]
        if other_names:
            raise RegistryError(f"{where}: its class is already registered as {other_names[0]!r}; give the entry point "
                                "the same name as the decorator, or drop one of the two")
        self.register(entry_point.name)(loaded)
        self._plugin_packages[entry_point.name] = package

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
            try:
                return _import_object(name)
            except (ImportError, AttributeError) as error:
                raise RegistryError(f"cannot import {self.kind} class path {name!r}: {error}") from error
        raise RegistryError(
            f"unknown {self.kind} {name!r}; known {self.kind}s: {', '.join(self.names())}"
        )

    def items(self) -> list[tuple[str, T]]:
        """(name, class) pairs, sorted by name."""
        self._load()
        return sorted(self._classes.items())


DETECTORS: Registry = Registry("detector", "medad.detectors", "medad.detectors", "medad.detectors.base:Detector")
DATASETS: Registry = Registry("dataset", "medad.datasets", "medad.datasets", "medad.datasets.base:Dataset")


def register_detector(name: str):
    """Register a :class:`medad.detectors.base.Detector` subclass under ``name``."""
    return DETECTORS.register(name)


def register_dataset(name: str):
    """Register a :class:`medad.datasets.base.Dataset` subclass under ``name``."""
    return DATASETS.register(name)
