"""The process-wide arithmetic flags a job sets at its start: TensorFloat-32 and deterministic algorithms.

torch keeps these flags per process, so every job sets all of them itself (:func:`configure_numerics`),
whatever the previous job in its worker set. Whatever times a job's arithmetic sets them with the same
function, so that it times what the job runs: the cost estimate's calibration
(:func:`medad.benchmark.estimate.calibrate`) and the throughput benchmarks run their fits inside
:func:`numerics` with the job's ``precision`` and ``deterministic``.

- ``precision``: ``fp32`` is full float32 on CUDA too: TF32 off for matrix products
  (``torch.backends.cuda.matmul.allow_tf32``, ``float32_matmul_precision("highest")``) *and* for cuDNN
  convolutions (``torch.backends.cudnn.allow_tf32``, which PyTorch turns on by default). ``tf32`` turns
  both on (10-bit mantissa products on Ampere and later; rows tagged ``precision=tf32``); it is a CUDA
  setting and refused on the CPU, where it would be fp32 by another name. ``bf16`` is autocast
  (:mod:`medad.benchmark.acceleration`) with TF32 off for what runs outside it in float32.
- ``deterministic`` (config key, CLI ``--deterministic``): ``torch.use_deterministic_algorithms(True)``,
  ``cudnn.deterministic = True``, ``cudnn.benchmark = False`` and ``CUBLAS_WORKSPACE_CONFIG=:4096:8`` (what
  cuBLAS needs for bitwise-equal results; PyTorch reads it when it creates its first cuBLAS workspace, so it
  must be in the environment before the process's first matrix product on the GPU: a deterministic run
  puts it in the driver's environment before any worker starts (:func:`set_cublas_workspace`), and each job
  sets it again before building its detector, for a job run on its own). Same seed, same numbers on CUDA
  then holds for every built-in detector: the ops without a deterministic CUDA kernel that they use
  (bilinear upsampling and adaptive average pooling, differentiated) are replaced there by deterministic
  formulations (:mod:`medad.detectors.blocks.deterministic`); a plugin's op without one fails its job with
  torch's error naming the op. Rows carry ``deterministic=true``.

On the CPU torch's kernels are deterministic already: the same seed gives the same numbers with or without
``deterministic`` (which then only makes torch fill fresh tensors with NaN, so reads of uninitialised memory
show up).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass

import torch

CUBLAS_WORKSPACE_ENV = "CUBLAS_WORKSPACE_CONFIG"
DETERMINISTIC_CUBLAS_WORKSPACE = ":4096:8"
# the two workspace settings with which torch's deterministic mode accepts cuBLAS (see torch.use_deterministic_algorithms)
DETERMINISTIC_CUBLAS_WORKSPACES = (":4096:8", ":16:8")


@dataclass(frozen=True)
class NumericsState:
    """The flags :func:`configure_numerics` sets, as they stand (to restore them after a block)."""

    deterministic: bool
    warn_only: bool
    cudnn_deterministic: bool
    cudnn_benchmark: bool
    matmul_tf32: bool
    cudnn_tf32: bool
    matmul_precision: str

    @classmethod
    def current(cls) -> NumericsState:
        return cls(torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled(),
                   torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark,
                   torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32,
                   torch.get_float32_matmul_precision())

    def apply(self) -> None:
        torch.use_deterministic_algorithms(self.deterministic, warn_only=self.warn_only)
        torch.backends.cudnn.deterministic = self.cudnn_deterministic
        torch.backends.cudnn.benchmark = self.cudnn_benchmark
        torch.set_float32_matmul_precision(self.matmul_precision)  # before allow_tf32: it sets that flag too
        torch.backends.cuda.matmul.allow_tf32 = self.matmul_tf32
        torch.backends.cudnn.allow_tf32 = self.cudnn_tf32


def check_precision_on(device: torch.device, precision: str) -> None:
    """Refuse ``tf32`` where there is no TensorFloat-32 (the CPU): its rows would be fp32 tagged otherwise."""
    if precision == "tf32" and device.type != "cuda":
        raise ValueError(f"precision tf32 is TensorFloat-32 on CUDA GPUs; on {device.type} it would be fp32 by another "
                         "name: use precision fp32 (or bf16)")


def set_cublas_workspace(environ: dict[str, str] | os._Environ = os.environ) -> None:
    """Put the deterministic cuBLAS workspace setting in ``environ`` (kept when it already holds one of the two)."""
    if environ.get(CUBLAS_WORKSPACE_ENV) not in DETERMINISTIC_CUBLAS_WORKSPACES:
        environ[CUBLAS_WORKSPACE_ENV] = DETERMINISTIC_CUBLAS_WORKSPACE


def configure_numerics(precision: str, deterministic: bool, device: torch.device | None = None) -> NumericsState:
    """Set every flag of this module for a job with ``precision`` and ``deterministic``; return the previous state.

    All flags are set every time, so a previous job's setting never leaks into this one. With the job's ``device``,
    ``tf32`` off CUDA is refused first (:func:`check_precision_on`), as a job refuses it.
    """
    if device is not None:
        check_precision_on(device, precision)
    previous = NumericsState.current()
    if deterministic:
        set_cublas_workspace()
    tf32 = precision == "tf32"
    NumericsState(deterministic=deterministic, warn_only=False, cudnn_deterministic=deterministic,
                  cudnn_benchmark=False, matmul_tf32=tf32, cudnn_tf32=tf32,
                  matmul_precision="high" if tf32 else "highest").apply()
    return previous


@contextlib.contextmanager
def numerics(precision: str, deterministic: bool, device: torch.device | None = None) -> Iterator[None]:
    """:func:`configure_numerics` for a block, the previous flags restored after it (the conformance kit, a
    calibration, a throughput benchmark: a timing inside a program that goes on)."""
    previous = configure_numerics(precision, deterministic, device)
    try:
        yield
    finally:
        previous.apply()


def deterministic_tags(deterministic: bool) -> dict[str, str]:
    """The CSV tag of a result computed with deterministic algorithms (none without: the default)."""
    return {"deterministic": "true"} if deterministic else {}
