"""The YAML run matrix: loading and validation with errors that name the key.

Schema (DESIGN.md)::

    name: default
    image_size: 64
    channels: 1
    seeds: [0]
    device: auto
    memory_format: auto                # auto (= channels_last: faster on CUDA and CPU), channels_last or contiguous
    precision: fp32                    # fp32 (TF32 off on CUDA), tf32 (CUDA only) or bf16 (autocast); rows tagged
    deterministic: false               # true: deterministic algorithms (same seed, same numbers on CUDA too)
    test_curve: false                  # true: a test-set diagnostic, the test ROC AUC after every epoch (below)
    score_batch_size: 64
    save_checkpoints: false
    share_fits: true                   # jobs whose training is identical train once (medad.benchmark.fit_sharing)
    log_every: 50                      # training losses are read from the device every 50 logged steps (and per epoch)
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

``test_curve: true`` scores the labelled test set after every training epoch and records the ROC AUC in
history.csv (``diagnostic_test_roc_auc``), to show whether any epoch ranked anomalies above normals. It is a
test-set diagnostic: it never chooses an epoch, a threshold or a rank, never changes the fit (the job runner
restores the networks' modes and buffers and every random generator after each scoring), and every row of such
a run carries the tag ``diagnostics: test-curve``. It is refused (:func:`check_test_curve`) beside any detector
entry whose settings let labelled held-out images choose its weights or see the test set
(:meth:`~medad.detectors.base.Detector.held_out_label_use`), so that no selected epoch is ever read against a
curve drawn on the test set.
"""

from __future__ import annotations

import copy
import difflib
import inspect
import math
import types
import typing
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Annotated, Any, Literal

from medad.benchmark.acceleration import MEMORY_FORMATS, PRECISIONS
from medad.benchmark.config_file import ConfigFileError, parse_yaml_text, read_yaml_file, short_repr
from medad.benchmark.run_folder import run_id_problem
from medad.detectors.base import LOG_EVERY
from medad.params import PositiveInt, Range
from medad.registry import DATASETS, DETECTORS, RegistryError


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
    share_fits: bool = True
    deterministic: bool = False
    test_curve: bool = False
    log_every: int = LOG_EVERY

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


ImageSize = Annotated[int, Range(8, 4096)]
Seed = Annotated[int, Range(0, 2**32 - 1)]
_TOP_KEYS = {
    "name": str, "image_size": ImageSize, "channels": Literal[1, 3], "seeds": list[Seed], "device": str,
    "score_batch_size": PositiveInt, "save_checkpoints": bool, "datasets": list, "detectors": list, "resources": dict,
    "memory_format": Literal[MEMORY_FORMATS], "precision": Literal[PRECISIONS], "share_fits": bool,
    "deterministic": bool, "test_curve": bool, "log_every": PositiveInt,
}
_DEFAULTS = {"channels": 1, "seeds": [0], "device": "auto", "score_batch_size": 64, "save_checkpoints": False,
             "resources": {}, "memory_format": "auto", "precision": "fp32", "share_fits": True, "deterministic": False,
             "test_curve": False, "log_every": LOG_EVERY}
_DATASET_KEYS = ("name", "subsets", "params", "root")
_DETECTOR_KEYS = ("name", "label", "params", "resources", "image_size", "channels", "datasets")
# What a job may ask a cluster (Ray, SLURM) for; the smallest value each may take.
RESOURCE_KEYS = {"cpus": 1, "gpus": 0, "memory_gb": 0, "time_min": 1}
_REQUIRED = ("name", "image_size", "datasets", "detectors")
_DEVICES = ("auto", "cpu", "cuda")
# Arguments the harness passes itself; a config may not set them in params.
_HARNESS_ARGS = {"self", "image_size", "channels", "device", "seed", "root"}


def suggestion(word: Any, known: typing.Iterable[str], listing: str | None = None) -> str:
    """``; did you mean 'x'?`` for the closest known name (or ``""``), then ``listing`` (what is allowed) if given."""
    close = difflib.get_close_matches(str(word), list(known), n=1, cutoff=0.6)
    guess = f"; did you mean {close[0]!r}?" if close else ""
    if listing is None:
        return guess
    return f"{guess} Allowed: {listing}" if guess else f"; allowed: {listing}"


def key_text(key: Any) -> str:
    """A config key as shown in an error, cut to a readable length."""
    text = str(key)
    return text if len(text) <= 60 else text[:57] + "..."


def check_run_id(key: str, value: str) -> None:
    """Raise ConfigError unless ``value`` is one safe path component (a run id, or the config name it starts with)."""
    problem = run_id_problem(value)
    if problem:
        raise ConfigError(f"{key}: {problem}")


