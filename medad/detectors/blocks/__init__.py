"""Building blocks shared by several detectors: memory modules, convolution stacks, discriminators."""

from medad.detectors.blocks.conv import DoubleConv, PatchDiscriminator
from medad.detectors.blocks.memory import HashMemory, NearestNeighbourMemory, hamming_distance

__all__ = ["DoubleConv", "HashMemory", "NearestNeighbourMemory", "PatchDiscriminator", "hamming_distance"]
