"""The detector conformance kit: the checks every detector must pass, for medad's own tests and for plugin authors.

Each check fits the detector with its ``smoke_params`` on a tiny synthetic set of very obvious
anomalies (``smoke_image_size`` px) and asserts one property of the contract:

- ``scores_finite_and_separating``: one finite score per image, a logged training loss, ROC AUC >= the
  detector's ``smoke_auc_bar`` (0.7 unless it says otherwise);
- ``batch_independent``: an image's score does not depend on the other images of its batch or their order;
- ``seeded``: the same seed gives the same scores (two short fits on the first ``SHORT_FIT_IMAGES`` training images);
- ``checkpoint_round_trip``: save then load (weights only) into a differently seeded detector, same scores;
- ``no_test_labels_in_fit``: ``fit`` receives no label, no test image, and no anomaly unless semi-supervised;
- ``channels_last_same_numbers``: ``channels_last`` changes the layout, not the scores or maps;
- ``bf16_channels_last_runs``: fit and scoring run under bf16 autocast in ``channels_last`` (a short fit); on the
  CPU, under a guard that refuses what CUDA's autocast refuses (``binary_cross_entropy`` on probabilities), so
  that a detector that would fail under bf16 on a GPU fails here too.

The checks run on a device (``device="cpu"`` by default, ``"cuda"`` for a GPU): the detector is built there and
its fits run under the job's arithmetic flags (:func:`medad.benchmark.numerics.configure_numerics`, fp32 with TF32
off). ``deterministic`` says how the comparing checks (``batch_independent``, ``seeded``,
``checkpoint_round_trip``, ``channels_last_same_numbers``) judge:

- ``True``: deterministic algorithms on (as the run setting ``deterministic: true``); every comparison is exact
  to the tolerances above (rtol 1e-4, atol 1e-5; 1e-5/1e-6 after a checkpoint round trip);
- ``False``: deterministic algorithms off; each comparison is *measured* (the largest difference as a fraction of
  the reference values' spread, their standard deviation) and checked against :data:`NONDETERMINISTIC_TOLERANCES`:
  within it, the measurement is reported (returned by :func:`check_detector`, and issued as a
  :class:`ConformanceMeasurement` warning), above it, the check fails;
- ``None`` (the default): the device's own: exact on the CPU, whose kernels are deterministic, measured elsewhere.

With ``deterministic=True`` on CUDA the kit sets ``CUBLAS_WORKSPACE_CONFIG=:4096:8``; cuBLAS's workspace is fixed at
the process's first matrix product on the GPU, so a script or test session that used CUDA before should set it in
its environment from the start.

Use it from a test::

    from medad.testing import check_detector, parametrize_with_checks

    def test_my_detector():
        check_detector(MyDetector)            # runs every check; raises with a readable report

    @parametrize_with_checks([MyDetector])    # one pytest test per check, like scikit-learn's
    def test_conformance(detector, check):
        check(detector)

    check_detector(MyDetector, device="cuda", deterministic=True)   # on a GPU: every check exact
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

from medad.benchmark.acceleration import autocast
from medad.benchmark.job_runner import fit_detector, score_in_batches
from medad.benchmark.numerics import numerics
from medad.datasets.base import Subset
from medad.detectors.base import Detector, TrainLog, score_map_or_none
from medad.evaluation.metrics import roc_auc
from medad.registry import DETECTORS

SEPARATION_BAR = 0.7
# the checks that need a fit of their own but not a separating one (same seed, same numbers; bf16 runs) fit on the
# first 16 training images: a quarter of the smoke fit's steps, the same code paths
SHORT_FIT_IMAGES = 16
# Without deterministic algorithms (a GPU's atomics in convolution gradients, kernels chosen by batch size), how far
# the compared values may differ, as a fraction of the reference values' spread (standard deviation over the images):
# two same-seed fits drift apart as training amplifies the last bits, so ``seeded`` allows 5 % (images whose scores
# are further apart than that keep their order); the other checks compare one trained model with itself, where only
# summation order moves the values.
NONDETERMINISTIC_TOLERANCES = {"seeded": 0.05, "batch_independent": 1e-3, "checkpoint_round_trip": 1e-3,
                               "channels_last_same_numbers": 1e-3}


class ConformanceError(AssertionError):
    """A detector failed one or more conformance checks; the message lists each failure."""


class ConformanceMeasurement(UserWarning):
    """A comparison the kit measured instead of requiring it exact (no deterministic algorithms): within tolerance."""


def smoke_subset(image_size: int = 32, subset: str = "obvious", **params: Any) -> Subset:
    """A small synthetic subset whose anomalies are large and bright: what smoke fits are judged on."""
    from medad.datasets.synthetic import SyntheticHeadCT

    defaults = dict(n_train=64, n_val=16, n_test=40, n_anomaly_pool=8,
                    lesion_radius=[0.14, 0.18], lesion_contrast=[0.25, 0.3])
    return SyntheticHeadCT(image_size=image_size, **{**defaults, **params}).load(subset)


def resolve(detector: type[Detector] | str) -> type[Detector]:
    """A registered name or dotted ``module:Class`` path, or the class itself."""
    return DETECTORS.get(detector) if isinstance(detector, str) else detector


@dataclass
class DetectorUnderTest:
    """One detector class with its smoke subset and one fitted instance, shared by the checks (fitted once), on
    ``device``; ``deterministic`` as in the module's docstring. ``measurements`` collects the reported comparisons."""

    cls: type[Detector]
    device: torch.device | str = "cpu"
    deterministic: bool | None = None
    measurements: list[str] = field(default_factory=list, repr=False)
    _subsets: dict[int, Subset] = field(default_factory=dict, repr=False)
    _fitted: tuple[Detector, TrainLog] | None = field(default=None, repr=False)
    _short: Subset | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        self.device = torch.device(self.device)

    @property
    def label(self) -> str:
        return self.cls.name or f"{self.cls.__module__}:{self.cls.__qualname__}"

    @property
    def exact(self) -> bool:
        """Whether comparisons must hold exactly (else they are measured against the tolerances)."""
        return self.device.type == "cpu" if self.deterministic is None else self.deterministic

    def run(self, name: str) -> None:
        """Run the check ``name`` under the flags of an fp32 job with this kit's ``deterministic`` setting."""
        with numerics("fp32", bool(self.deterministic)):
            CHECKS[name](self)

    def build(self, seed: int = 0) -> Detector:
        return self.cls(image_size=self.cls.smoke_image_size, channels=1, device=str(self.device), seed=seed,
                        **self.cls.smoke_params)

    def subset(self) -> Subset:
        size = self.cls.smoke_image_size
        if size not in self._subsets:
            self._subsets[size] = smoke_subset(image_size=size)
        return self._subsets[size]

    def short_subset(self) -> Subset:
        """The smoke subset with only its first :data:`SHORT_FIT_IMAGES` training images (for a short fit)."""
        if self._short is None:
            subset = self.subset()
            self._short = replace(subset, train=subset.train.subset(np.arange(min(SHORT_FIT_IMAGES, len(subset.train)))))
        return self._short

    def fitted(self) -> tuple[Detector, TrainLog]:
        if self._fitted is None:
            detector, log = self.build(), TrainLog()
            fit_detector(detector, self.subset(), log)
            self._fitted = detector, log
        return self._fitted


