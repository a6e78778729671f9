"""The decode cache: decoded, resized images as uint8 arrays on disk, so a second run does not decode again.

One ``.npz`` file per (dataset, subset view, image size, channels, decode options, fingerprint).
The fingerprint hashes every source file's relative path, size and modification time plus the
records (labels, crops, masks) built from them, so any changed, added or removed file gives a new
key and the images are decoded again. Location: ``$MEDAD_CACHE`` or ``~/.cache/medad``;
``MEDAD_NO_CACHE=1`` (set by ``medad run --no-cache``) bypasses it.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np

NO_CACHE_ENV = "MEDAD_NO_CACHE"
CACHE_ENV = "MEDAD_CACHE"


def cache_dir() -> Path:
    """Where decoded arrays live: ``$MEDAD_CACHE`` or ``~/.cache/medad``."""
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "medad")


def cache_enabled() -> bool:
    """False when ``MEDAD_NO_CACHE`` is set to a true value (``medad run --no-cache``)."""
    return os.environ.get(NO_CACHE_ENV, "").strip().lower() not in {"1", "true", "yes", "on"}


def fingerprint(root: Path, files: Iterable[Path], extra: object = None) -> str:
    """SHA-1 over the files' relative paths, sizes and mtimes, and ``extra`` (JSON-serialisable)."""
    digest = hashlib.sha1()
    for path in sorted(set(files)):
        stat = path.stat()
        digest.update(f"{path.relative_to(root).as_posix()}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    digest.update(json.dumps(extra, sort_keys=True, default=str).encode())
    return digest.hexdigest()[:16]


def cached_arrays(*, dataset: str, view: str, image_size: int, channels: int, options: str, fingerprint: str,
                  build: Callable[[], dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """The arrays cached under these keys, or ``build()``'s result (then stored atomically).

    ``options`` names decode settings that change pixels (resize mode, window); an entry of the same
    view with another fingerprint is stale (its files changed) and is deleted when the new one is written.
    """
    if not cache_enabled():
        return build()
    stem = f"{image_size}px-{channels}ch-{options}"
    path = cache_dir() / dataset / view / f"{stem}-{fingerprint}.npz"
    if path.exists():
        try:
            with np.load(path, allow_pickle=False) as stored:
                return {k: stored[k] for k in stored.files}
        except (OSError, ValueError, EOFError):
            path.unlink(missing_ok=True)  # a damaged entry is rebuilt
    arrays = build()
    path.parent.mkdir(parents=True, exist_ok=True)
    for stale in path.parent.glob(f"{stem}-*.npz"):
        stale.unlink(missing_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    with os.fdopen(handle, "wb") as stream:
        np.savez(stream, **arrays)
    os.replace(temporary, path)
    return arrays
