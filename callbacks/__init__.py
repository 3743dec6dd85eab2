"""Evaluation callbacks (ADV², noise, transferability, squeezing, image grids) and the report writer."""

from callbacks.adv2 import ADV2Evaluation
from callbacks.evaluation import EvaluationCallback
from callbacks.grids import ImageGrids
from callbacks.localization import LocalizationEvaluation
from callbacks.noise import NoiseSensitivity
from callbacks.report import ReportWriter
from callbacks.squeeze import SqueezeDetection
from callbacks.transfer import Transferability

__all__ = [
    "ADV2Evaluation",
    "EvaluationCallback",
    "ImageGrids",
    "LocalizationEvaluation",
    "NoiseSensitivity",
    "ReportWriter",
    "SqueezeDetection",
    "Transferability",
]