def _close(actual: torch.Tensor, expected: torch.Tensor, what: str, rtol: float = 1e-4, atol: float = 1e-5) -> None:
    try:
        torch.testing.assert_close(actual, expected, rtol=rtol, atol=atol)
    except AssertionError as error:
        raise ConformanceError(f"{what}: {str(error).splitlines()[0]}") from None


def spread_difference(actual: torch.Tensor, expected: torch.Tensor) -> tuple[float, float]:
    """The largest |actual - expected|, and it as a fraction of ``expected``'s standard deviation (0 when both are 0;
    inf for a difference between constant values)."""
    expected = expected.detach().double().cpu()
    difference = float((actual.detach().double().cpu() - expected).abs().max()) if expected.numel() else 0.0
    spread = float(expected.std()) if expected.numel() > 1 else 0.0
    if difference == 0.0:
        return 0.0, 0.0
    return difference, difference / spread if spread > 0 else float("inf")


def _compare(kit: DetectorUnderTest, check: str, actual: torch.Tensor, expected: torch.Tensor, what: str,
             rtol: float = 1e-4, atol: float = 1e-5) -> None:
    """Exact comparison (:func:`_close`) when the kit is exact; otherwise the difference measured and reported, or a
    failure above the check's :data:`NONDETERMINISTIC_TOLERANCES` entry."""
    if kit.exact:
        _close(actual, expected, what, rtol, atol)
        return
    tolerance = NONDETERMINISTIC_TOLERANCES[check]
    difference, fraction = spread_difference(actual, expected)
    line = (f"{what}: largest difference {difference:.3g} = {fraction:.3g} of the values' spread "
            f"(tolerance {tolerance:g} on {kit.device.type} without deterministic algorithms)")
    if not fraction <= tolerance:
        raise ConformanceError(f"{line}: above the tolerance")
    kit.measurements.append(f"{kit.label} {check}: {line}")
    warnings.warn(kit.measurements[-1], ConformanceMeasurement, stacklevel=2)


