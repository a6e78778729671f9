"""The YAML run matrix: loading and validation with errors that name the key.

Schema (DESIGN.md)::

    name: default
    image_size: 64
    channels: 1
    seeds: [0]
    device: auto
    memory_format: auto                # auto (channels_last on CUDA), channels_last or contiguous
    precision: fp32                    # fp32, or bf16 (autocast; rows tagged precision=bf16)
    score_batch_size: 64
    save_checkpoints: false
    resources: {cpus: 1, gpus: 1, memory_gb: 16, time_min: 240}   # optional: what each job asks a cluster for
    datasets:
      - name: synthetic
        subsets: [obvious, subtle]   # omitted: every subset
        root: /data/synthetic        # optional; default <data-root>/<name>
        params: {n_train: 300}
    detectors:
      - name: ae
        label: ae-small              # optional; the name in CSVs (default: name)
        params: {epochs: 10}
        resources: {memory_gb: 32}   # optional; overrides the top-level resources for this detector's jobs

Detector and dataset ``params`` are checked against the keyword arguments of the class's
``__init__``: an unknown key lists the allowed ones, a wrong type names the expected one.
"""

from __future__ import annotations

import inspect
import types
import typing
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from medad.benchmark.acceleration import MEMORY_FORMATS, PRECISIONS
from medad.benchmark.registry import DATASETS, DETECTORS, RegistryError


class ConfigError(ValueError):
    """The config is malformed; the message names the key and what is allowed."""


@dataclass
class DatasetEntry:
    name: str
    subsets: list[str]
    params: dict[str, Any] = field(default_factory=dict)
    root: str | None = None


@dataclass
class DetectorEntry:
    name: str
    label: str
    params: dict[str, Any] = field(default_factory=dict)
    resources: dict[str, Any] = field(default_factory=dict)
    # Per-entry overrides (a paper's own input size), and the datasets it runs on ("name" or "name/subset");
    # None: the top-level image_size/channels, every dataset of the config.
    image_size: int | None = None
    channels: int | None = None
    datasets: list[str] | None = None

    def runs_on(self, dataset: str, subset: str) -> bool:
        """Whether this detector entry takes part in the ``dataset``/``subset`` cells of the matrix."""
        return self.datasets is None or dataset in self.datasets or f"{dataset}/{subset}" in self.datasets


@dataclass
class RunConfig:
    name: str
    image_size: int
    channels: int
    seeds: list[int]
    device: str
    score_batch_size: int
    save_checkpoints: bool
    datasets: list[DatasetEntry]
    detectors: list[DetectorEntry]
    resources: dict[str, Any] = field(default_factory=dict)
    memory_format: str = "auto"
    precision: str = "fp32"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


_TOP_KEYS = {
    "name": str, "image_size": int, "channels": int, "seeds": list, "device": str,
    "score_batch_size": int, "save_checkpoints": bool, "datasets": list, "detectors": list, "resources": dict,
    "memory_format": str, "precision": str,
}
_DEFAULTS = {"channels": 1, "seeds": [0], "device": "auto", "score_batch_size": 64, "save_checkpoints": False,
             "resources": {}, "memory_format": "auto", "precision": "fp32"}
# What a job may ask a cluster (Ray, SLURM) for; the smallest value each may take.
RESOURCE_KEYS = {"cpus": 1, "gpus": 0, "memory_gb": 0, "time_min": 1}
_REQUIRED = ("name", "image_size", "datasets", "detectors")
_DEVICES = ("auto", "cpu", "cuda")
# Arguments the harness passes itself; a config may not set them in params.
_HARNESS_ARGS = {"self", "image_size", "channels", "device", "seed", "root", "split_seed"}


def check_device(key: str, value: str) -> None:
    """Raise ConfigError unless ``value`` is auto, cpu, cuda or cuda:N."""
    if value not in _DEVICES and not (value.startswith("cuda:") and value[5:].isdigit()):
        raise ConfigError(f"{key}: expected one of {', '.join(_DEVICES)} (or cuda:N), got {value!r}")


def check_choice(key: str, value: str, choices: tuple[str, ...]) -> None:
    """Raise ConfigError unless ``value`` is one of ``choices``."""
    if value not in choices:
        raise ConfigError(f"{key}: expected one of {', '.join(choices)}, got {value!r}")


def check_resources(where: str, resources: Any) -> dict[str, Any]:
    """Validate a ``resources`` mapping (cpus, gpus, memory_gb, time_min: numbers, each at least its minimum)."""
    if resources is None:
        return {}
    if not isinstance(resources, dict):
        raise ConfigError(f"{where}: expected a mapping like {{cpus: 1, gpus: 1}}, got {type(resources).__name__}")
    for key, value in resources.items():
        if key not in RESOURCE_KEYS:
            raise ConfigError(f"{where}.{key}: unknown resource; allowed: {', '.join(RESOURCE_KEYS)}")
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value < RESOURCE_KEYS[key]:
            raise ConfigError(f"{where}.{key}: expected a number >= {RESOURCE_KEYS[key]}, got {value!r}")
    return dict(resources)


