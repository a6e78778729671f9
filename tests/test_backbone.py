"""The shared pretrained feature extractor (medad.detectors.blocks.backbone): torchvision's trunks read at named
layers, torchvision's own state dicts, grey-level inputs, frozen, and clear errors for missing or wrong weights."""

from __future__ import annotations

import pytest
import torch
import torchvision

from medad.detectors.blocks.backbone import ARCHITECTURES, IMAGENET_MEAN, IMAGENET_STD, Backbone, pretrained_files, weights_tag
from medad.detectors.pretrained import PretrainedWeightsError


def torchvision_layers(model: torch.nn.Module, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """A torchvision ResNet's stage outputs, computed the way its own ``forward`` does."""
    x = model.maxpool(model.relu(model.bn1(model.conv1(x))))
    out = {}
    for name in ("layer1", "layer2", "layer3", "layer4"):
        x = out[name] = getattr(model, name)(x)
    return out


def test_a_torchvision_state_dict_gives_torchvisions_features_on_grey_images(tmp_path):
    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None).eval()
    with torch.no_grad():  # BatchNorm statistics that are not 0 / 1, so that loading them matters
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.5, 0.5)
                module.running_var.uniform_(0.5, 2.0)
    path = tmp_path / "my-resnet18.pth"
    torch.save(model.state_dict(), path)  # classifier keys included: ignored
    backbone = Backbone("resnet18", ("layer2", "layer3"), weights=str(path))
    assert backbone.weights_tag == "local:my-resnet18.pth" and not hasattr(backbone, "layer4")
    grey = torch.rand(2, 1, 64, 64)
    mean, std = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    with torch.no_grad():
        expected = torchvision_layers(model, (grey.repeat(1, 3, 1, 1) - mean) / std)
        features = backbone(grey)
    assert list(features) == ["layer2", "layer3"]
    for name in features:
        torch.testing.assert_close(features[name], expected[name], rtol=1e-5, atol=1e-5)
    assert backbone.channels == {"layer2": 128, "layer3": 256} and backbone.strides == {"layer2": 8, "layer3": 16}


@pytest.mark.parametrize("name", ["resnet18", "wide_resnet50_2", "vgg16"])
def test_the_trunks_have_torchvisions_parameter_names_and_shapes(name):
    with torch.device("meta"):  # shapes only: nothing is allocated or initialised for real
        reference = getattr(torchvision.models, name)(weights=None).state_dict()
        backbone = Backbone(name, (ARCHITECTURES[name].layers[-1],), weights="random")
    own = {key: tuple(value.shape) for key, value in backbone.state_dict().items()}
    assert own == {key: tuple(value.shape) for key, value in reference.items() if key in own}
    assert not [key for key in reference if key not in own and not key.startswith(("fc.", "classifier."))]


@pytest.mark.parametrize("name", ["resnet18", "wide_resnet50_2", "vgg16"])
def test_narrow_trunks_report_the_channels_and_strides_they_return(name):
    layers = ARCHITECTURES[name].layers
    backbone = Backbone(name, layers, weights="random", width_divisor=16)
    with torch.no_grad():
        features = backbone(torch.rand(2, 3, 64, 64))
    for layer in layers:
        assert features[layer].shape == (2, backbone.channels[layer], 64 // backbone.strides[layer],
                                         64 // backbone.strides[layer])
    assert backbone.channels[layers[0]] == ARCHITECTURES[name].channels[0] // 16


def test_the_trunk_is_frozen_and_its_features_do_not_depend_on_the_batch():
    backbone = Backbone("resnet18", ("layer1",), weights="random", width_divisor=8)
    backbone.train()
    assert not backbone.training and not any(module.training for module in backbone.modules())
    assert not any(parameter.requires_grad for parameter in backbone.parameters())
    images = torch.rand(4, 1, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(backbone(images)["layer1"][1:2], backbone(images[1:2])["layer1"])
    x = images.clone().requires_grad_(True)
    backbone(x)["layer1"].sum().backward()  # gradients reach the input (Multi-KD's saliency maps)
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_unnormalised_inputs_go_in_as_they_are():
    backbone = Backbone("vgg16", ("pool1",), weights="random", width_divisor=8, normalize=False)
    grey = torch.rand(2, 1, 8, 8)
    torch.testing.assert_close(backbone.prepare(grey), grey.repeat(1, 3, 1, 1))
    with pytest.raises(ValueError, match="1- or 3-channel"):
        backbone.prepare(torch.rand(1, 2, 8, 8))


def test_imagenet_weights_offline_name_the_file_and_where_to_put_it(offline_hub):
    with pytest.raises(PretrainedWeightsError) as error:
        Backbone("wide_resnet50_2", ("layer2",), what="patchcore backbone", hint="Or set `weights: random`.")
    message = str(error.value)
    url = ARCHITECTURES["wide_resnet50_2"].imagenet_url
    assert str(offline_hub / "wide_resnet50_2-95faca4d.pth") in message
    assert url in message and "patchcore backbone" in message and "weights: random" in message
    assert pretrained_files("wide_resnet50_2", "imagenet") == [(offline_hub / url.split("/")[-1], url)]


def test_a_file_of_another_width_is_refused_naming_it(tmp_path):
    path = tmp_path / "narrow.pth"
    torch.save(Backbone("resnet18", ("layer2",), weights="random", width_divisor=2).state_dict(), path)
    with pytest.raises(PretrainedWeightsError, match=r"narrow\.pth does not fit a resnet18 trunk at width_divisor 1"):
        Backbone("resnet18", ("layer2",), weights=str(path))
    assert Backbone("resnet18", ("layer2",), weights=str(path), width_divisor=2).weights_tag == "local:narrow.pth"


def test_settings_are_checked_and_tagged(tmp_path):
    with pytest.raises(ValueError, match="backbone must be one of resnet18, wide_resnet50_2, vgg16"):
        Backbone("resnet50", ("layer1",))
    with pytest.raises(ValueError, match="layers must be some of layer1, layer2, layer3, layer4"):
        Backbone("resnet18", ("pool2",), weights="random")
    with pytest.raises(ValueError, match="width_divisor must divide 64"):
        Backbone("resnet18", ("layer1",), weights="random", width_divisor=3)
    assert weights_tag("random") == "random" and weights_tag("imagenet") == "imagenet"
    assert weights_tag(str(tmp_path / "w.pth")) == "local:w.pth"
    assert pretrained_files("resnet18", "random") == []
    assert pretrained_files("resnet18", str(tmp_path / "w.pth")) == [(tmp_path / "w.pth", "")]


def test_the_spelled_out_release_urls_are_torchvisions():
    for name, spec in ARCHITECTURES.items():
        assert getattr(torchvision.models, spec.weights_enum).IMAGENET1K_V1.url == spec.imagenet_url, name