def scores_finite_and_separating(kit: DetectorUnderTest) -> None:
    """One finite score per test image, a logged loss, and obvious anomalies scored higher (ROC AUC >= the
    detector's ``smoke_auc_bar``, 0.7 by default)."""
    detector, log = kit.fitted()
    test = kit.subset().test
    scores = score_in_batches(detector, test, 16, kit.label)
    if not np.isfinite(scores).all():
        raise ConformanceError(f"{int((~np.isfinite(scores)).sum())} of {len(scores)} scores are not finite")
    if not log.rows:
        raise ConformanceError("fit logged no training loss (call log.log(epoch, step, loss=...))")
    auc = roc_auc(test.labels, scores)
    bar = getattr(kit.cls, "smoke_auc_bar", SEPARATION_BAR)
    if auc < bar:
        raise ConformanceError(f"ROC AUC {auc:.3f} on very obvious anomalies, expected >= {bar}")


def batch_independent(kit: DetectorUnderTest) -> None:
    """An image's score is the same whatever else is in its batch, in any order."""
    detector, _ = kit.fitted()
    images = kit.subset().test.float_images()
    together = detector.score(images).double()
    order = torch.randperm(len(images), generator=torch.Generator().manual_seed(1))
    shuffled = torch.cat([detector.score(images[order[i:i + 5]]).double() for i in range(0, len(images), 5)])
    _compare(kit, "batch_independent", shuffled, together[order],
             "scores in shuffled batches of 5 differ from scores of the whole set")


def seeded(kit: DetectorUnderTest) -> None:
    """Two fits with the same seed give the same scores (short fits: determinism needs no separating fit)."""
    first = kit.build()  # built then fitted, each in turn, as a job does
    fit_detector(first, kit.short_subset(), TrainLog())
    again = kit.build()
    fit_detector(again, kit.short_subset(), TrainLog())
    images = kit.subset().test.float_images()
    _compare(kit, "seeded", again.score(images), first.score(images), "a second fit with the same seed scores differently")


def checkpoint_round_trip(kit: DetectorUnderTest) -> None:
    """``save`` then ``load`` (weights only) into a detector built with another seed gives the same scores."""
    import tempfile
    from pathlib import Path

    detector, _ = kit.fitted()
    with tempfile.TemporaryDirectory() as scratch:
        path = Path(scratch) / "model.pt"
        detector.save(path)
        restored = kit.build(seed=123)  # other initial weights: everything must come from the checkpoint
        restored.load(path)
    images = kit.subset().test.float_images()
    _compare(kit, "checkpoint_round_trip", restored.score(images), detector.score(images), "scores after save/load differ",
             rtol=1e-5, atol=1e-6)


def no_test_labels_in_fit(kit: DetectorUnderTest) -> None:
    """``fit`` gets unlabelled training normals, validation normals and (semi-supervised only) the anomaly pool."""
    detector, subset, seen = kit.build(), kit.subset(), {}

    def spy(train, val=None, log=None, **extra):
        seen.update(train=train, val=val, extra=extra)

    detector.fit = spy
    fit_detector(detector, subset, TrainLog())
    test_ids = set(subset.test.ids)
    if not (seen["train"].labels == -1).all():
        raise ConformanceError("training labels reached fit")
    parts = [seen["train"], *([seen["val"]] if seen["val"] is not None else []), *seen["extra"].values()]
    if any(test_ids & set(part.ids) for part in parts):
        raise ConformanceError("a test image reached fit")
    if kit.cls.supervision != "semi-supervised" and seen["extra"]:
        raise ConformanceError(f"an unsupervised detector was given {sorted(seen['extra'])}")


def channels_last_same_numbers(kit: DetectorUnderTest) -> None:
    """``memory_format: channels_last`` (the CUDA default) changes the tensor layout, not the scores or maps."""
    detector, _ = kit.fitted()
    images = kit.subset().test.float_images()[:8]
    scores, maps = detector.score(images), score_map_or_none(detector, images)
    try:
        detector.use_memory_format(torch.channels_last)
        _compare(kit, "channels_last_same_numbers", detector.score(images), scores, "channels_last scores differ")
        if maps is not None:
            _compare(kit, "channels_last_same_numbers", detector.score_map(images), maps, "channels_last maps differ")
    finally:
        detector.use_memory_format(torch.contiguous_format)


