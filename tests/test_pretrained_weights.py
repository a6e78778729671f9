"""Pretrained weights never run code: a pickle in torch's hub cache or as a local .pth is refused, naming the file."""

from __future__ import annotations

import hashlib
import os

import pytest
import torch
from torchvision.models import resnet18

from medad.detectors.coronet.cin import build_cin
from medad.detectors.multikd import MultiKDDetector
from medad.detectors.multikd.source import IMAGENET_FILE, IMAGENET_URL
from medad.detectors.pretrained import (
    PretrainedWeightsError,
    load_state_dict_file,
    local_state_dict,
    release_hash,
    torchvision_state_dict,
)


class _Payload:
    """Unpickling this object runs ``touch <marker>`` (what an attacker's file would do)."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def write_malicious(path, marker) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"features.0.weight": _Payload(str(marker))}, path)


def test_the_payload_really_runs_when_unpickled(tmp_path):
    """The guard below is worth something: an unguarded load runs the command."""
    path, marker = tmp_path / "evil.pth", tmp_path / "ran"
    write_malicious(path, marker)
    torch.load(path, weights_only=False)
    assert marker.exists()


def test_a_pickle_in_the_hub_cache_runs_nothing_and_is_named(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    cached, marker = tmp_path / "torch" / "hub" / "checkpoints" / IMAGENET_FILE, tmp_path / "ran"
    write_malicious(cached, marker)
    with pytest.raises(PretrainedWeightsError) as error:
        MultiKDDetector(image_size=32, channels=1, source="imagenet")
    assert not marker.exists()
    message = str(error.value)
    assert str(cached) in message and "SHA-256" in message and release_hash(IMAGENET_FILE) in message
    assert IMAGENET_URL in message


def test_a_pickle_whose_hash_matched_would_still_not_run(tmp_path, monkeypatch):
    """Second line of defence: even with the hash check passed, the file is read weights-only."""
    path, marker = tmp_path / "evil.pth", tmp_path / "ran"
    write_malicious(path, marker)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    with pytest.raises(PretrainedWeightsError, match="weights-only") as error:
        load_state_dict_file(path, what="test weights", expected_sha256=digest[:8])
    assert not marker.exists() and str(path) in str(error.value)


def test_a_local_pth_pickle_runs_nothing_and_is_named(tmp_path):
    path, marker = tmp_path / "my-vgg.pth", tmp_path / "ran"
    write_malicious(path, marker)
    with pytest.raises(PretrainedWeightsError) as error:
        MultiKDDetector(image_size=32, channels=1, source=str(path))
    assert not marker.exists() and str(path) in str(error.value)
    with pytest.raises(PretrainedWeightsError) as error:
        build_cin(2, "imagenet", str(path))
    assert not marker.exists() and str(path) in str(error.value)


def test_a_local_file_named_like_the_release_is_hash_checked(tmp_path):
    path = tmp_path / IMAGENET_FILE
    torch.save({"features.0.weight": torch.zeros(1)}, path)  # harmless, but not the published file
    with pytest.raises(PretrainedWeightsError, match="is not the published file"):
        local_state_dict(path, what="vgg", releases=(IMAGENET_URL,))
    other = tmp_path / "vgg-finetuned-20261201.pth"  # hex-like digits in a user's own name: no hash to check
    torch.save({"w": torch.ones(2)}, other)
    assert torch.equal(local_state_dict(other, what="vgg", releases=(IMAGENET_URL,))["w"], torch.ones(2))


def test_a_cached_release_file_with_the_right_hash_loads(tmp_path, monkeypatch):
    """The cache path works for a genuine file: a fake release whose name carries its own hash."""
    state = resnet18(weights=None).state_dict()
    staging = tmp_path / "staging.pth"
    torch.save(state, staging)
    prefix = hashlib.sha256(staging.read_bytes()).hexdigest()[:8]

    class FakeRelease:
        url = f"https://download.pytorch.org/models/resnet18-{prefix}.pth"

    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    (tmp_path / "hub" / "checkpoints").mkdir(parents=True)
    staging.rename(tmp_path / "hub" / "checkpoints" / f"resnet18-{prefix}.pth")
    loaded = torchvision_state_dict(FakeRelease, what="resnet18", download=False)
    torch.testing.assert_close(loaded["conv1.weight"], state["conv1.weight"])


def test_a_state_dict_must_be_a_mapping(tmp_path):
    path = tmp_path / "tensor.pth"
    torch.save(torch.zeros(3), path)
    with pytest.raises(PretrainedWeightsError, match="expected a state dict"):
        load_state_dict_file(path, what="test weights")


def test_the_spelled_out_release_urls_are_torchvisions():
    """Both detectors name torchvision's release files without importing torchvision.models at start-up."""
    from torchvision.models import ResNet18_Weights, VGG16_Weights

    from medad.detectors.coronet.cin import IMAGENET_URL as RESNET18_URL

    assert RESNET18_URL == ResNet18_Weights.IMAGENET1K_V1.url
    assert IMAGENET_URL == VGG16_Weights.IMAGENET1K_V1.url
