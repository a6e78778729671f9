"""Config validation: unknown keys, unknown names and wrong types name the key and list what is allowed."""

from __future__ import annotations

import pytest

from medad.benchmark.config import ConfigError, load_config, narrow, parse_config
from tests.conftest import REPO_ROOT


def base(**changes):
    config = {"name": "t", "image_size": 32, "datasets": [{"name": "synthetic"}], "detectors": [{"name": "ae"}]}
    config.update(changes)
    return config


def test_defaults_are_filled_and_all_subsets_taken():
    config = parse_config(base())
    assert config.seeds == [0] and config.device == "auto" and config.channels == 1
    assert config.datasets[0].subsets == ["obvious", "subtle"]
    assert config.detectors[0].label == "ae"


def test_shipped_default_config_is_valid():
    config = load_config(REPO_ROOT / "configs" / "default.yaml")
    assert config.name == "default" and any(d.name == "synthetic" for d in config.datasets)


@pytest.mark.parametrize("raw,expected", [
    (base(imagesize=3), "imagesize: unknown key; did you mean 'image_size'? Allowed: channels,"),
    (base(colour=3), "colour: unknown key; allowed: channels,"),
    (base(image_size="64"), "image_size: expected int, got str"),
    (base(seeds=[0, "one"]), "seeds[1]: expected int"),
    (base(device="tpu"), "device: expected one of auto, cpu, cuda"),
    (base(memory_format="nhwc"), "memory_format: expected one of auto, channels_last, contiguous, got 'nhwc'"),
    (base(precision="fp16"), "precision: expected one of fp32, bf16, got 'fp16'"),
    (base(channels=2), "channels: expected one of 1, 3, got 2"),
    (base(detectors=[{"name": "nope"}]), "detectors[0].name: unknown detector 'nope'; known detectors: "),
    (base(datasets=[{"name": "nope"}]), "datasets[0].name: unknown dataset 'nope'"),
    (base(datasets=[{"name": "synthetic", "subsets": ["huge"]}]), "has no subset 'huge'; its subsets: obvious, subtle"),
    (base(detectors=[{"name": "ae", "params": {"epoch": 3}}]),
     "detectors[0].params.epoch: unknown parameter of 'ae'; did you mean 'epochs'? Allowed: "),
    (base(detectors=[{"name": "ae", "params": {"lr": "fast"}}]), "detectors[0].params.lr: expected float, got str"),
    (base(detectors=[{"name": "ae", "params": {"epochs": 2.5}}]), "detectors[0].params.epochs: expected int, got float"),
    (base(datasets=[{"name": "synthetic", "params": {"lesion_radius": [0.1, "x"]}}]), "lesion_radius[1]: expected float"),
    (base(detectors=[{"name": "ae"}, {"name": "ae"}]), "label 'ae' appears twice"),
    (base(detectors=[{"name": "ae", "params": {"seed": 3}}]), "unknown parameter"),
    ({"name": "t"}, "image_size: missing (required)"),
    (base(detectors=[{"name": "ae", "datasets": ["synthetic/huge"]}]),
     "detectors[0].datasets: 'synthetic/huge' is not a dataset or dataset/subset of this config; it has: synthetic, "),
    (base(detectors=[{"name": "ae", "image_size": 4}]), "detectors[0].image_size: expected int in [8, 4096], got 4"),
    (base(detectors=[{"name": "ae", "channels": 2}]), "detectors[0].channels: expected one of 1, 3, got 2"),
])
def test_bad_configs_name_the_key(raw, expected):
    with pytest.raises(ConfigError) as error:
        parse_config(raw)
    assert expected in str(error.value)


def test_detector_entries_pick_their_datasets_and_input_size():
    from medad.benchmark.jobs import expand_jobs

    config = parse_config(base(detectors=[
        {"name": "ae"},
        {"name": "ae", "label": "ae-big", "image_size": 48, "channels": 3, "datasets": ["synthetic/subtle"]},
    ]))
    cells = {(job.detector, job.subset, job.image_size, job.channels) for job in expand_jobs(config)}
    assert cells == {("ae", "obvious", 32, 1), ("ae", "subtle", 32, 1), ("ae-big", "subtle", 48, 3)}


def test_papers_config_runs_each_paper_on_its_own_datasets():
    from medad.benchmark.jobs import expand_jobs

    jobs = expand_jobs(load_config(REPO_ROOT / "configs" / "papers.yaml"), "/data")
    pairs = {(job.detector, job.dataset) for job in jobs}
    assert ("mama-net", "rider") in pairs and ("proxyano", "brain-tumor-mri") in pairs
    assert not {pair for pair in pairs if pair[0].startswith("sure-roi") and pair[1] != "montgomery-shenzhen"}
    assert {job.image_size for job in jobs if job.detector.startswith("mama-net")} == {228}


def test_allowed_parameters_are_listed():
    with pytest.raises(ConfigError) as error:
        parse_config(base(detectors=[{"name": "ae", "params": {"epoch": 3}}]))
    assert "epochs" in str(error.value) and "lr" in str(error.value)


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "absent.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)


def test_narrowing_by_cli_flags():
    config = parse_config(base(detectors=[{"name": "ae"}, {"name": "ae", "label": "ae-wide", "params": {"width": 64}}],
                               seeds=[0, 1, 2]))
    narrowed = narrow(config, detectors=["ae-wide"], seeds=[5], device="cpu")
    assert [d.label for d in narrowed.detectors] == ["ae-wide"] and narrowed.seeds == [5] and narrowed.device == "cpu"
    with pytest.raises(ConfigError, match="--detectors: 'x' is not in the config"):
        narrow(parse_config(base()), detectors=["x"])
    with pytest.raises(ConfigError, match="--device"):
        narrow(parse_config(base()), device="gpu")
    assert parse_config(base()).memory_format == "auto" and parse_config(base()).precision == "fp32"
    narrowed = narrow(parse_config(base()), memory_format="channels_last", precision="bf16")
    assert (narrowed.memory_format, narrowed.precision) == ("channels_last", "bf16")
    with pytest.raises(ConfigError, match="--precision: expected one of fp32, bf16"):
        narrow(parse_config(base()), precision="half")
