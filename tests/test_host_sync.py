"""Less host work per training step: losses read from the device every ``log_every`` steps, images held on the
job's device as uint8, and fit loops that never wait for the device once per step."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from medad.benchmark.config import ConfigError, load_config
from medad.benchmark.device_images import place_images, subset_image_bytes
from medad.benchmark.job_runner import fit_detector
from medad.benchmark.jobs import expand_jobs
from medad.detectors.ae import AEDetector
from medad.detectors.base import Detector, NonFiniteLossError, TrainLog
from medad.registry import DETECTORS
from medad.testing import DetectorUnderTest, resolve, smoke_subset
from tests.conftest import write_config
from tests.support.host_reads import HostReads


class ReadAtOnce(TrainLog):
    """The per-step reference: every tensor loss read as a Python float the moment it is logged."""

    def log(self, epoch: int, step: int, **losses: float | torch.Tensor) -> None:
        super().log(epoch, step, **{name: float(value.detach()) if isinstance(value, torch.Tensor) else value
                                    for name, value in losses.items()})


def _ae_rows(log: TrainLog) -> list[tuple[int, int, str, float]]:
    subset = smoke_subset(image_size=32)
    detector = AEDetector(image_size=32, channels=1, seed=0, epochs=2, batch_size=16, width=8, latent=16)
    fit_detector(detector, subset, log)
    return log.rows


def test_history_rows_do_not_depend_on_log_every():
    expected = _ae_rows(ReadAtOnce(log_every=1))
    assert len(expected) == 2 * 4 and {name for _, _, name, _ in expected} == {"mse"}
    for log_every in (3, 50):  # read mid-epoch (3 does not divide the 4 steps of an epoch), and per epoch
        assert _ae_rows(TrainLog(log_every=log_every)) == expected, log_every


def test_held_losses_are_read_every_log_every_steps_and_at_epoch_ends():
    log = TrainLog(log_every=3)
    for step in range(2):
        log.log(0, step, loss=torch.tensor(float(step)))
    assert log._rows == [] and len(log._pending) == 2          # held, not read
    log.log(0, 2, loss=torch.tensor(2.0), other=0.5)              # the third call reads them
    assert log._rows == [(0, 0, "loss", 0.0), (0, 1, "loss", 1.0), (0, 2, "loss", 2.0), (0, 2, "other", 0.5)]
    epochs = TrainLog(log_every=1000)
    for epoch in epochs.epochs(2):
        epochs.log(epoch, epoch, loss=torch.tensor(1.5, dtype=torch.bfloat16), count=torch.tensor(7))
        assert len(epochs._rows) == 2 * epoch                     # the previous epoch's were read at its end
    assert epochs.rows == [(0, 0, "loss", 1.5), (0, 0, "count", 7.0), (1, 1, "loss", 1.5), (1, 1, "count", 7.0)]
    assert epochs.summary(1) == "loss=1.5 count=7"


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_a_non_finite_loss_fails_at_most_log_every_steps_late_naming_its_first_step(bad):
    log = TrainLog(log_every=4)
    log.log(0, 0, a=torch.tensor(1.0), b=torch.tensor(2.0))
    log.log(0, 1, a=torch.tensor(1.0), b=torch.tensor(bad))      # first non-finite: b at step 1
    log.log(0, 2, a=torch.tensor(bad), b=torch.tensor(bad))
    with pytest.raises(NonFiniteLossError, match=rf"^loss 'b' became {bad} at epoch 0, step 1$"):
        log.log(0, 3, a=torch.tensor(1.0))                        # the 4th call reads: 2 steps late
    assert log._rows == [(0, 0, "a", 1.0), (0, 0, "b", 2.0), (0, 1, "a", 1.0)]


def test_a_non_finite_python_number_fails_at_once_after_an_earlier_held_one():
    log = TrainLog(log_every=50)
    with pytest.raises(NonFiniteLossError, match=r"^loss 'loss' became nan at epoch 0, step 0$"):
        log.log(0, 0, loss=float("nan"))
    held = TrainLog(log_every=50)
    held.log(0, 0, loss=torch.tensor(float("inf")))
    with pytest.raises(NonFiniteLossError, match=r"^loss 'loss' became inf at epoch 0, step 0$"):
        held.log(0, 1, auc=float("nan"))


class NaNTensorDetector(Detector):
    """Logs one NaN tensor loss and returns: nothing reads it before the harness does."""

    def fit(self, train, val=None, log=None) -> None:
        (log or TrainLog()).log(0, 3, loss=torch.tensor(float("nan")))

    def score(self, images: torch.Tensor) -> torch.Tensor:
        return images.flatten(1).mean(dim=1)


def test_the_harness_reads_held_losses_when_the_fit_returns():
    detector = NaNTensorDetector(image_size=32, channels=1)
    with pytest.raises(NonFiniteLossError, match=r"^loss 'loss' became nan at epoch 0, step 3$"):
        fit_detector(detector, smoke_subset(image_size=32), TrainLog())


def _config_path(tmp_path, **top) -> str:
    import yaml

    path = write_config(tmp_path / "c.yaml", detectors=[{"name": "ae"}])
    path.write_text(yaml.safe_dump({**yaml.safe_load(path.read_text()), **top}, sort_keys=False))
    return str(path)


def test_log_every_is_a_run_setting(tmp_path):
    assert load_config("default").log_every == 50
    config = load_config(_config_path(tmp_path, log_every=7))
    assert config.log_every == 7 and {job.log_every for job in expand_jobs(config)} == {7}
    with pytest.raises(ConfigError, match="log_every"):
        load_config(_config_path(tmp_path, log_every=0))
    with pytest.raises(ValueError, match="log_every must be >= 1"):
        TrainLog(log_every=0)


# --- images on the job's device --------------------------------------------------------------------------------

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA"))]


@pytest.mark.parametrize("device", DEVICES)
def test_batches_of_device_images_equal_the_host_batches_bit_for_bit(device):
    images = smoke_subset(image_size=32).train
    placed = images.to(device)
    assert placed.images.dtype == torch.uint8 and placed.images.device.type == device
    host = list(images.batches(10, shuffle=True, generator=torch.Generator().manual_seed(3)))
    moved = list(placed.batches(10, shuffle=True, generator=torch.Generator().manual_seed(3)))
    assert [b.device.type for b in moved] == [device] * len(host)
    assert all(torch.equal(a, b.cpu()) for a, b in zip(host, moved, strict=True))
    # the definition the batches always had: the seeded order's uint8 images divided by 255 in float32
    order = torch.randperm(len(images), generator=torch.Generator().manual_seed(3))
    assert torch.equal(torch.cat(host), images.images[order].to(torch.float32) / 255.0)


def test_a_subset_moves_every_part_once_and_keeps_labels_ids_and_masks_on_the_host():
    subset = smoke_subset(image_size=32)
    subset = replace(subset, val=subset.train, val_in_sample=True)
    moved = subset.to("meta")  # a device without memory: shows what moves, on any machine
    assert moved.val is moved.train and moved.train.images.device.type == "meta"
    for part in (moved.train, moved.test, moved.anomaly_pool):
        assert part.images.device.type == "meta" and part.images.dtype == torch.uint8
    assert moved.test.masks is None or moved.test.masks.device.type == "cpu"
    assert moved.train.ids == subset.train.ids and np.array_equal(moved.test.labels, subset.test.labels)
    batch = next(moved.train.batches(8, shuffle=True, generator=torch.Generator().manual_seed(0)))
    assert batch.device.type == "meta" and batch.dtype == torch.float32 and batch.shape == (8, 1, 32, 32)
    assert subset.to("cpu").train is subset.train  # already there: nothing copied


def test_images_stay_on_the_host_when_they_would_take_over_a_quarter_of_the_free_device_memory():
    subset = smoke_subset(image_size=32)
    size = subset_image_bytes(subset)
    parts = (subset.train, subset.val, subset.test, subset.anomaly_pool)
    assert size == sum(p.images.nbytes + (0 if p.roi_masks is None else p.roi_masks.nbytes) for p in parts)
    kept, where = place_images(subset, torch.device("meta"), free_bytes=4 * size - 1)
    assert kept is subset and where.startswith("images on the host:") and "exceed 25%" in where
    moved, where = place_images(subset, torch.device("meta"), free_bytes=4 * size)
    assert moved.train.images.device.type == "meta" and where.startswith("images on meta as uint8")
    same, where = place_images(subset, torch.device("cpu"))
    assert same is subset


# --- no host read per training step ----------------------------------------------------------------------------

EPOCH_PARAMS = ("epochs", "gan_epochs", "encoder_epochs", "stage1_epochs", "stage2_epochs", "cin_epochs")
# Per-step host reads that belong to the method (a value decides what the step does next), by detector:
KNOWN_PER_STEP_READS = {
    "ganomaly": {"detectors/ganomaly/detector.py:fit"},   # loss_d < 1e-5 re-initialises D (reference code)
    "sure-roi": {"detectors/sure_roi.py:_step"},          # l_D below reinit_below re-initialises Dc
    "mama-net": {"detectors/mamanet/losses.py:batch_emd",  # POT's exact EMD solves on the host
                 "detectors/blocks/memory.py:_track"},    # idle slots re-seeded: how many decides the draw
}


def _host_reads(name: str, batches: int) -> HostReads:
    kit = DetectorUnderTest(resolve(name))
    params = {**kit.cls.smoke_params, **{key: 1 for key in EPOCH_PARAMS if key in kit.cls.smoke_params}}
    detector = kit.cls(image_size=kit.cls.smoke_image_size, channels=1, device="cpu", seed=0, **params)
    subset = kit.subset()
    subset = replace(subset, train=subset.train.subset(np.arange(batches * params["batch_size"])))
    roots = [t for module in detector.networks().values() for t in (*module.parameters(), *module.buffers())]
    for part in (subset.train, subset.val, subset.test, subset.anomaly_pool):
        roots += [] if part is None else [part.images] + ([] if part.roi_masks is None else [part.roi_masks])
    with HostReads(roots) as reads:
        fit_detector(detector, subset, TrainLog(log_every=10**6))
    return reads


@pytest.mark.slow
# the controls train no steps: they read the training images on the host once, by design (float64 statistics)
@pytest.mark.parametrize("name", [name for name in DETECTORS.names() if not DETECTORS.get(name).control])
def test_a_fit_reads_device_values_per_epoch_not_per_step(name):
    one, three = _host_reads(name, 1), _host_reads(name, 3)  # the same epochs, three times the steps
    assert one.count > 0  # the losses are read, at least at the end
    grown = {site for site in three.sites if three.sites[site] > one.sites[site]}
    assert grown <= KNOWN_PER_STEP_READS.get(name, set()), dict(three.sites - one.sites)


def test_the_host_read_counter_sees_a_per_step_read():
    weights = torch.ones(3)
    with HostReads([weights]) as reads:
        for _ in range(4):
            float((weights * 2).sum())              # a device value read: counted
            int(torch.randint(3, (1,), generator=torch.Generator()))  # a host draw: not counted
        (weights > 1).nonzero()
    assert reads.count == 5


def test_a_read_is_charged_to_medads_own_code_wherever_the_checkout_lies(tmp_path):
    # `git clone` names the checkout's folder medad: a test helper at <somewhere>/medad/tests/... is not medad's code
    helper = tmp_path / "medad" / "tests" / "support" / "helper.py"
    source = "def read(weights):\n    return float(weights.sum())\n"
    namespace: dict = {}
    exec(compile(source, str(helper), "exec"), namespace)
    weights = torch.ones(3)
    with HostReads([weights]) as reads:
        namespace["read"](weights)                     # read by a file outside the medad package: no medad site
        TrainLog(log_every=1).log(0, 0, loss=weights.sum())  # read by medad's TrainLog
    assert set(reads.sites) == {"?", "detectors/base.py:_host_values"}, dict(reads.sites)
