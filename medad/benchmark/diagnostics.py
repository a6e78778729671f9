"""The test-set diagnostic of the run setting ``test_curve``: the test ROC AUC after every training epoch.

A detector that ranks anomalies below normals at its final epoch may or may not have been above chance
earlier; the curve answers that at a glance. It is a *test-set diagnostic*: the labelled test set is
scored after each epoch of ``fit`` and the ROC AUC recorded in history.csv under
:data:`TEST_CURVE_LOSS` (``diagnostic_test_roc_auc``), and nothing reads it back: no epoch is chosen by
it, no threshold, no rank. The rows of such a run carry the tag ``diagnostics: test-curve``.

It must not change the fit, so each scoring runs inside :func:`untouched`: the networks in eval mode
(as the final scoring sees them), and afterwards every module's train/eval flag, every buffer
(BatchNorm running statistics, memories), the detector's own ``torch.Generator`` attributes and the
global generators (Python ``random``, NumPy, torch CPU and CUDA) exactly as before. A run with the
diagnostic therefore gives bit-identical final scores to one without it (on a deterministic device).

The hook is :attr:`TrainLog.epoch_end <medad.detectors.base.TrainLog>`, called after each epoch of
``TrainLog.epochs``; detectors that train without it get no curve. A detector whose ``fit`` calls
``epochs`` more than once (f-AnoGAN: the GAN, then the encoder) gets one curve per phase,
``diagnostic_test_roc_auc_phase1``, ``..._phase2``, with epochs numbered on through the phases as in
its own history; before the last phase the scores are those of an unfinished model (f-AnoGAN's
encoder untrained during phase 1).
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Callable, Iterator

import numpy as np
import torch
from torch import nn

from medad.datasets.base import ImageSet
from medad.detectors.base import Detector, TrainLog
from medad.detectors.scoring import scores_in_random_order
from medad.evaluation.statistics import METRIC_FUNCTIONS

TEST_CURVE_LOSS = "diagnostic_test_roc_auc"
TEST_CURVE_TAG = "test-curve"


def diagnostic_tags(test_curve: bool) -> dict[str, str]:
    """The CSV tag of every row of a run with the diagnostic (none without it)."""
    return {"diagnostics": TEST_CURVE_TAG} if test_curve else {}


@contextlib.contextmanager
def untouched(detector: Detector) -> Iterator[None]:
    """Run the block with ``detector``'s networks in eval mode, then restore every module's training flag, every
    buffer, the detector's ``torch.Generator`` attributes and the global random generators (Python, NumPy, torch CPU,
    CUDA once initialised), so that what the block did leaves no trace on a fit in progress."""
    # every module of every network, and of any other module attribute (a frozen backbone left out of a checkpoint)
    networks = [*detector.networks().values(), *(v for v in vars(detector).values() if isinstance(v, nn.Module))]
    modules = list({id(module): module for network in networks for module in network.modules()}.values())
    modes = [(module, module.training) for module in modules]
    buffers = [(buffer, buffer.detach().clone()) for module in modules for buffer in module.buffers(recurse=False)]
    generators = [(g, g.get_state()) for g in vars(detector).values() if isinstance(g, torch.Generator)]
    python_state, numpy_state, torch_state = random.getstate(), np.random.get_state(), torch.get_rng_state()
    cuda_states = torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None
    try:
        detector.eval_mode()
        yield
    finally:
        for module, training in modes:
            module.training = training  # the flag itself: module.train() would also set its children's
        with torch.no_grad():
            for buffer, saved in buffers:
                buffer.copy_(saved)
        for generator, state in generators:
            generator.set_state(state)
        random.setstate(python_state)
        np.random.set_state(numpy_state)
        torch.set_rng_state(torch_state)
        if cuda_states is not None:
            torch.cuda.set_rng_state_all(cuda_states)


class TestCurve:
    """The :attr:`TrainLog.epoch_end` hook that scores ``test`` after each epoch (see the module docstring).

    Scores as the harness scores the final model: batches of ``batch_size`` in the order drawn from ``seed``. A
    failure of the diagnostic is kept in :attr:`error` and ends the curve; the fit goes on.
    """

    __test__ = False  # not a pytest test class, whatever its name

    def __init__(self, detector: Detector, test: ImageSet, log: TrainLog, *, batch_size: int, seed: int,
                 report: Callable[[str], None] | None = None) -> None:
        if getattr(detector, "sees_test_set", False):
            raise ValueError(f"test_curve: detector {detector.name!r} sees the test set in fit (sees_test_set is "
                             "true); the test-set diagnostic is refused beside it")
        self.detector, self.test, self.log = detector, test, log
        self.batch_size, self.seed, self.report = batch_size, seed, report
        self.points: list[tuple[int, int, int, float]] = []   # (phase, epoch over all phases, step, ROC AUC)
        self.phase, self.offset, self.length = -1, 0, 0
        self.error = ""

    def __call__(self, epoch: int, count: int) -> None:
        if epoch == 0:  # a new call of TrainLog.epochs: the next training phase
            self.phase, self.offset, self.length = self.phase + 1, self.offset + self.length, count
        if self.error:
            return
        try:
            with untouched(self.detector):
                scores = scores_in_random_order(self.detector.score, self.test, self.batch_size,
                                                torch.Generator().manual_seed(self.seed))
            auc = float(METRIC_FUNCTIONS["roc_auc"](self.test.labels, scores.double().numpy()))
        except Exception as error:  # a diagnostic never fails the job: recorded, the curve ends here
            self.error = f"epoch {self.offset + epoch + 1}: {type(error).__name__}: {error}"
            self._say(f"test-curve diagnostic stopped: {self.error}")
            return
        step = self.log.rows[-1][1] if self.log.rows else 0
        self.points.append((self.phase, self.offset + epoch, step, auc))
        self._say(f"test-curve diagnostic (test set; never used for selection): epoch {self.offset + epoch + 1}, "
                  f"ROC AUC {auc:.4f}")

    def _say(self, line: str) -> None:
        if self.report is not None:
            self.report(line)

    def history_rows(self) -> list[tuple[int, int, str, float]]:
        """(epoch, step, loss name, value) rows for history.csv: :data:`TEST_CURVE_LOSS`, with ``_phase<k>`` appended
        when the fit had several phases."""
        phased = self.phase > 0
        return [(epoch, step, f"{TEST_CURVE_LOSS}_phase{phase + 1}" if phased else TEST_CURVE_LOSS, auc)
                for phase, epoch, step, auc in self.points]
