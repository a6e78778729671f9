"""Hyper-parameter annotations: the allowed range of a number, read by the config validator.

A detector or dataset declares its hyper-parameters once, as keyword arguments of ``__init__``
with type hints; a bound is part of the hint::

    def __init__(self, *, image_size: int, channels: int, epochs: PositiveInt = 10,
                 lr: PositiveFloat = 1e-3, score: Literal["latent", "map"] = "latent", ...)

``typing.Annotated[int, Range(1)]`` says "an int >= 1"; ``Literal[...]`` lists the choices. The
validator (``medad run``, ``medad describe``, the pre-flight check) rejects a value outside its
range with the key and the range before any job runs, so a job never trains for ``-3`` epochs.
Floats must also be finite (no NaN or infinity) wherever a range is declared.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Annotated


@dataclass(frozen=True)
class Range:
    """A closed or half-open interval of allowed numbers; ``None`` = unbounded on that side."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False

    def describe(self) -> str:
        """The range as a reader writes it: ``>= 1``, ``> 0``, ``in [0, 1)``."""
        if self.low is not None and self.high is not None:
            return (f"in {'(' if self.low_open else '['}{_number(self.low)}, "
                    f"{_number(self.high)}{')' if self.high_open else ']'}")
        if self.low is not None:
            return f"{'>' if self.low_open else '>='} {_number(self.low)}"
        if self.high is not None:
            return f"{'<' if self.high_open else '<='} {_number(self.high)}"
        return "any finite number"

    def contains(self, value: float) -> bool:
        """True when ``value`` is finite and inside the range."""
        if isinstance(value, float) and not math.isfinite(value):
            return False
        if self.low is not None and (value < self.low or (self.low_open and value == self.low)):
            return False
        if self.high is not None and (value > self.high or (self.high_open and value == self.high)):
            return False
        return True


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() and abs(value) < 1e15 else f"{value:g}"


PositiveInt = Annotated[int, Range(1)]
NonNegativeInt = Annotated[int, Range(0)]
PositiveFloat = Annotated[float, Range(0, low_open=True)]
NonNegativeFloat = Annotated[float, Range(0)]
# (0, 1]: a share of pixels or images that must not be empty (top_fraction)
UnitFraction = Annotated[float, Range(0, 1, low_open=True)]
# [0, 1): a share carved from a set that must keep something (val_fraction)
HoldOutFraction = Annotated[float, Range(0, 1, high_open=True)]
# [0, 1]: a probability or mixing weight
Probability = Annotated[float, Range(0, 1)]
# [0, 1): an exponential-moving-average decay or a momentum term
Decay = Annotated[float, Range(0, 1, high_open=True)]
# an Adam beta in [0, 1)
Beta = Decay