def check_device(key: str, value: str) -> None:
    """Raise ConfigError unless ``value`` is auto, cpu, cuda or cuda:N."""
    if value not in _DEVICES and not (value.startswith("cuda:") and value[5:].isdigit()):
        raise ConfigError(f"{key}: expected one of {', '.join(_DEVICES)} (or cuda:N), got {short_repr(value)}")


def check_choice(key: str, value: str, choices: tuple[str, ...]) -> None:
    """Raise ConfigError unless ``value`` is one of ``choices``."""
    if value not in choices:
        raise ConfigError(f"{key}: expected one of {', '.join(choices)}, got {short_repr(value)}")


def check_numerics(prefix: str, precision: str, deterministic: bool) -> None:
    """``deterministic`` turns TensorFloat-32 off, so it cannot go with ``precision: tf32``."""
    if deterministic and precision == "tf32":
        raise ConfigError(f"{prefix}deterministic: true turns TF32 off, and {prefix}precision is tf32: use precision fp32 "
                          "(or bf16) for a deterministic run")


def check_resources(where: str, resources: Any) -> dict[str, Any]:
    """Validate a ``resources`` mapping (cpus, gpus, memory_gb, time_min: numbers, each at least its minimum)."""
    if resources is None:
        return {}
    if not isinstance(resources, dict):
        raise ConfigError(f"{where}: expected a mapping like {{cpus: 1, gpus: 1}}, got {type(resources).__name__}")
    for key, value in resources.items():
        if key not in RESOURCE_KEYS:
            raise ConfigError(f"{where}.{key_text(key)}: unknown resource"
                              f"{suggestion(key, RESOURCE_KEYS, ', '.join(RESOURCE_KEYS))}")
        _check_type(f"{where}.{key}", value, Annotated[float, Range(RESOURCE_KEYS[key])])
    return dict(resources)


def type_text(expected: Any) -> str:
    """An annotation as a reader writes it: ``int >= 1``, ``one of 'a', 'b'``, ``float``."""
    if typing.get_origin(expected) is typing.Annotated:
        base, *extras = typing.get_args(expected)
        ranges = [e.describe() for e in extras if isinstance(e, Range)]
        return type_text(base) + (f" {' and '.join(ranges)}" if ranges else "")
    if typing.get_origin(expected) is typing.Literal:
        return "one of " + ", ".join(map(repr, typing.get_args(expected)))
    return getattr(expected, "__name__", str(expected))


def _got(value: Any) -> str:
    return f"{type(value).__name__} {short_repr(value)}"


def _check_type(key: str, value: Any, expected: Any) -> None:
    """Raise ConfigError unless ``value`` fits the annotation ``expected``.

    Simple types, ``X | None``, ``list[X]``, ``Literal[...]`` (the choices) and ``Annotated[X, Range(...)]``
    (the allowed interval, :mod:`medad.params`); floats must be finite.
    """
    if expected is inspect.Parameter.empty or expected is Any:
        return
    origin = typing.get_origin(expected)
    if origin is typing.Annotated:
        base, *extras = typing.get_args(expected)
        _check_type(key, value, base)
        for extra in extras:
            if isinstance(extra, Range) and value is not None and not extra.contains(value):
                raise ConfigError(f"{key}: expected {type_text(base)} {extra.describe()}, got {short_repr(value)}")
        return
    if origin is typing.Literal:
        choices = typing.get_args(expected)
        if not any(value == choice and type(value) is type(choice) for choice in choices):
            raise ConfigError(f"{key}: expected one of {', '.join(map(str, choices))}, got {short_repr(value)}")
        return
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
        raise ConfigError(f"{key}: expected {' or '.join(type_text(o) for o in options)}, got {_got(value)}")
    if expected is type(None):
        if value is not None:
            raise ConfigError(f"{key}: expected null, got {short_repr(value)}")
        return
    base = origin or expected
    if base in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {_got(value)}")
        args = [a for a in typing.get_args(expected) if a is not Ellipsis]
        for i, item in enumerate(value if args else ()):
            _check_type(f"{key}[{i}]", item, args[0])
        return
    if base is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {_got(value)}")
        return
    if base is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        if ok and not math.isfinite(value):
            raise ConfigError(f"{key}: expected a finite number, got {short_repr(value)}")
    elif base is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif isinstance(base, type):
        ok = isinstance(value, base)
    else:
        ok = True  # annotations we do not check (callables...)
    if not ok:
        raise ConfigError(f"{key}: expected {type_text(base)}, got {_got(value)}")


