"""The two faithfulness levels of the study's detectors.

``clean`` (default): the harness's protocol: networks in eval mode at test time, the final epoch's
weights, no test-set statistics anywhere. ``reference``: reproduces what the reference code does where
it moves the numbers (GANomaly: train-mode BatchNorm at test time and best-epoch-on-test selection;
f-AnoGAN: the random horizontal flip of test images). The protocol is written into every CSV row
through ``Detector.extra_tags``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from torch import nn

from medad.detectors.study_inputs import check_choice

PROTOCOLS = ("clean", "reference")


def check_protocol(value: str) -> str:
    """Return ``value`` or raise a ValueError listing the protocols."""
    return check_choice("protocol", value, PROTOCOLS)


@contextlib.contextmanager
def batch_statistics(module: nn.Module) -> Iterator[nn.Module]:
    """Run ``module`` with its BatchNorm layers normalising by the current batch's statistics.

    Reproduces reference code that scores test batches without calling ``eval()`` (GANomaly's
    ``test()``), while leaving the running statistics and every other layer (dropout) as they were.
    """
    norms = [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [(m.training, m.momentum) for m in norms]
    try:
        for m in norms:
            m.train()
            m.momentum = 0.0  # running = (1 - 0) * running + 0 * batch: left untouched
        yield module
    finally:
        for m, (training, momentum) in zip(norms, saved):
            m.train(training)
            m.momentum = momentum
