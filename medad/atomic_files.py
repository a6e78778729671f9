"""Files that appear whole or not at all, with the permissions of any other file the user creates.

A file is written under a temporary name in its own folder, then renamed over the target
(``os.replace`` is atomic on POSIX), so a reader or a killed writer never sees half a file. Python's
``tempfile`` creates files 0600 and folders 0700 whatever the umask; here they are given the mode the
process umask allows (0644 / 0755 under the usual 022), so a lab's web server or a colleague can read
a run's reports. A write that fails (disk full, read-only folder) removes its temporary file and
raises :class:`WriteError` naming the path.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path


class WriteError(OSError):
    """A file or folder could not be written; the message names the path and the reason."""

    def __init__(self, path: Path, error: OSError) -> None:
        reason = error.strerror or str(error) or type(error).__name__
        super().__init__(error.errno, f"cannot write {path}: {reason}")
        self.path = Path(path)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


UMASK = _umask()
FILE_MODE = 0o666 & ~UMASK
DIR_MODE = 0o777 & ~UMASK


def make_dirs(path: Path) -> Path:
    """``mkdir -p`` with a :class:`WriteError` naming the path on failure."""
    try:
        Path(path).mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise WriteError(Path(path), error) from None
    return Path(path)


def staging_dir(parent: Path, prefix: str) -> Path:
    """A new temporary folder inside ``parent`` (to be renamed into place), with the umask's folder mode."""
    make_dirs(parent)
    try:
        path = Path(tempfile.mkdtemp(dir=parent, prefix=prefix))
        os.chmod(path, DIR_MODE)
    except OSError as error:
        raise WriteError(Path(parent), error) from None
    return path


def write_bytes_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder and a rename."""
    path = Path(path)
    make_dirs(path.parent)
    temporary = None
    try:
        handle, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
        temporary = Path(name)
        with os.fdopen(handle, "wb") as stream:
            stream.write(data)
        os.chmod(temporary, FILE_MODE)
        os.replace(temporary, path)
    except OSError as error:
        if temporary is not None:
            temporary.unlink(missing_ok=True)
        raise WriteError(path, error) from None


def write_text_atomic(path: Path, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    write_bytes_atomic(path, text.encode("utf-8"))


def remove_tree(path: Path) -> None:
    """Delete a folder and what it holds, ignoring what is already gone."""
    shutil.rmtree(path, ignore_errors=True)
