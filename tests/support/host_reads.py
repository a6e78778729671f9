"""Count the reads of device values by the host while code runs, on the CPU (tests only).

On CUDA, reading a tensor's value (``.item()``, ``float()``, ``bool()``, ``.tolist()``, ``.cpu()``, ``.numpy()``,
a boolean mask that selects elements) makes the host wait for every queued kernel. On the CPU nothing waits, so
:class:`HostReads` follows which tensors would live on the device (those computed from the given roots: the
networks' parameters and buffers, the images; a tensor written in place by such a computation) with a
``TorchDispatchMode`` and counts each such read, with the medad function that made it. Tensors drawn from a
host ``torch.Generator`` and never mixed with device values (batch orders, flip decisions) stay host values, as
they do on a GPU.
"""

from __future__ import annotations

import traceback
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten
from torch.utils.weak import WeakIdKeyDictionary

import medad

aten = torch.ops.aten
# ops whose result the host must wait for: a value, or an output size that depends on the values
_READ_OPS = {aten._local_scalar_dense.default, aten.nonzero.default, aten.masked_select.default, aten.equal.default,
             aten._unique2.default, aten.unique_consecutive.default, aten.unique_dim.default}
_INDEX_OPS = {aten.index.Tensor, aten.index_put.default, aten.index_put_.default, aten._index_put_impl_.default}
_PYTHON_READS = ("cpu", "numpy", "tolist", "__array__")


# medad's own source files, wherever the package lives: a checkout may itself sit in a folder named ``medad`` (what
# ``git clone`` makes), so a frame is medad's when its file is inside the imported package, not when its path
# merely contains "/medad/"
MEDAD_PACKAGE = Path(medad.__file__).resolve().parent


def medad_function(filename: str, function: str) -> str | None:
    """``path/in/medad.py:function`` for a frame of medad's own code, None for any other frame."""
    path = Path(filename).resolve()
    if not path.is_relative_to(MEDAD_PACKAGE):
        return None
    return f"{path.relative_to(MEDAD_PACKAGE).as_posix()}:{function}"


def _where() -> str:
    """The innermost medad function on the stack (what made the read), as ``path/in/medad.py:function``."""
    for frame in reversed(traceback.extract_stack()):
        if (site := medad_function(frame.filename, frame.name)) is not None:
            return site
    return "?"


class HostReads(TorchDispatchMode):
    """``with HostReads(roots) as reads: ...`` then ``reads.count`` and ``reads.sites`` (a Counter of the functions that read)."""

    def __init__(self, roots: Iterable[torch.Tensor]) -> None:
        super().__init__()
        self.device_values = WeakIdKeyDictionary()
        for tensor in roots:
            self.device_values[tensor] = True
        self.sites: Counter[str] = Counter()
        self._patched: dict[str, object] = {}

    @property
    def count(self) -> int:
        return sum(self.sites.values())

    def _on_device(self, tensor: object) -> bool:
        return isinstance(tensor, torch.Tensor) and tensor in self.device_values

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        inputs, _ = tree_flatten((args, kwargs))
        from_device = any(self._on_device(t) for t in inputs)
        boolean_index = func in _INDEX_OPS and any(isinstance(t, torch.Tensor) and t.dtype == torch.bool
                                                    for t in tree_flatten(args[1])[0])
        if from_device and (func in _READ_OPS or boolean_index):
            self.sites[_where()] += 1
        result = func(*args, **kwargs)
        if from_device:
            for tensor in tree_flatten(result)[0]:
                if isinstance(tensor, torch.Tensor):
                    self.device_values[tensor] = True
            for argument, value in zip(func._schema.arguments, args):
                if argument.alias_info is not None and argument.alias_info.is_write and isinstance(value, torch.Tensor):
                    self.device_values[value] = True
        return result

    def __enter__(self) -> HostReads:
        for name in _PYTHON_READS:
            original = getattr(torch.Tensor, name)
            self._patched[name] = original

            def counted(tensor, *args, _original=original, **kwargs):
                if self._on_device(tensor):
                    self.sites[_where()] += 1
                return _original(tensor, *args, **kwargs)

            setattr(torch.Tensor, name, counted)
        return super().__enter__()

    def __exit__(self, *exc: object) -> None:
        for name, original in self._patched.items():
            setattr(torch.Tensor, name, original)
        self._patched.clear()
        return super().__exit__(*exc)
