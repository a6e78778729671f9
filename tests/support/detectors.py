"""Detectors used only by tests, reached through dotted class paths (``tests.support.detectors:Name``)."""

from __future__ import annotations

import os
import time

import torch

from medad.datasets.base import ImageSet
from medad.detectors.base import Detector, TrainLog


class TemplateDistance(Detector):
    """Distance to the mean training image, blurred: quick, deterministic, separates obvious lesions a bit."""

    name = "template-distance"

    def __init__(self, *, image_size: int, channels: int, device: str = "cpu", seed: int = 0,
                 fit_seconds: float = 0.0, wait_for_file: str = "") -> None:
        super().__init__(image_size=image_size, channels=channels, device=device, seed=seed)
        self.fit_seconds = fit_seconds
        self.wait_for_file = wait_for_file
        self.template = torch.zeros(channels, image_size, image_size)

    def fit(self, train: ImageSet, val: ImageSet | None = None, log: TrainLog | None = None) -> None:
        log = log or TrainLog()
        self.template = train.float_images().mean(dim=0)
        time.sleep(self.fit_seconds)
        deadline = time.time() + 120
        while self.wait_for_file and not os.path.exists(self.wait_for_file) and time.time() < deadline:
            time.sleep(0.05)  # a test holds the job until it has looked at the running run
        log.log(0, 0, template_norm=self.template.norm())

    def score(self, images: torch.Tensor) -> torch.Tensor:
        return (images - self.template).pow(2).flatten(1).mean(dim=1)

    def extra_state(self) -> dict[str, torch.Tensor]:
        return {"template": self.template}

    def load_extra_state(self, state: dict[str, torch.Tensor]) -> None:
        self.template = state["template"]


class FailingDetector(TemplateDistance):
    """Raises inside fit."""

    def fit(self, train: ImageSet, val: ImageSet | None = None, log: TrainLog | None = None) -> None:
        raise RuntimeError("deliberate failure inside fit")


class NaNLossDetector(TemplateDistance):
    """Its training loss becomes NaN."""

    def fit(self, train: ImageSet, val: ImageSet | None = None, log: TrainLog | None = None) -> None:
        (log or TrainLog()).log(0, 0, loss=float("nan"))


class ExitingDetector(TemplateDistance):
    """Calls ``sys.exit`` inside fit (a plugin that quits)."""

    def fit(self, train: ImageSet, val: ImageSet | None = None, log: TrainLog | None = None) -> None:
        raise SystemExit(3)


class WrongCountDetector(TemplateDistance):
    """Returns one score too few per batch."""

    def score(self, images: torch.Tensor) -> torch.Tensor:
        return super().score(images)[:-1]


class CountedFit(TemplateDistance):
    """Appends a line (its seed) to ``count_file`` each time it is fitted: counts the fits a run trained. With
    ``sees_test`` its training takes the test set (``sees_test_set``, a reference-protocol quirk) without declaring
    it in ``fit_shareable``: the harness must still not share its fits."""

    def __init__(self, *, image_size: int, channels: int, device: str = "cpu", seed: int = 0, count_file: str = "",
                 sees_test: bool = False) -> None:
        super().__init__(image_size=image_size, channels=channels, device=device, seed=seed)
        self.count_file, self.sees_test = count_file, sees_test

    @property
    def sees_test_set(self) -> bool:
        return self.sees_test

    def fit(self, train: ImageSet, val: ImageSet | None = None, log: TrainLog | None = None,
            test: ImageSet | None = None) -> None:
        with open(self.count_file, "a") as handle:
            handle.write(f"{self.seed}\n")
        super().fit(train if test is None else ImageSet.concat([train, test.without_labels()]), val, log)


class NumericsProbe(TemplateDistance):
    """Records, when built, the process's arithmetic flags (deterministic algorithms, cuDNN, TF32, the cuBLAS
    workspace variable) as tag columns of its rows: what a job had set before building its detector."""

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.flags = {
            "probe_deterministic": str(torch.are_deterministic_algorithms_enabled()),
            "probe_cudnn": f"deterministic={torch.backends.cudnn.deterministic} benchmark={torch.backends.cudnn.benchmark}",
            "probe_tf32": f"matmul={torch.backends.cuda.matmul.allow_tf32} cudnn={torch.backends.cudnn.allow_tf32} "
                          f"{torch.get_float32_matmul_precision()}",
            "probe_cublas": os.environ.get("CUBLAS_WORKSPACE_CONFIG", "unset"),
        }

    def extra_tags(self) -> dict[str, str]:
        return self.flags


def arithmetic_flags() -> dict[str, object]:
    """The process's arithmetic flags as they stand: deterministic algorithms, cuDNN, TF32, the cuBLAS variable."""
    return {"deterministic": torch.are_deterministic_algorithms_enabled(),
            "warn_only": torch.is_deterministic_algorithms_warn_only_enabled(),
            "cudnn_deterministic": torch.backends.cudnn.deterministic, "cudnn_benchmark": torch.backends.cudnn.benchmark,
            "matmul_tf32": torch.backends.cuda.matmul.allow_tf32, "cudnn_tf32": torch.backends.cudnn.allow_tf32,
            "matmul_precision": torch.get_float32_matmul_precision(),
            "cublas_workspace": os.environ.get("CUBLAS_WORKSPACE_CONFIG", "unset")}


class FitFlagsProbe(TemplateDistance):
    """Appends the process's arithmetic flags, as its ``fit`` runs, to :attr:`seen` (a list shared by the process):
    what a job, a calibration or a benchmark fitted under."""

    seen: list[dict[str, object]] = []

    def fit(self, train: ImageSet, val: ImageSet | None = None, log: TrainLog | None = None) -> None:
        FitFlagsProbe.seen.append(arithmetic_flags())
        super().fit(train, val, log)


class JitteryTemplate(TemplateDistance):
    """Adds unseeded noise of size ``jitter`` to its template after fitting: two same-seed fits differ by about that
    much, as fits on a GPU without deterministic algorithms differ in their last bits (here at a chosen size)."""

    name = "jittery-template"
    smoke_params = {"jitter": 3e-3}

    def __init__(self, *, image_size: int, channels: int, device: str = "cpu", seed: int = 0, jitter: float = 0.0) -> None:
        super().__init__(image_size=image_size, channels=channels, device=device, seed=seed)
        self.jitter = jitter

    def fit(self, train: ImageSet, val: ImageSet | None = None, log: TrainLog | None = None) -> None:
        super().fit(train, val, log)
        unseeded = torch.Generator().manual_seed(int.from_bytes(os.urandom(8), "little"))
        self.template = self.template + self.jitter * torch.randn(self.template.shape, generator=unseeded)


class VeryJitteryTemplate(JitteryTemplate):
    """:class:`JitteryTemplate` whose same-seed fits differ by far more than any tolerance."""

    name = "very-jittery-template"
    smoke_params = {"jitter": 0.3}


class SigmoidBCEDetector(TemplateDistance):
    """Logs a loss computed with ``F.binary_cross_entropy`` on sigmoid outputs: the op CUDA's autocast refuses."""

    name = "sigmoid-bce"

    def fit(self, train: ImageSet, val: ImageSet | None = None, log: TrainLog | None = None) -> None:
        super().fit(train, val, log)
        probability = torch.sigmoid(self.template.flatten()[:8])
        (log or TrainLog()).log(0, 1, bce=torch.nn.functional.binary_cross_entropy(probability, torch.ones(8)))
