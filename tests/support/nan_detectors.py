"""Test-only detectors whose scores or maps hold one NaN (``tests.support.nan_detectors:Name``)."""

from __future__ import annotations

import torch

from tests.support.detectors import TemplateDistance


class NaNPixelDetector(TemplateDistance):
    """Squared distance to the template as a map; one pixel of the ``poison_call``-th ``score_map`` call is NaN.

    The job runner asks for the test maps before the validation maps, so call 0 poisons one test map
    and, when the test maps fit one batch, call 1 poisons one validation map.
    """

    def __init__(self, *, poison_call: int = 0, **kwargs) -> None:
        super().__init__(**kwargs)
        self.poison_call = poison_call
        self.map_calls = 0

    def score_map(self, images: torch.Tensor) -> torch.Tensor:
        maps = (images - self.template).pow(2).mean(dim=1)
        if self.map_calls == self.poison_call:
            maps[0, 0, 0] = float("nan")
        self.map_calls += 1
        return maps


class NaNScoreDetector(TemplateDistance):
    """Its first ``score`` call (the first batch of test images) gives one NaN score."""

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.score_calls = 0

    def score(self, images: torch.Tensor) -> torch.Tensor:
        scores = super().score(images)
        if self.score_calls == 0:
            scores[0] = float("nan")
        self.score_calls += 1
        return scores
