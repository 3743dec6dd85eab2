"""Interpreters ``g(x, target) -> (B, 1, H, W)`` maps: GRAD, CAM / Grad-CAM, IG, MASK, RTS, ensemble.

Importing this package imports every interpreter module, so the ``INTERPRETERS`` registry is full.
"""

from aid.interpreters import mask, rts  # noqa: F401  (registers "mask" and "rts")
from aid.interpreters.base import INTERPRETERS, Interpreter, build_interpreter, minmax_normalize
from aid.interpreters.cam import CAM, GradCAM
from aid.interpreters.ensemble import Ensemble
from aid.interpreters.grad import Grad
from aid.interpreters.integrated_gradients import IntegratedGradients
from aid.interpreters.smooth_relu import SmoothReLU, smooth_relu

__all__ = [
    "CAM",
    "INTERPRETERS",
    "Ensemble",
    "Grad",
    "GradCAM",
    "IntegratedGradients",
    "Interpreter",
    "SmoothReLU",
    "build_interpreter",
    "minmax_normalize",
    "smooth_relu",
]
