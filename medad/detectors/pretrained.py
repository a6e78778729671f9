"""Pretrained weights, loaded without running code: every ImageNet or local state dict goes through here.

``torch.load`` unpickles, and a pickle can run any code it likes; torchvision's own
``Weights.get_state_dict`` loads its hub cache that way (``weights_only=False``) and checks the
file's hash only when it downloads it. So a file dropped into ``$TORCH_HOME/hub/checkpoints/``
would run as the user. Here every file is

1. checked against the SHA-256 its release publishes, where one is known: torchvision names each
   weights file ``<name>-<first hex digits of its SHA-256>.pth`` (``vgg16-397923af.pth``), the
   same check ``torch.hub`` makes on download; a mismatch is an error naming the file, the
   expected hash and where the right file comes from;
2. read with ``torch.load(..., weights_only=True)``, which builds tensors and plain containers only
   and refuses any other object (nothing is imported, nothing runs), and must hold a mapping.

A torchvision release file missing from the cache is downloaded into it (``torch.hub``'s download,
which checks the hash as it writes) where the machine is online; offline, the error says which file
to put where.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Any

import torch

# torch.hub's file-name convention: "<stem>-<sha256 prefix>.<ext>"
_HASH_IN_NAME = re.compile(r"-([0-9a-f]{8,64})\.[A-Za-z0-9]+$")


class PretrainedWeightsError(RuntimeError):
    """Pretrained weights are missing, damaged, not what their release published, or not a state dict."""


def hub_checkpoint(url: str) -> Path:
    """Where torch's hub cache keeps (and torchvision's weights API looks for) the file at ``url``."""
    return Path(torch.hub.get_dir()) / "checkpoints" / Path(url).name


def release_hash(file_name: str) -> str | None:
    """The SHA-256 prefix a torchvision release file carries in its name, or None."""
    match = _HASH_IN_NAME.search(file_name)
    return match.group(1) if match else None


def sha256_of(path: Path, chunk: int = 1 << 20) -> str:
    """The hexadecimal SHA-256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def load_state_dict_file(path: str | Path, *, what: str, expected_sha256: str | None = None,
                         source: str = "", hint: str = "") -> dict[str, Any]:
    """The state dict in ``path``: hash-checked where ``expected_sha256`` (a prefix is enough) is given, then
    read with ``weights_only=True``. ``what`` names the weights in errors, ``source`` says where to get the
    file and ``hint`` what else the user may do (another setting of the detector)."""
    path = Path(path).expanduser()
    get = (f" Get it from {source}." if source else "") + (f" {hint}" if hint else "")
    if not path.is_file():
        raise PretrainedWeightsError(f"{what}: weights file {path} does not exist.{get}")
    if expected_sha256:
        actual = sha256_of(path)
        if not actual.startswith(expected_sha256.lower()):
            raise PretrainedWeightsError(
                f"{what}: {path} is not the published file: its SHA-256 is {actual}, the release's begins with "
                f"{expected_sha256}. Delete it and download it again.{get}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # an unpickling refusal, a damaged zip, a truncated download alike
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise PretrainedWeightsError(f"{what}: cannot read {path} as a weights-only state dict "
                                     f"({type(error).__name__}: {first}).{get}") from None
    if not isinstance(state, dict):
        raise PretrainedWeightsError(f"{what}: {path} holds a {type(state).__name__}, expected a state dict (a mapping "
                                     f"of parameter names to tensors).{get}")
    return state


def torchvision_state_dict(weights: Any, *, what: str, download: bool = True, hint: str = "") -> dict[str, Any]:
    """The state dict of a torchvision weights enum member (e.g. ``VGG16_Weights.IMAGENET1K_V1``).

    Read from torch's hub cache, hash-checked against the release; downloaded there first when
    missing and ``download`` (torch.hub checks the hash while it writes). Never unpickles code.
    """
    url = weights.url
    path = hub_checkpoint(url)
    expected = release_hash(path.name)
    put = f"Download {url} and put it at {path} (set TORCH_HOME to move the cache).{f' {hint}' if hint else ''}"
    if not path.is_file():
        if not download:
            raise PretrainedWeightsError(f"{what}: {path} is not in torch's hub cache. {put}")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            torch.hub.download_url_to_file(url, str(path), hash_prefix=expected, progress=False)
        except Exception as error:  # offline (URLError), a full disk, a hash mismatch of the download
            raise PretrainedWeightsError(f"{what}: {path} is not in torch's hub cache and could not be downloaded "
                                         f"({type(error).__name__}: {error}). {put}") from None
    return load_state_dict_file(path, what=what, expected_sha256=expected, source=url, hint=hint)


def local_state_dict(path: str | Path, *, what: str, releases: tuple[str, ...] = (), hint: str = "") -> dict[str, Any]:
    """A state dict a config names by path. A file named like one of the release ``urls`` (a downloaded
    ``vgg16-397923af.pth``) is hash-checked against that release; any other file is read weights-only."""
    path = Path(path).expanduser()
    release = next((url for url in releases if Path(url).name == path.name), None)
    return load_state_dict_file(path, what=what, expected_sha256=release_hash(path.name) if release else None,
                                source=release or "", hint=hint)
