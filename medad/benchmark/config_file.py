"""Reading a YAML config file safely: bounded size, no alias bombs, no duplicate keys, ``1e-3`` as a float.

A config is user input, so reading it must not be a way to exhaust the machine:

- the file must be UTF-8 text of at most :data:`MAX_CONFIG_BYTES` (a binary or non-UTF-8 file is an
  error naming it);
- YAML aliases let a tiny document describe a huge one (a "billion laughs" of nested aliases): the
  loaded document is measured *with every alias expanded*, stopping as soon as it exceeds
  :data:`MAX_CONFIG_VALUES` values, before anything copies, validates or prints it;
- a key given twice in one mapping is an error naming the key and both lines (PyYAML silently keeps
  the last one);
- ``1e-3`` and ``1.0e3`` are floats, as in YAML 1.2 and JSON (PyYAML's YAML 1.1 resolver reads them
  as strings);
- every value quoted in an error message is cut to about 100 characters (:func:`short_repr`).
"""

from __future__ import annotations

import re
import reprlib
from pathlib import Path
from typing import Any

import yaml

MAX_CONFIG_BYTES = 1 << 20
MAX_CONFIG_VALUES = 100_000
MAX_QUOTED = 100

_FLOAT_TAG = "tag:yaml.org,2002:float"
_MERGE_TAG = "tag:yaml.org,2002:merge"
# Exponent forms YAML 1.1 misses: 1e-3, 1E5, 2.5e3 (no sign), .5e-2; the built-in resolver keeps the rest.
_EXPONENT_FLOAT = re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$")

_REPR = reprlib.Repr()
_REPR.maxlevel, _REPR.maxdict, _REPR.maxlist, _REPR.maxtuple, _REPR.maxset = 2, 4, 6, 6, 6
_REPR.maxstring, _REPR.maxother, _REPR.maxlong = MAX_QUOTED, MAX_QUOTED, 40


class ConfigFileError(ValueError):
    """The config file cannot be read as a bounded YAML document; the message names the file."""


def short_repr(value: Any, limit: int = MAX_QUOTED) -> str:
    """``repr(value)`` cut to about ``limit`` characters, without ever building the whole repr."""
    text = _REPR.repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


class _ConfigLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate keys and reads exponent floats."""

    yaml_implicit_resolvers = {first: list(resolvers) for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()}

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == _MERGE_TAG:
                continue
            key = self.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            try:
                if key in seen:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"duplicate key {short_repr(key)} (lines {seen[key]} and {line})", key_node.start_mark)
                seen[key] = line
            except TypeError:
                raise yaml.constructor.ConstructorError(
                    None, None, f"a mapping key must be a plain value, got {short_repr(key)}", key_node.start_mark) from None
        return super().construct_mapping(node, deep=deep)


for _first in "-+0123456789.":
    _ConfigLoader.yaml_implicit_resolvers.setdefault(_first, []).append((_FLOAT_TAG, _EXPONENT_FLOAT))


def expanded_size(value: Any, limit: int = MAX_CONFIG_VALUES) -> int:
    """The number of values in ``value`` with shared (aliased) parts counted every time; stops past ``limit``."""
    count, stack = 0, [value]
    while stack:
        item = stack.pop()
        count += 1
        if count > limit:
            return count
        if isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, (list, tuple)):
            stack.extend(item)
    return count


def parse_yaml_text(text: str, source: str = "<config>") -> Any:
    """Load one bounded YAML document from ``text`` (see the module docstring); ConfigFileError names ``source``."""
    try:
        document = yaml.load(text, Loader=_ConfigLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.MarkedYAMLError as error:
        mark = error.problem_mark or error.context_mark
        where = f" line {mark.line + 1}:" if mark is not None else ""
        what = "" if isinstance(error, yaml.constructor.ConstructorError) else " not valid YAML:"
        raise ConfigFileError(f"{source}:{where}{what} {error.problem or error.context}") from None
    except yaml.YAMLError as error:
        raise ConfigFileError(f"{source}: not valid YAML: {short_repr(str(error), 300)}") from None
    if expanded_size(document) > MAX_CONFIG_VALUES:
        raise ConfigFileError(f"{source}: the document expands to more than {MAX_CONFIG_VALUES} values (through YAML "
                              "aliases?); a config is a small matrix: write it out without nested aliases")
    return document


def read_yaml_file(path: str | Path) -> Any:
    """The YAML document in ``path``, read as bounded UTF-8 text."""
    path = Path(path)
    if not path.is_file():
        raise ConfigFileError(f"config file {str(path)!r} does not exist")
    size = path.stat().st_size
    if size > MAX_CONFIG_BYTES:
        raise ConfigFileError(f"{path}: {size} bytes; a config is a YAML file of at most {MAX_CONFIG_BYTES} bytes")
    data = path.read_bytes()
    if b"\0" in data:
        raise ConfigFileError(f"{path}: a binary file (it holds NUL bytes); expected a YAML text file")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise ConfigFileError(f"{path}: not UTF-8 text (byte {error.start} is {data[error.start]:#04x}); "
                              "save the config as UTF-8") from None
    return parse_yaml_text(text, source=str(path))
