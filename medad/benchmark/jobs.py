"""Jobs: one cell of the matrix (dataset x subset x detector x seed), and the generator that expands a config."""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from typing import Any

from medad.benchmark.config import RunConfig, check_test_curve
from medad.detectors.base import LOG_EVERY


@dataclass(frozen=True)
class Job:
    """Everything one cell needs, picklable so a worker process can run it."""

    dataset: str
    subset: str
    detector: str          # the label: the name in CSVs
    detector_name: str     # the registry name (or class path)
    seed: int
    image_size: int
    channels: int
    device: str
    score_batch_size: int
    save_checkpoints: bool
    dataset_params: dict[str, Any] = field(default_factory=dict)
    detector_params: dict[str, Any] = field(default_factory=dict)
    dataset_root: str | None = None
    resources: dict[str, Any] = field(default_factory=dict)  # what to ask a cluster for (config ``resources``)
    memory_format: str = "auto"  # config ``memory_format`` (medad.benchmark.acceleration)
    precision: str = "fp32"      # config ``precision``
    deterministic: bool = False  # config ``deterministic`` (medad.benchmark.numerics)
    test_curve: bool = False     # config ``test_curve``: the test-set diagnostic (medad.benchmark.diagnostics)
    log_every: int = LOG_EVERY   # config ``log_every``: logged steps between reads of the training losses
    # (sample id, part) of the split the run recorded for this subset, when this medad's rule would split its
    # unchanged files otherwise (medad.benchmark.recorded_splits); empty: the dataset's own split
    recorded_split: tuple[tuple[str, str], ...] = ()

    @property
    def job_id(self) -> str:
        """A file-name-safe id, unique within a run."""
        raw = f"{self.dataset}__{self.subset}__{self.detector}__seed{self.seed}"
        return re.sub(r"[^A-Za-z0-9_.-]", "-", raw)

    def keys(self) -> dict[str, Any]:
        """The identifying columns every CSV row of this job carries."""
        return {"dataset": self.dataset, "subset": self.subset, "detector": self.detector, "seed": self.seed}

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def expand_jobs(config: RunConfig, data_root: str | None = None) -> list[Job]:
    """The jobs of ``config``, ordered dataset, subset, detector, seed (data loaded once per subset); ConfigError
    when ``test_curve`` is on beside a detector that selects with held-out labels (:func:`check_test_curve`)."""
    check_test_curve(config)
    jobs = []
    for dataset in config.datasets:
        root = dataset.root or (f"{data_root}/{dataset.name}" if data_root else None)
        for subset in dataset.subsets:
            for detector in config.detectors:
                if not detector.runs_on(dataset.name, subset):
                    continue
                for seed in config.seeds:
                    jobs.append(Job(
                        dataset=dataset.name, subset=subset, detector=detector.label, detector_name=detector.name,
                        seed=seed, image_size=detector.image_size or config.image_size,
                        channels=detector.channels or config.channels, device=config.device,
                        score_batch_size=config.score_batch_size, save_checkpoints=config.save_checkpoints,
                        dataset_params=dict(dataset.params), detector_params=dict(detector.params), dataset_root=root,
                        resources={**config.resources, **detector.resources},
                        memory_format=config.memory_format, precision=config.precision,
                        deterministic=config.deterministic,
                        test_curve=config.test_curve,
                        log_every=config.log_every,
                    ))
    ids = [job.job_id for job in jobs]
    if len(set(ids)) != len(ids):
        duplicated = sorted({i for i in ids if ids.count(i) > 1})
        raise ValueError(f"the config gives the same job twice: {duplicated[0]} (a dataset listed twice?)")
    return jobs