def hyperparameters(cls: type) -> dict[str, inspect.Parameter]:
    """The keyword arguments of ``cls.__init__`` a config may set, with their defaults and hints.

    An ``__init__`` that forwards ``**kwargs`` also accepts its parent classes' keyword arguments.
    """
    params = {}
    for klass in cls.__mro__:
        init = klass.__dict__.get("__init__")
        if init is None or klass is object:
            continue
        hints = typing.get_type_hints(init, include_extras=True)
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
            raise ConfigError(f"{where}.params.{key_text(key)}: unknown parameter of {cls.name or cls.__name__!r}"
                              f"{suggestion(key, allowed, ', '.join(sorted(allowed)) or '(none)')}")
        _check_type(f"{where}.params.{key}", value, allowed[key].annotation)
    check_settings = getattr(cls, "check_settings", None)
    if check_settings is not None:
        try:
            check_settings(params)
        except ValueError as error:
            raise ConfigError(f"{where}.params: {error}") from None
    return dict(params)


def _check_keys(where: str, entry: Any, allowed: typing.Iterable[str], required: tuple[str, ...]) -> dict[str, Any]:
    prefix = f"{where}." if where else ""
    if not isinstance(entry, dict):
        raise ConfigError(f"{where or 'the config'}: expected a mapping, got {_got(entry)}")
    for key in entry:
        if key not in allowed:
            raise ConfigError(f"{prefix}{key_text(key)}: unknown key{suggestion(key, allowed, ', '.join(sorted(allowed)))}")
    for key in required:
        if key not in entry:
            raise ConfigError(f"{prefix}{key}: missing (required)")
    return entry


def _lookup(registry, where: str, name: Any, base: type):
    """The class a config entry names: registered, or a dotted ``module:Class`` path to a ``base`` subclass."""
    if not isinstance(name, str):
        raise ConfigError(f"{where}.name: expected a string, got {_got(name)}")
    try:
        cls = registry.get(name)
    except RegistryError as error:
        raise ConfigError(f"{where}.name: {error}{suggestion(name, registry.names())}") from None
    if not (isinstance(cls, type) and issubclass(cls, base)):
        raise ConfigError(f"{where}.name: {short_repr(name)} is not a {base.__module__}.{base.__qualname__} subclass "
                          f"(it is {short_repr(cls)})")
    return cls


def _check_image_format(prefix: str, entry: dict[str, Any]) -> None:
    """``image_size`` (an int >= 8) and ``channels`` (1 or 3), where the mapping sets them."""
    if entry.get("image_size") is not None:
        _check_type(f"{prefix}image_size", entry["image_size"], ImageSize)
    if entry.get("channels") is not None:
        _check_type(f"{prefix}channels", entry["channels"], Literal[1, 3])


def _check_dataset_restriction(where: str, only: Any, datasets: list[DatasetEntry]) -> None:
    """A detector entry's ``datasets``: names or name/subset pairs, each among the config's datasets."""
    _check_type(where, only, list[str])
    cells = {d.name for d in datasets} | {f"{d.name}/{s}" for d in datasets for s in d.subsets}
    for item in only:
        if item not in cells:
            raise ConfigError(f"{where}: {short_repr(item)} is not a dataset or dataset/subset of this config; "
                              f"it has: {', '.join(sorted(cells))}")


def parse_config(raw: Any, source: str = "") -> RunConfig:
    """Validate a loaded YAML mapping and fill defaults; errors read ``SOURCE: KEY: what is wrong``."""
    try:
        return _parse(raw)
    except ConfigError as error:
        raise ConfigError(f"{source}: {error}" if source else str(error)) from None


