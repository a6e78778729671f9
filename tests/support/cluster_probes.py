"""Detectors that let the executor tests see where and how often a job ran (``tests.support.cluster_probes:Name``)."""

from __future__ import annotations

import os
import time
from pathlib import Path

from medad.datasets.base import ImageSet
from medad.detectors.base import TrainLog
from tests.support.detectors import TemplateDistance


class DeviceProbe(TemplateDistance):
    """Tags its results with the GPU index its worker process sees (``CUDA_VISIBLE_DEVICES``).

    ``fit`` first waits (at most ``wait_s``) until jobs on ``workers`` different GPU indices have started,
    each leaving a file in ``barrier_dir``: so a pool that works spreads its jobs over every worker,
    whatever the start-up time of each.
    """

    def __init__(self, *, image_size: int, channels: int, device: str = "cpu", seed: int = 0,
                 barrier_dir: str = "", workers: int = 2, wait_s: float = 60.0) -> None:
        super().__init__(image_size=image_size, channels=channels, device=device, seed=seed)
        self.barrier_dir, self.workers, self.wait_s = Path(barrier_dir), workers, wait_s
        self.visible = os.environ.get("CUDA_VISIBLE_DEVICES", "unset")

    def fit(self, train: ImageSet, val: ImageSet | None = None, log: TrainLog | None = None) -> None:
        self.barrier_dir.mkdir(parents=True, exist_ok=True)
        (self.barrier_dir / f"{self.visible}-{os.getpid()}").touch()
        deadline = time.monotonic() + self.wait_s
        while time.monotonic() < deadline:
            if len({p.name.split("-")[0] for p in self.barrier_dir.iterdir()}) >= self.workers:
                break
            time.sleep(0.05)
        super().fit(train, val, log)

    def extra_tags(self) -> dict[str, str]:
        return {"cuda_visible_devices": self.visible}


class CountedFailure(TemplateDistance):
    """Appends a line to ``count_file`` each time it is fitted, then fails: counts how often a failing job ran."""

    def __init__(self, *, image_size: int, channels: int, device: str = "cpu", seed: int = 0,
                 count_file: str = "") -> None:
        super().__init__(image_size=image_size, channels=channels, device=device, seed=seed)
        self.count_file = Path(count_file)

    def fit(self, train: ImageSet, val: ImageSet | None = None, log: TrainLog | None = None) -> None:
        with open(self.count_file, "a") as handle:
            handle.write(f"{os.getpid()}\n")
        raise RuntimeError("deliberate failure inside fit")


class DiesScoringTheSecondJob(TemplateDistance):
    """Ends its worker process (``os._exit``, as the OOM killer would) when the second job of a run starts scoring:
    each job scores its own detector object, which appends a line to ``score_file`` at its first score."""

    def __init__(self, *, image_size: int, channels: int, device: str = "cpu", seed: int = 0,
                 score_file: str = "") -> None:
        super().__init__(image_size=image_size, channels=channels, device=device, seed=seed)
        self.score_file, self.announced = Path(score_file), False

    def score(self, images):
        if not self.announced:
            self.announced = True
            with open(self.score_file, "a") as handle:
                handle.write(f"{os.getpid()}\n")
            if len(self.score_file.read_text().splitlines()) >= 2:
                os._exit(1)
        return super().score(images)