def _type_name(expected: Any) -> str:
    return getattr(expected, "__name__", str(expected))


def _check_type(key: str, value: Any, expected: Any) -> None:
    """Raise ConfigError unless ``value`` fits the annotation ``expected`` (simple types only)."""
    if expected is inspect.Parameter.empty or expected is Any:
        return
    origin = typing.get_origin(expected)
    if origin in (typing.Union, types.UnionType):
        options = [o for o in typing.get_args(expected) if o is not type(None)]
        if value is None and len(options) < len(typing.get_args(expected)):
            return
        if len(options) == 1:
            return _check_type(key, value, options[0])
        for option in options:
            try:
                return _check_type(key, value, option)
            except ConfigError:
                continue
        raise ConfigError(f"{key}: expected {' or '.join(_type_name(o) for o in options)}, got {type(value).__name__} {value!r}")
    if expected is type(None):
        if value is not None:
            raise ConfigError(f"{key}: expected null, got {value!r}")
        return
    base = origin or expected
    if base in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {type(value).__name__} {value!r}")
        args = [a for a in typing.get_args(expected) if a is not Ellipsis]
        for i, item in enumerate(value if args else ()):
            _check_type(f"{key}[{i}]", item, args[0])
        return
    if base is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {type(value).__name__} {value!r}")
        return
    if base is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    elif base is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif isinstance(base, type):
        ok = isinstance(value, base)
    else:
        ok = True  # annotations we do not check (Literal, callables...)
    if not ok:
        raise ConfigError(f"{key}: expected {_type_name(base)}, got {type(value).__name__} {value!r}")


def hyperparameters(cls: type) -> dict[str, inspect.Parameter]:
    """The keyword arguments of ``cls.__init__`` a config may set, with their defaults and hints.

    An ``__init__`` that forwards ``**kwargs`` also accepts its parent classes' keyword arguments.
    """
    params = {}
    for klass in cls.__mro__:
        init = klass.__dict__.get("__init__")
        if init is None or klass is object:
            continue
        hints = typing.get_type_hints(init)
        forwards = False
        for name, parameter in inspect.signature(init).parameters.items():
            forwards = forwards or parameter.kind == parameter.VAR_KEYWORD
            if name in _HARNESS_ARGS or parameter.kind in (parameter.VAR_KEYWORD, parameter.VAR_POSITIONAL):
                continue
            params.setdefault(name, parameter.replace(annotation=hints.get(name, parameter.annotation)))
        if not forwards:
            break
    return params


def check_params(where: str, cls: type, params: Any) -> dict[str, Any]:
    """Validate ``params`` for ``cls``: known keys, right types."""
    if params is None:
        return {}
    if not isinstance(params, dict):
        raise ConfigError(f"{where}.params: expected a mapping of hyper-parameters, got {type(params).__name__}")
    allowed = hyperparameters(cls)
    for key, value in params.items():
        if key not in allowed:
            raise ConfigError(f"{where}.params.{key}: unknown parameter of {cls.name or cls.__name__!r}; "
                              f"allowed: {', '.join(sorted(allowed)) or '(none)'}")
        _check_type(f"{where}.params.{key}", value, allowed[key].annotation)
    return dict(params)


def _check_keys(where: str, entry: Any, allowed: set[str], required: tuple[str, ...]) -> dict[str, Any]:
    if not isinstance(entry, dict):
        raise ConfigError(f"{where}: expected a mapping, got {type(entry).__name__} {entry!r}")
    for key in entry:
        if key not in allowed:
            raise ConfigError(f"{where}.{key}: unknown key; allowed: {', '.join(sorted(allowed))}")
    for key in required:
        if key not in entry:
            raise ConfigError(f"{where}.{key}: missing (required)")
    return entry


def _lookup(registry, where: str, name: Any):
    if not isinstance(name, str):
        raise ConfigError(f"{where}.name: expected a string, got {name!r}")
    try:
        return registry.get(name)
    except RegistryError as error:
        raise ConfigError(f"{where}.name: {error}") from None


def _check_image_format(prefix: str, entry: dict[str, Any]) -> None:
    """``image_size`` (an int >= 8) and ``channels`` (1 or 3), where the mapping sets them."""
    if entry.get("image_size") is not None:
        _check_type(f"{prefix}image_size", entry["image_size"], int)
        if entry["image_size"] < 8:
            raise ConfigError(f"{prefix}image_size: expected an integer >= 8, got {entry['image_size']}")
    if entry.get("channels") is not None and entry["channels"] not in (1, 3):
        raise ConfigError(f"{prefix}channels: expected 1 or 3, got {entry['channels']!r}")


def _check_dataset_restriction(where: str, only: Any, datasets: list[DatasetEntry]) -> None:
    """A detector entry's ``datasets``: names or name/subset pairs, each among the config's datasets."""
    _check_type(where, only, list[str])
    cells = {d.name for d in datasets} | {f"{d.name}/{s}" for d in datasets for s in d.subsets}
    for item in only:
        if item not in cells:
            raise ConfigError(f"{where}: {item!r} is not a dataset or dataset/subset of this config; "
                              f"it has: {', '.join(sorted(cells))}")


