"""Building blocks shared by several detectors: the pretrained feature extractor, memory modules, convolution
stacks, discriminators."""

from medad.detectors.blocks.backbone import Backbone
from medad.detectors.blocks.conv import DoubleConv, PatchDiscriminator
from medad.detectors.blocks.memory import HashMemory, NearestNeighbourMemory, hamming_distance

__all__ = ["Backbone", "DoubleConv", "HashMemory", "NearestNeighbourMemory", "PatchDiscriminator", "hamming_distance"]
