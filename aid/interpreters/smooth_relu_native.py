"""The smooth ReLU's CPU kernels (``smooth_relu_native.cpp``): built on first use, cached, optional.

On a CPU a double backward through the smooth ReLU spends its extra time (over ReLU's) in elementwise
passes over the activations, in holding h(z) and h'(z) for every activation between the two backward
passes, and in Python. The C++ autograd functions of ``smooth_relu_native.cpp`` do one pass per
backward, keep only what ReLU's own double backward keeps plus grad_out, and run no Python; they give
the same numbers as the PyTorch ops, bit for bit (each element goes through the same float32 operations).

They are compiled with ``torch.utils.cpp_extension`` (a C++ compiler and ninja) the first time a
float32 CPU tensor goes through :func:`~aid.interpreters.smooth_relu.smooth_relu_fn`, about 30 s, and
cached by torch (``TORCH_EXTENSIONS_DIR``, default ``~/.cache/torch_extensions``); later processes load
the cached library in about a second. Where the build fails (no compiler) a warning says so once and
the PyTorch ops run instead: the same numbers, slower. ``AID_NATIVE_SMOOTH_RELU=0`` turns the kernels
off (also read at every call, so tests can compare both paths).
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import warnings
from pathlib import Path
from types import ModuleType

import torch
from torch import Tensor

SOURCE = Path(__file__).with_name("smooth_relu_native.cpp")
ENV = "AID_NATIVE_SMOOTH_RELU"
NAME = "aid_smooth_relu"
# -ffp-contract=off: a multiply-add fused into one rounding would change the last bit against the
# PyTorch ops; -fno-math-errno lets the compiler vectorise the square roots (they never see a negative).
CFLAGS = ["-O3", "-fopenmp", "-ffp-contract=off", "-fno-math-errno"]

_lock = threading.Lock()
_state: dict[str, object] = {}


def enabled() -> bool:
    """Whether the kernels may be used (``AID_NATIVE_SMOOTH_RELU`` is not ``0``)."""
    return os.environ.get(ENV, "1").strip().lower() not in ("0", "false", "no", "off")


def kernels() -> ModuleType | None:
    """The compiled module (built or loaded on the first call), or None where it cannot be built."""
    if "module" in _state:
        return _state["module"]  # type: ignore[return-value]
    with _lock:
        if "module" not in _state:
            _state["module"] = _build()
    return _state["module"]  # type: ignore[return-value]


def _build() -> ModuleType | None:
    try:
        # Importing cpp_extension logs a warning on machines without CUDA, which these kernels do not use.
        cpp_log = logging.getLogger("torch.utils.cpp_extension")
        level = cpp_log.level
        cpp_log.setLevel(logging.ERROR)
        try:
            from torch.utils.cpp_extension import load
        finally:
            cpp_log.setLevel(level)
        _say_if_first_build()
        # verbose=False: torch prints nothing when the cached library is current.
        return load(name=NAME, sources=[str(SOURCE)], extra_cflags=CFLAGS, extra_ldflags=["-fopenmp"], verbose=False)
    except Exception as err:  # no compiler, no ninja, a read-only cache: the PyTorch ops give the same numbers
        _state["error"] = repr(err)
        warnings.warn(f"smooth ReLU: could not build its CPU kernels ({err!r:.300}); using PyTorch ops (the "
                      f"same numbers, slower). Set {ENV}=0 to skip the attempt.", RuntimeWarning, stacklevel=3)
        return None


def _say_if_first_build() -> None:
    """One line on stderr when no library is cached yet: the build pauses the first ADV² step for ~30 s."""
    try:
        from torch.utils.cpp_extension import _get_build_directory

        build_dir = Path(_get_build_directory(NAME, False))
        if not any(build_dir.glob(f"{NAME}*.so")):
            print(f"smooth ReLU: building its C++ CPU kernels once (about 30 s; cached in {build_dir})",
                  file=sys.stderr, flush=True)
    except Exception:  # a private torch helper: never let the message break the build
        pass


def applies(z: Tensor) -> bool:
    """Whether :func:`smooth_relu` serves z: float32 on a CPU, kernels enabled and built."""
    return z.device.type == "cpu" and z.dtype == torch.float32 and enabled() and kernels() is not None


def smooth_relu(z: Tensor, tau: float) -> Tensor:
    """ReLU(z) with the backward grad · h(z), differentiable twice, through the C++ functions (see
    :func:`applies`). Same shape as z; the same numbers as
    :class:`~aid.interpreters.smooth_relu.SmoothReLUFunction`."""
    return kernels().smooth_relu(z, float(tau))


def status() -> str:
    """``"on"``, ``"off"`` (``AID_NATIVE_SMOOTH_RELU=0``) or ``"unavailable: <error>"``; builds the kernels
    if needed (for benchmark records)."""
    if not enabled():
        return "off"
    return "on" if kernels() is not None else f"unavailable: {_state.get('error', '')}"