def _parse(raw: Any) -> RunConfig:
    from medad.datasets.base import Dataset
    from medad.detectors.base import Detector

    top = _check_keys("", raw, _TOP_KEYS, _REQUIRED)
    values = {**_DEFAULTS, **top}
    for key, expected in _TOP_KEYS.items():
        _check_type(key, values[key], expected)
    check_run_id("name", values["name"])
    check_device("device", values["device"])
    check_numerics("", values["precision"], values["deterministic"])
    if not values["seeds"]:
        raise ConfigError("seeds: expected at least one seed")
    if not values["datasets"] or not values["detectors"]:
        raise ConfigError("datasets and detectors: each needs at least one entry")

    datasets = []
    for i, entry in enumerate(values["datasets"]):
        where = f"datasets[{i}]"
        entry = _check_keys(where, entry, _DATASET_KEYS, ("name",))
        cls = _lookup(DATASETS, where, entry["name"], Dataset)
        subsets = entry.get("subsets") or list(cls.subsets)
        _check_type(f"{where}.subsets", subsets, list[str])
        for subset in subsets:
            if subset not in cls.subsets:
                raise ConfigError(f"{where}.subsets: {entry['name']!r} has no subset {short_repr(subset)}"
                                  f"{suggestion(subset, cls.subsets)}; its subsets: {', '.join(cls.subsets)}")
        if entry.get("root") is not None:
            _check_type(f"{where}.root", entry["root"], str)
        datasets.append(DatasetEntry(entry["name"], list(subsets), check_params(where, cls, entry.get("params")),
                                     entry.get("root")))

    detectors = []
    for i, entry in enumerate(values["detectors"]):
        where = f"detectors[{i}]"
        entry = _check_keys(where, entry, _DETECTOR_KEYS, ("name",))
        cls = _lookup(DETECTORS, where, entry["name"], Detector)
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
        raise ConfigError(f"detectors: label {short_repr(duplicated[0])} appears twice; give each entry its own 'label'")

    return RunConfig(
        name=values["name"], image_size=values["image_size"], channels=values["channels"],
        seeds=list(values["seeds"]), device=values["device"], score_batch_size=values["score_batch_size"],
        save_checkpoints=values["save_checkpoints"], datasets=datasets, detectors=detectors,
        resources=check_resources("resources", values["resources"]),
        memory_format=values["memory_format"], precision=values["precision"], share_fits=values["share_fits"],
        deterministic=values["deterministic"], test_curve=values["test_curve"],
        log_every=values["log_every"],
    )


def check_test_curve(config: RunConfig) -> None:
    """Raise ConfigError when ``test_curve`` is on beside a detector entry whose settings let labelled held-out
    images choose its weights or see the test set (:meth:`~medad.detectors.base.Detector.held_out_label_use`:
    SURE-ROI's ``select: best_val_auroc``, GANomaly's ``protocol: reference`` best-epoch-on-test selection or its
    ``test_minmax``); the message names both keys. Checked on the matrix as it will run (after ``--detectors``),
    so a config whose other entries select can still run the diagnostic on the ones that do not."""
    if not config.test_curve:
        return
    for i, entry in enumerate(config.detectors):
        use = DETECTORS.get(entry.name).held_out_label_use(entry.params)
        if use is not None:
            key, _, value = use.partition(":")
            raise ConfigError(f"test_curve: true cannot run beside detectors[{i}].params.{key.strip()}: {value.strip()} "
                              f"(entry {entry.label!r}): labelled held-out images choose its weights or scale its "
                              "scores, and a test-set curve beside a selected epoch invites reading one against the "
                              "other; drop test_curve, or leave that entry out (--detectors)")


SHIPPED_CONFIGS = Path(__file__).resolve().parent.parent / "configs"
DEFAULT_CONFIG = "default"


def shipped_configs() -> list[str]:
    """The names of the configs shipped with medad (``default``, ``study``, ``papers``)."""
    return sorted(p.stem for p in SHIPPED_CONFIGS.glob("*.yaml"))


def config_path(name_or_path: str | Path) -> Path:
    """A config file: a path that exists, or the name of a shipped config (``study`` or ``study.yaml``)."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    shipped = SHIPPED_CONFIGS / f"{path.name.removesuffix('.yaml')}.yaml"
    if len(path.parts) <= 2 and shipped.is_file():  # "study", "study.yaml", the old "configs/study.yaml"
        return shipped
    raise ConfigError(f"config file {str(name_or_path)!r} does not exist; give a YAML file's path or a shipped "
                      f"config's name ({', '.join(shipped_configs())})")


def load_config(path: str | Path = DEFAULT_CONFIG, overrides: Sequence[str] = ()) -> RunConfig:
    """Read (bounded, see :mod:`medad.benchmark.config_file`) and validate a YAML config: a path, or a shipped
    config's name (:func:`config_path`); ``overrides`` (``KEY=VALUE``, :func:`apply_overrides`) first."""
    path = config_path(path)
    try:
        raw = read_yaml_file(path)
    except ConfigFileError as error:
        raise ConfigError(str(error)) from None
    return parse_config(apply_overrides(raw, overrides), source=str(path))