def parse_config(raw: Any, source: str = "<config>") -> RunConfig:
    """Validate a loaded YAML mapping and fill defaults."""
    top = _check_keys(source, raw, set(_TOP_KEYS), _REQUIRED)
    values = {**_DEFAULTS, **top}
    for key, expected in _TOP_KEYS.items():
        _check_type(key, values[key], expected)
    _check_image_format("", values)
    check_device("device", values["device"])
    check_choice("memory_format", values["memory_format"], MEMORY_FORMATS)
    check_choice("precision", values["precision"], PRECISIONS)
    for i, seed in enumerate(values["seeds"]):
        _check_type(f"seeds[{i}]", seed, int)
    if not values["seeds"]:
        raise ConfigError("seeds: expected at least one seed")
    if not values["datasets"] or not values["detectors"]:
        raise ConfigError("datasets and detectors: each needs at least one entry")

    datasets = []
    for i, entry in enumerate(values["datasets"]):
        where = f"datasets[{i}]"
        entry = _check_keys(where, entry, {"name", "subsets", "params", "root"}, ("name",))
        cls = _lookup(DATASETS, where, entry["name"])
        subsets = entry.get("subsets") or list(cls.subsets)
        _check_type(f"{where}.subsets", subsets, list[str])
        for subset in subsets:
            if subset not in cls.subsets:
                raise ConfigError(f"{where}.subsets: {entry['name']!r} has no subset {subset!r}; its subsets: {', '.join(cls.subsets)}")
        if entry.get("root") is not None:
            _check_type(f"{where}.root", entry["root"], str)
        datasets.append(DatasetEntry(entry["name"], list(subsets), check_params(where, cls, entry.get("params")), entry.get("root")))

    detectors = []
    for i, entry in enumerate(values["detectors"]):
        where = f"detectors[{i}]"
        entry = _check_keys(where, entry, {"name", "label", "params", "resources", "image_size", "channels", "datasets"},
                            ("name",))
        cls = _lookup(DETECTORS, where, entry["name"])
        label = entry.get("label", entry["name"])
        _check_type(f"{where}.label", label, str)
        _check_image_format(f"{where}.", entry)
        only = entry.get("datasets")
        if only is not None:
            _check_dataset_restriction(f"{where}.datasets", only, datasets)
        detectors.append(DetectorEntry(entry["name"], label, check_params(where, cls, entry.get("params")),
                                       check_resources(f"{where}.resources", entry.get("resources")),
                                       entry.get("image_size"), entry.get("channels"), only))
    labels = [d.label for d in detectors]
    duplicated = sorted({label for label in labels if labels.count(label) > 1})
    if duplicated:
        raise ConfigError(f"detectors: label {duplicated[0]!r} appears twice; give each entry its own 'label'")

    return RunConfig(
        name=values["name"], image_size=values["image_size"], channels=values["channels"],
        seeds=list(values["seeds"]), device=values["device"], score_batch_size=values["score_batch_size"],
        save_checkpoints=values["save_checkpoints"], datasets=datasets, detectors=detectors,
        resources=check_resources("resources", values["resources"]),
        memory_format=values["memory_format"], precision=values["precision"],
    )


def load_config(path: str | Path) -> RunConfig:
    """Read and validate a YAML config file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {str(path)!r} does not exist")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: not valid YAML: {error}") from None
    return parse_config(raw, source=str(path))


def narrow(config: RunConfig, *, detectors: list[str] | None = None, datasets: list[str] | None = None,
           seeds: list[int] | None = None, device: str | None = None, memory_format: str | None = None,
           precision: str | None = None) -> RunConfig:
    """The config restricted to the named detectors (names or labels), datasets and seeds (CLI flags)."""
    if detectors:
        known = {d.label for d in config.detectors} | {d.name for d in config.detectors}
        unknown = [d for d in detectors if d not in known]
        if unknown:
            raise ConfigError(f"--detectors: {unknown[0]!r} is not in the config; it has: {', '.join(sorted(known))}")
        config.detectors = [d for d in config.detectors if d.label in detectors or d.name in detectors]
    if datasets:
        known = {d.name for d in config.datasets}
        unknown = [d for d in datasets if d not in known]
        if unknown:
            raise ConfigError(f"--datasets: {unknown[0]!r} is not in the config; it has: {', '.join(sorted(known))}")
        config.datasets = [d for d in config.datasets if d.name in datasets]
    if seeds:
        config.seeds = list(seeds)
    if device:
        check_device("--device", device)
        config.device = device
    if memory_format:
        check_choice("--memory-format", memory_format, MEMORY_FORMATS)
        config.memory_format = memory_format
    if precision:
        check_choice("--precision", precision, PRECISIONS)
        config.precision = precision
    return config