CUDA_AUTOCAST_REFUSAL = (
    "torch.nn.functional.binary_cross_entropy and torch.nn.BCELoss are unsafe to autocast (CUDA's autocast refuses "
    "them; this CPU check refuses them as it does). Combine the sigmoid and the loss: "
    "torch.nn.functional.binary_cross_entropy_with_logits or torch.nn.BCEWithLogitsLoss, safe to autocast.")


class CudaAutocastRefusals(TorchFunctionMode):
    """Inside it, the ops CUDA's autocast refuses (its "banned" list: ``binary_cross_entropy`` on probabilities, as
    ``F.binary_cross_entropy`` and ``nn.BCELoss`` call it) raise while an autocast region is active on the CPU, as
    they do on CUDA: the bf16 check on the CPU then fails where a bf16 run on a GPU would."""

    REFUSED = (F.binary_cross_entropy, torch._C._nn.binary_cross_entropy)

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func in self.REFUSED and torch.is_autocast_enabled("cpu"):
            raise RuntimeError(CUDA_AUTOCAST_REFUSAL)
        return func(*args, **(kwargs or {}))


def bf16_channels_last_runs(kit: DetectorUnderTest) -> None:
    """``precision: bf16`` with ``memory_format: channels_last`` trains and scores on the kit's device, giving finite
    scores; on the CPU under :class:`CudaAutocastRefusals`."""
    detector, subset = kit.build(), kit.short_subset()
    detector.use_memory_format(torch.channels_last)
    refusals = CudaAutocastRefusals() if kit.device.type == "cpu" else contextlib.nullcontext()
    with refusals, autocast(kit.device, "bf16"):
        fit_detector(detector, subset, TrainLog())
        scores = score_in_batches(detector, subset.test, 16, kit.label)
    if not np.isfinite(scores).all():
        raise ConformanceError(f"{int((~np.isfinite(scores)).sum())} scores are not finite under bf16")


CHECKS: dict[str, Callable[[DetectorUnderTest], None]] = {
    check.__name__: check for check in (scores_finite_and_separating, batch_independent, seeded, checkpoint_round_trip,
                                        no_test_labels_in_fit, channels_last_same_numbers, bf16_channels_last_runs)
}


def check_detector(detector: type[Detector] | str, checks: Iterable[str] | None = None, *,
                   device: torch.device | str = "cpu", deterministic: bool | None = None) -> list[str]:
    """Run every conformance check (or those named) on a detector class, on ``device`` (``deterministic``: see the
    module's docstring); raise :class:`ConformanceError` listing each failed check with its reason. Returns the
    measured comparisons (empty when every comparison was exact)."""
    kit = DetectorUnderTest(resolve(detector), device=device, deterministic=deterministic)
    failures = []
    for name in checks or CHECKS:
        try:
            kit.run(name)
        except Exception as error:  # every failure is reported, not only the first
            failures.append(f"  {name}: {type(error).__name__}: {error}")
    if failures:
        raise ConformanceError(f"{kit.label} fails {len(failures)} of {len(list(checks or CHECKS))} conformance "
                               "checks:\n" + "\n".join(failures))
    return kit.measurements


@dataclass(frozen=True)
class KitCheck:
    """One named check, called with a :class:`DetectorUnderTest`: runs it under the kit's device and flags."""

    name: str

    def __call__(self, kit: DetectorUnderTest) -> None:
        kit.run(self.name)


def parametrize_with_checks(detectors: Iterable[type[Detector] | str], *, device: torch.device | str = "cpu",
                            deterministic: bool | None = None):
    """A pytest decorator giving one test per (detector, check): the test receives ``detector`` (a shared
    :class:`DetectorUnderTest` on ``device``, fitted once per class) and ``check`` (call ``check(detector)``). Under
    pytest-xdist's ``--dist loadgroup`` one detector's checks stay on one worker, which fits it once."""
    import pytest

    kits = [DetectorUnderTest(resolve(d), device=device, deterministic=deterministic) for d in detectors]
    cases = [pytest.param(kit, KitCheck(name), id=f"{kit.label}-{name}",
                          marks=pytest.mark.xdist_group(f"conformance-{kit.label}"))
             for kit in kits for name in CHECKS]
    return pytest.mark.parametrize(("detector", "check"), cases)
