"""Near duplicates on a real download: the distribution of dHash distances, and contact sheets of pairs at each distance.

    python benchmarks/near_duplicates.py br35h --data-root DIR [--against brain-tumor-mri] [--out DIR]
                                        [--per-distance 12] [--max-distance 16] [--seed 0]

DRAFT
"""

from __future__ import annotations

import argparse
import csv
import hashlib
from pathlib import Path

import numpy as np


def main() -> None:
    raise SystemExit("draft")


if __name__ == "__main__":
    main()
