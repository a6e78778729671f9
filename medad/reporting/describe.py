"""``medad describe NAME``: what a detector (or dataset) is and every hyper-parameter a config may set."""

from __future__ import annotations

import inspect
import re
import sys
import typing

from medad.benchmark.config import hyperparameters, type_text
from medad.registry import DATASETS, DETECTORS, RegistryError


def _lookup(name: str) -> tuple[str, type]:
    for kind, registry in (("detector", DETECTORS), ("dataset", DATASETS)):
        if name in registry.names():
            return kind, registry.get(name)
    try:
        return "detector", DETECTORS.get(name)
    except RegistryError:
        raise RegistryError(f"no detector or dataset {name!r}; detectors: {', '.join(DETECTORS.names())}; "
                            f"datasets: {', '.join(DATASETS.names())}") from None


def _docstring_line(cls: type, parameter: str) -> str:
    """The first line of the class's or its module's docstring that names ``parameter`` (as ``parameter``)."""
    texts = [inspect.getdoc(klass) or "" for klass in cls.__mro__ if klass is not object]
    texts += [inspect.getdoc(sys.modules.get(klass.__module__)) or "" for klass in cls.__mro__ if klass is not object]
    pattern = re.compile(rf"``{re.escape(parameter)}\b")
    for text in texts:
        for line in text.splitlines():
            if pattern.search(line):
                return re.sub(r"\s+", " ", line.strip().lstrip("-* "))
    return ""


def _module_doc(cls: type) -> str:
    """The docstring of the module that defines ``cls`` (a control's account of what it measures)."""
    return inspect.getdoc(sys.modules.get(cls.__module__)) or ""


def _default(value: object) -> str:
    return "(required)" if value is inspect.Parameter.empty else repr(value)


def describe(name: str) -> str:
    """The text ``medad describe`` prints."""
    kind, cls = _lookup(name)
    lines = [f"{name} ({kind}): {cls.paper or cls.__qualname__}"]
    if kind == "detector":
        lines.append(f"  supervision: {cls.supervision}; needs: {', '.join(cls.needs) or 'nothing beyond images'}")
        if getattr(cls, "control", False):
            lines.append("  role: CONTROL, a structure-blind reference: every detector is checked against it (the "
                         "report's 'Is it better than a shortcut?'); it is never ranked as a detector")
            lines += ["  what it measures:"] + [f"    {line}".rstrip() for line in _module_doc(cls).splitlines()]
        if getattr(cls, "paper_settings", ()):
            lines.append(f"  the paper's settings (a change is tagged in the rows): {', '.join(cls.paper_settings)}")
        if getattr(cls, "paper_image_size", None):
            lines.append(f"  the paper's input size: {cls.paper_image_size} px (another image_size is tagged in the rows)")
    else:
        lines.append(f"  subsets: {', '.join(cls.subsets)}; {'a download' if cls.needs_download else 'built in'}")
    summary = (inspect.getdoc(cls) or "").splitlines()
    if summary:
        lines.append(f"  {summary[0]}")
    lines.append("hyper-parameters (name: type and allowed range = default; the docstring's line):")
    for parameter, spec in sorted(hyperparameters(cls).items()):
        annotation = spec.annotation
        shown = "any" if annotation is inspect.Parameter.empty else type_text(annotation)
        if typing.get_origin(annotation) in (typing.Union, getattr(__import__("types"), "UnionType", None)):
            shown = " or ".join(type_text(a) for a in typing.get_args(annotation))
        lines.append(f"  {parameter}: {shown} = {_default(spec.default)}")
        doc = _docstring_line(cls, parameter)
        if doc:
            lines.append(f"      {doc[:150]}")
    return "\n".join(lines)
