"""Defences: feature squeezing (squeezers and detector, §4 Q3)."""

from aid.defenses.detector import FeatureSqueezingDetector
from aid.defenses.squeeze import SQUEEZERS, BitDepth, Median, NonLocalMeans, Squeezer, build_squeezer

__all__ = [
    "SQUEEZERS",
    "BitDepth",
    "FeatureSqueezingDetector",
    "Median",
    "NonLocalMeans",
    "Squeezer",
    "build_squeezer",
]