def _entries(items: list, key: str, path: str) -> list[dict]:
    """The entries of ``datasets``/``detectors`` a ``--set`` path component names: an index, a label, or a name
    (a name selects every entry of that name only when no entry is labelled so, as ``--detectors`` does)."""
    if key.isdigit() and int(key) < len(items):
        return [items[int(key)]]
    dicts = [e for e in items if isinstance(e, dict)]
    labelled = [e for e in dicts if e.get("label", e.get("name")) == key]
    named = labelled or [e for e in dicts if e.get("name") == key]
    if not named:
        known = sorted({str(e.get("label", e.get("name"))) for e in dicts})
        raise ConfigError(f"--set {path}: no entry labelled or named {key!r}{suggestion(key, known)}; "
                          f"the entries: {', '.join(known)}")
    return named


def apply_overrides(raw: Any, overrides: Sequence[str]) -> Any:
    """A copy of the raw config with each ``KEY=VALUE`` set: dotted keys into the YAML (``image_size=128``,
    ``detectors.ganomaly.params.epochs=5`` by label or name, ``datasets.0.subsets=[obvious]``); the value is
    read as YAML (``1e-3`` a float, ``[a, b]`` a list). Validation comes after, as for the file itself."""
    if not overrides:
        return raw
    if not isinstance(raw, dict):
        raise ConfigError("--set needs a config that is a mapping")
    raw = copy.deepcopy(raw)
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set {short_repr(item)}: expected KEY=VALUE, e.g. --set detectors.ae.params.epochs=5")
        try:
            value = parse_yaml_text(text, source=f"--set {key}")
        except ConfigFileError as error:
            raise ConfigError(str(error)) from None
        _set_path(raw, key.strip().split("."), value, key.strip())
    return raw


def _set_path(node: Any, parts: list[str], value: Any, key: str) -> None:
    """Set ``value`` at ``parts`` below ``node``; inside a list (``datasets``, ``detectors``) a part picks entries."""
    part, rest = parts[0], parts[1:]
    if isinstance(node, list):
        if not rest:
            raise ConfigError(f"--set {key}: name a key inside the entry, e.g. {key}.params.epochs=5")
        for entry in _entries(node, part, key):
            _set_path(entry, rest, value, key)
        return
    if not isinstance(node, dict):
        raise ConfigError(f"--set {key}: {part!r} is below a value that is not a mapping")
    if not rest:
        node[part] = value
        return
    if node.get(part) is None:
        node[part] = {}
    _set_path(node[part], rest, value, key)


def narrow(config: RunConfig, *, detectors: list[str] | None = None, datasets: list[str] | None = None,
           seeds: list[int] | None = None, device: str | None = None, memory_format: str | None = None,
           precision: str | None = None, deterministic: bool | None = None) -> RunConfig:
    """A copy of ``config`` restricted to the named detectors, datasets and seeds (the CLI flags).

    ``--detectors`` names labels (the names in the CSVs). A registry name selects every entry of that
    detector only when no entry's label equals it: ``ganomaly`` selects the entry labelled ``ganomaly``
    and not ``ganomaly-reference``; ``multi-kd`` selects ``multi-kd-a`` and ``multi-kd-b`` when no entry
    is labelled ``multi-kd``. ``config`` itself is never changed.
    """
    changes: dict[str, Any] = {}
    if detectors:
        labels = {d.label for d in config.detectors}
        names = {d.name for d in config.detectors}
        unknown = [d for d in detectors if d not in labels and d not in names]
        if unknown:
            raise ConfigError(f"--detectors: {short_repr(unknown[0])} is not in the config{suggestion(unknown[0], labels)}; "
                              f"its detector labels: {', '.join(sorted(labels))}")
        by_name = {d for d in detectors if d not in labels}
        changes["detectors"] = [d for d in config.detectors if d.label in detectors or d.name in by_name]
    if datasets:
        known = {d.name for d in config.datasets}
        unknown = [d for d in datasets if d not in known]
        if unknown:
            raise ConfigError(f"--datasets: {short_repr(unknown[0])} is not in the config{suggestion(unknown[0], known)}; "
                              f"it has: {', '.join(sorted(known))}")
        changes["datasets"] = [d for d in config.datasets if d.name in datasets]
    if seeds:
        for i, seed in enumerate(seeds):
            _check_type(f"--seeds[{i}]", seed, Seed)
        changes["seeds"] = list(seeds)
    if device:
        check_device("--device", device)
        changes["device"] = device
    if memory_format:
        check_choice("--memory-format", memory_format, MEMORY_FORMATS)
        changes["memory_format"] = memory_format
    if precision:
        check_choice("--precision", precision, PRECISIONS)
        changes["precision"] = precision
    if deterministic is not None:
        changes["deterministic"] = deterministic
    if precision or deterministic is not None:
        check_numerics("--", changes.get("precision", config.precision), changes.get("deterministic", config.deterministic))
    return copy.deepcopy(replace(config, **changes))
