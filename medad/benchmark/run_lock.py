"""One process per run folder: an exclusive OS lock on ``<run>/.lock`` for the whole run.

Two ``medad run --resume`` of one folder would both run every pending job and overwrite each
other's job folders. The lock is ``flock(2)`` on a file inside the run folder: the kernel releases
it when the holding process exits, however it exits (``kill -9`` included), so a killed run needs
no clean-up and never leaves a stale lock. The holder writes its PID (and host) into the file, so a
second process can say who holds it. ``medad report`` does not take the lock; it asks
:func:`is_locked` whether a run is in progress and then reads a snapshot of the finished job folders.
"""

from __future__ import annotations

import contextlib
import errno
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

from medad.atomic_files import WriteError, make_dirs

try:
    import fcntl
except ImportError:  # Windows: no flock; runs are not protected against a second process there
    fcntl = None

LOCK_FILE = ".lock"


class RunLockedError(RuntimeError):
    """Another process holds the run folder's lock."""


def _holder(path: Path) -> str:
    try:
        text = path.read_text().strip()
    except OSError:
        text = ""
    return text or "an unknown process"


@contextlib.contextmanager
def run_lock(run_path: Path, wait_s: float = 2.0) -> Iterator[None]:
    """Hold the exclusive lock of ``run_path`` (created if needed) for the ``with`` block.

    A lock held elsewhere for longer than ``wait_s`` seconds raises :class:`RunLockedError` naming the
    holder; nothing in the folder is changed by the attempt.
    """
    make_dirs(run_path)
    path = run_path / LOCK_FILE
    try:
        handle = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    except OSError as error:
        raise WriteError(path, error) from None
    try:
        if fcntl is not None:
            deadline = time.monotonic() + wait_s
            while True:
                try:
                    fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except OSError as error:
                    if error.errno not in (errno.EAGAIN, errno.EACCES) or time.monotonic() > deadline:
                        raise RunLockedError(f"{run_path} is in use by {_holder(path)}: one process runs a run folder at "
                                             "a time; wait for it to finish (or stop it), then --resume") from None
                    time.sleep(0.1)
        os.ftruncate(handle, 0)
        os.write(handle, f"pid {os.getpid()} on {socket.gethostname()}\n".encode())
        yield
    finally:
        os.close(handle)  # releases the lock


def is_locked(run_path: Path) -> bool:
    """True while some process holds ``run_path``'s lock (a run in progress)."""
    path = Path(run_path) / LOCK_FILE
    if fcntl is None or not path.is_file():
        return False
    handle = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError:
        return True
    finally:
        os.close(handle)
    return False
