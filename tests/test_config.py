"""Config validation: unknown keys, unknown names and wrong types name the key and list what is allowed."""

from __future__ import annotations

import re

import pytest

from medad.benchmark.config import ConfigError, load_config, narrow, parse_config


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
    config = load_config("default")
    assert config.name == "default" and any(d.name == "synthetic" for d in config.datasets)


@pytest.mark.parametrize("raw,expected", [
    (base(imagesize=3), "imagesize: unknown key; did you mean 'image_size'? Allowed: channels,"),
    (base(colour=3), "colour: unknown key; allowed: channels,"),
    (base(image_size="64"), "image_size: expected int, got str"),
    (base(seeds=[0, "one"]), "seeds[1]: expected int"),
    (base(device="tpu"), "device: expected one of auto, cpu, cuda"),
    (base(memory_format="nhwc"), "memory_format: expected one of auto, channels_last, contiguous, got 'nhwc'"),
    (base(precision="fp16"), "precision: expected one of fp32, tf32, bf16, got 'fp16'"),
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

    jobs = expand_jobs(load_config("papers"), "/data")
    pairs = {(job.detector, job.dataset) for job in jobs}
    assert ("mama-net", "rider") in pairs and ("proxyano", "brain-tumor-mri") in pairs
    assert not {pair for pair in pairs if pair[0].startswith("sure-roi") and pair[1] != "montgomery-shenzhen"}
    assert {job.image_size for job in jobs if job.detector.startswith("mama-net")} == {228}
    for name in ("patchcore", "patchcore-1pct", "padim", "padim-r18"):
        assert {dataset for detector, dataset in pairs if detector == name} == {"oct", "br35h"}, name
    assert {job.image_size for job in jobs if job.detector.startswith(("patchcore", "padim"))} == {224}
    assert {(job.dataset, job.subset) for job in jobs if job.detector == "reverse-distillation"} == {
        ("oct", "cnv"), ("oct", "dme"), ("oct", "drusen"), ("oct", "all"), ("br35h", "default")}
    assert {job.image_size for job in jobs if job.detector == "reverse-distillation"} == {256}


def test_modern_config_runs_the_three_feature_detectors_at_the_study_and_paper_sizes_beside_the_controls():
    """Needs the control detectors (intensity, histogram, mean-image) registered."""
    from medad.benchmark.fit_sharing import fit_ids
    from medad.benchmark.jobs import expand_jobs

    study, modern = load_config("study"), load_config("modern")
    jobs = expand_jobs(modern, "/data")
    sizes = {job.detector: job.image_size for job in jobs}
    assert sizes == {"patchcore": 128, "patchcore-224": 224, "padim": 128, "padim-224": 224, "reverse-distillation": 128,
                     "reverse-distillation-256": 256, "intensity": 128, "histogram": 128, "mean-image": 128}
    study_units = {(job.dataset, job.subset) for job in expand_jobs(study, "/data")}
    assert {(job.dataset, job.subset) for job in jobs} == study_units | {("oct", "all")}
    assert modern.seeds == study.seeds and modern.channels == study.channels
    assert all(entry.params.get("val_source") == "train" for entry in modern.datasets)
    assert not any(entry.params for entry in modern.detectors if entry.name in ("padim", "reverse-distillation"))
    ids = fit_ids(jobs)
    oct_fits = {ids[job.job_id] for job in jobs if job.dataset == "oct" and job.detector == "reverse-distillation"}
    assert len(oct_fits) == len(modern.seeds)  # cnv, dme, drusen and all share one fit per seed


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
    with pytest.raises(ConfigError, match="--precision: expected one of fp32, tf32, bf16"):
        narrow(parse_config(base()), precision="half")


# --- reading the file: bounded, strict, forgiving where YAML 1.1 surprises --------------------------
def test_binary_and_non_utf8_config_files_are_named(tmp_path):
    binary = tmp_path / "model.pt"
    binary.write_bytes(b"PK\x03\x04\x00\x00binary")
    with pytest.raises(ConfigError, match=r"model.pt: a binary file"):
        load_config(binary)
    latin = tmp_path / "latin.yaml"
    latin.write_bytes("name: caf\xe9\n".encode("latin-1"))
    with pytest.raises(ConfigError, match=r"latin.yaml: not UTF-8 text"):
        load_config(latin)


def test_duplicate_keys_name_the_key_and_both_lines(tmp_path):
    path = tmp_path / "dup.yaml"
    path.write_text("name: t\nimage_size: 32\nseeds: [0]\nimage_size: 64\ndatasets: [{name: synthetic}]\n"
                    "detectors: [{name: ae}]\n")
    with pytest.raises(ConfigError, match=r"dup.yaml: line 4: duplicate key 'image_size' \(lines 2 and 4\)"):
        load_config(path)


def test_exponent_floats_are_floats_and_errors_name_file_and_key(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("name: t\nimage_size: 32\ndatasets: [{name: synthetic}]\ndetectors: [{name: ae, params: {lr: 1e-3}}]\n")
    assert load_config(path).detectors[0].params["lr"] == pytest.approx(0.001)
    path.write_text("name: t\nimage_size: 32\nseed: [1]\ndatasets: [{name: synthetic}]\ndetectors: [{name: ae}]\n")
    with pytest.raises(ConfigError, match=r"c.yaml: seed: unknown key; did you mean 'seeds'\?"):
        load_config(path)


def test_quoted_values_in_errors_are_cut_short():
    huge = "x" * 100_000
    with pytest.raises(ConfigError) as error:
        parse_config(base(image_size=huge))
    assert len(str(error.value)) < 300
    nested = [[list(range(1000))] * 1000]
    with pytest.raises(ConfigError) as error:
        parse_config(base(seeds=nested))
    assert len(str(error.value)) < 300


@pytest.mark.parametrize("params,expected", [
    ({"epochs": -3}, "epochs: expected int >= 1, got -3"),
    ({"epochs": 0}, "epochs: expected int >= 1, got 0"),
    ({"batch_size": 0}, "batch_size: expected int >= 1, got 0"),
    ({"lr": -1}, "lr: expected float > 0, got -1"),
    ({"lr": float("nan")}, "lr: expected a finite number, got nan"),
    ({"top_fraction": 1.5}, "top_fraction: expected float in (0, 1], got 1.5"),
])
def test_hyperparameter_ranges_are_checked_at_validation(params, expected):
    with pytest.raises(ConfigError, match=re.escape(expected)):
        parse_config(base(detectors=[{"name": "ae", "params": params}]))


@pytest.mark.parametrize("raw,expected", [
    (base(score_batch_size=0), "score_batch_size: expected int >= 1, got 0"),
    (base(image_size=100000), "image_size: expected int in [8, 4096], got 100000"),
    (base(seeds=[-1]), "seeds[0]: expected int in [0, 4294967295], got -1"),
    (base(seeds=[2**32]), "seeds[0]: expected int in [0, 4294967295], got 4294967296"),
    (base(datasets=[{"name": "synthetic", "params": {"n_train": -5}}]), "datasets[0].params.n_train: expected int >= 1"),
    (base(detectors=[{"name": "ganomaly", "params": {"protocol": "ref"}}]),
     "detectors[0].params.protocol: expected one of clean, reference, got 'ref'"),
    (base(detectors=[{"name": "f-anogan", "params": {"input_range": "wide"}}]),
     "detectors[0].params.input_range: expected one of symmetric, unit, got 'wide'"),
    (base(detectors=[{"name": "mama-net", "params": {"iterations": 0}}]),
     "detectors[0].params: give iterations >= 1 or epochs >= 1"),
    (base(detectors=[{"name": "os:system"}]), "detectors[0].name: 'os:system' is not a medad.detectors.base.Detector"),
    (base(datasets=[{"name": "os:path"}]), "datasets[0].name: 'os:path' is not a medad.datasets.base.Dataset"),
])
def test_ranges_choices_and_classes_are_checked_at_validation(raw, expected):
    with pytest.raises(ConfigError, match=re.escape(expected)):
        parse_config(raw)


def test_narrow_leaves_its_argument_alone():
    config = parse_config(base(detectors=[{"name": "ae"}, {"name": "ae", "label": "ae-wide"}], seeds=[0, 1]))
    narrowed = narrow(config, detectors=["ae-wide"], seeds=[5], device="cpu")
    assert [d.label for d in config.detectors] == ["ae", "ae-wide"] and config.seeds == [0, 1]
    assert config.device == "auto" and narrowed.device == "cpu"


def test_auto_memory_format_is_channels_last_on_the_cpu_too():
    import torch

    from medad.benchmark.acceleration import resolve_memory_format

    cpu = torch.device("cpu")
    assert resolve_memory_format("auto", cpu) == torch.channels_last        # measured faster or equal on the CPU
    assert resolve_memory_format("contiguous", cpu) == torch.contiguous_format
