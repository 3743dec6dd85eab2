"""A ReLU whose backward pass is smooth, so that gradient maps have non-zero input gradients (§3.2).

GRAD's map is ``|∂f_c(x)/∂x|``. For a ReLU network that gradient is piecewise constant in x: the
backward pass multiplies by ReLU's derivative r(z) (a step function), whose own derivative is zero,
so the gradient of any loss on the map (a second derivative of f) vanishes. The paper keeps the ReLU
forward pass and replaces r(z) in the backward pass by (τ small, 1e-4 in the paper and the authors'
code)::

    h(z) = 1 + z / sqrt(z² + τ)   for z < 0     (the derivative of z + sqrt(z² + τ))
    h(z) =     z / sqrt(z² + τ)   for z >= 0    (the derivative of sqrt(z² + τ))

h is the derivative of a smooth approximation of ReLU (two branches that meet at sqrt(τ) in z = 0);
it equals r(z) up to O(τ / z²) away from 0 and its own derivative τ / (z² + τ)^{3/2} is non-zero
everywhere, which is what the attack needs. (As in the paper, h jumps from 1 to 0 at z = 0, within a
band of width ~sqrt(τ) = 0.01.)

On a CPU, float32 activations go through C++ autograd functions (:mod:`aid.interpreters.smooth_relu_native`,
compiled on first use; PyTorch ops where that cannot be built): the same numbers, bit for bit, in one pass
per backward and with less memory held between the two backward passes of a double backward.

With ``fused=True`` the elementwise work of h(z) (and of its double backward) runs as one
``torch.compile``d kernel per pass instead of several eager passes over the activations: the same
numbers up to rounding, on any device (a GPU at large activations, where the eager passes cost), at the
price of a compilation on first use (tens of seconds on a small CPU, then cached on disk by torch) and
a call overhead per activation. It takes precedence over the C++ functions. Where compilation fails (no
C++ compiler, no Triton) it warns once and runs the eager passes.

The alternative of Dombrowski et al. (2019) replaces ReLU by softplus with a large β in the forward
*and* backward pass (``surrogate="softplus"``); the forward pass then differs slightly from ReLU.

:func:`smooth_relu` swaps both kinds of ReLU a model can use for the duration of a ``with`` block:
``nn.ReLU`` modules (timm's ResNet and DenseNet use ``nn.ReLU(inplace=True)`` modules, DenseNet inside
its ``BatchNormAct2d`` layers) and the functional ``F.relu`` / ``F.relu_`` / ``torch.relu`` /
``torch.relu_``. The functional patch is process-wide while the block runs (other threads see it too)
and cannot reach code that bound ``relu`` by name at import time (``from torch.nn.functional import
relu``); the in-place variants return a new tensor instead of writing into their argument.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from aid.interpreters import smooth_relu_native as native

SURROGATES = ("h", "softplus")


def smooth_step(z: Tensor, tau: float = 1e-4) -> Tensor:
    """The paper's h(z), elementwise: a smooth stand-in for ReLU's derivative (same shape as z)."""
    s = z * torch.rsqrt(z * z + tau)
    return torch.where(z < 0, 1 + s, s)


def _forward_parts(grad_out: Tensor, z: Tensor, tau: float) -> tuple[Tensor, Tensor, Tensor]:
    """(grad_out · h(z), h(z), grad_out · h'(z)) as one expression, for ``torch.compile`` to fuse into one pass.

    The double backward needs grad_out only through grad_out · h'(z), so that product is what is saved:
    two tensors per activation instead of three (grad_out, h, h').
    """
    r = torch.rsqrt(z * z + tau)
    h = z * r + (z < 0).to(z.dtype)
    return grad_out * h, h, grad_out * (tau * r * r * r)


def _backward_parts(gg: Tensor, h: Tensor, q: Tensor) -> tuple[Tensor, Tensor]:
    """(gg · h, gg · q), q = grad_out · h'(z): both gradients of :class:`SmoothReLUBackward` in one pass."""
    return gg * h, gg * q


_KERNELS: dict[str, Callable] = {}
_FUSION_FAILED: list[str] = []


def _fused(name: str, fn: Callable, *args):
    """``fn(*args)`` through its compiled kernel; None (after one warning) once compilation has failed."""
    if _FUSION_FAILED:
        return None
    if name not in _KERNELS:
        _KERNELS[name] = torch.compile(fn, dynamic=True, fullgraph=True)
    try:
        return _KERNELS[name](*args)
    except Exception as err:  # any compiler or backend failure: the eager passes give the same numbers
        _FUSION_FAILED.append(repr(err))
        warnings.warn(f"smooth ReLU: fused=True could not compile its kernel ({err!r:.200}); using eager "
                      "passes from now on", RuntimeWarning, stacklevel=2)
        return None


def _step_eager(z: Tensor, tau: float) -> tuple[Tensor, Tensor]:
    """(h(z), r) with r = 1/sqrt(z² + τ), in few passes over z (in place where possible).

    Every eager computation of h goes through here, so the same z always gives bit-identical h.
    """
    # On a CPU these elementwise passes, not the convolutions, are what an ADV² step against GRAD adds
    # to the double-backward floor.
    r = torch.mul(z, z).add_(tau).rsqrt_()
    # The step written as floats in one pass (adding the bool mask would convert it in another).
    h = torch.mul(z, r).add_(torch.lt(z, 0, out=torch.empty_like(z)))
    return h, r


class SmoothReLUFunction(torch.autograd.Function):
    """ReLU forward, ``grad · h(z)`` backward. The backward is itself a differentiable function
    (:class:`SmoothReLUBackward`), so double backward (the gradient of a loss on a gradient map) flows
    through h'(z).

    A double backward runs this backward twice: once with ``create_graph`` (building the map) and
    once more without, for the gradient that flows back along the forward graph. The first call
    leaves h(z) on the context and the second multiplies by it instead of recomputing h from z
    (the same numbers: h is a function of the saved z alone)."""

    @staticmethod
    def forward(ctx, z: Tensor, tau: float, fused: bool = False) -> Tensor:
        ctx.save_for_backward(z)
        ctx.tau, ctx.fused, ctx.h = tau, fused, None
        return z.clamp_min(0)  # not F.relu: that name may be patched by smooth_relu()

    @staticmethod
    def backward(ctx, grad_out: Tensor) -> tuple[Tensor, None, None]:
        (z,) = ctx.saved_tensors  # unpacking checks that z was not modified in place since
        if torch.is_grad_enabled():  # create_graph: this backward must itself be differentiable
            return SmoothReLUBackward.apply(grad_out, z, ctx.tau, ctx.fused, ctx), None, None
        h, ctx.h = ctx.h, None  # used once: a later backward (retain_graph) recomputes it
        if h is None:
            parts = _fused("forward", _forward_parts, grad_out, z, ctx.tau) if ctx.fused else None
            if parts is not None:
                return parts[0], None, None
            h = _step_eager(z, ctx.tau)[0]
        return grad_out * h, None, None


class SmoothReLUBackward(torch.autograd.Function):
    """``grad_out · h(z)`` with its own closed-form backward, for the double backward of ADV² on GRAD:
    ∂/∂grad_out = h(z) and ∂/∂z = grad_out · h'(z), h'(z) = τ / (z² + τ)^{3/2}. Written by hand rather
    than traced through the ops of :func:`smooth_step`, whose recorded graph (mul, rsqrt, where, ...) is
    a large share of an ADV² step against GRAD. Third derivatives are not supported.

    ``owner``: the context of the :class:`SmoothReLUFunction` whose backward this is, or None; h(z)
    is left on it for that function's second backward."""

    @staticmethod
    def forward(ctx, grad_out: Tensor, z: Tensor, tau: float, fused: bool = False, owner=None) -> Tensor:
        parts = _fused("forward", _forward_parts, grad_out, z, tau) if fused else None
        ctx.fused = parts is not None  # what was saved: (h, grad_out · h') fused, (grad_out, h, h') eager
        if parts is not None:
            out, h, q = parts
            ctx.save_for_backward(h, q if ctx.needs_input_grad[1] else None)
        else:
            h, r = _step_eager(z, tau)
            # h'(z) = τ·r³ is needed only by a double backward, i.e. when z is part of a graph.
            dh = r.pow_(3).mul_(tau) if ctx.needs_input_grad[1] else None
            ctx.save_for_backward(grad_out, h, dh)
            out = grad_out * h
        if owner is not None:
            owner.h = h
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, gg: Tensor) -> tuple[Tensor | None, Tensor | None, None, None, None]:
        if ctx.fused:
            h, q = ctx.saved_tensors
            if ctx.needs_input_grad[0] and ctx.needs_input_grad[1]:
                parts = _fused("backward", _backward_parts, gg, h, q)
                if parts is not None:
                    return *parts, None, None, None
            d_grad_out = gg * h if ctx.needs_input_grad[0] else None
            d_z = gg * q if ctx.needs_input_grad[1] else None
            return d_grad_out, d_z, None, None, None
        grad_out, h, dh = ctx.saved_tensors
        d_grad_out = gg * h if ctx.needs_input_grad[0] else None
        d_z = torch.mul(gg, grad_out).mul_(dh) if ctx.needs_input_grad[1] else None
        return d_grad_out, d_z, None, None, None


def smooth_relu_fn(z: Tensor, tau: float = 1e-4, fused: bool = False) -> Tensor:
    """ReLU(z) with the smooth backward h(z) (any shape); ``fused``: compiled elementwise kernels.

    A float32 CPU z that needs a gradient goes through the C++ functions of
    :mod:`aid.interpreters.smooth_relu_native` (the same numbers, bit for bit; built on first use) unless
    ``fused`` or ``AID_NATIVE_SMOOTH_RELU=0``; anything else through :class:`SmoothReLUFunction`."""
    if not fused and z.requires_grad and torch.is_grad_enabled() and native.applies(z):
        return native.smooth_relu(z, tau)
    return SmoothReLUFunction.apply(z, tau, fused)


class SmoothReLU(nn.Module):
    """Drop-in for ``nn.ReLU`` used by :func:`smooth_relu` (never in place: the input is saved for h).

    Args:
        tau: τ of h(z) (paper: 1e-4).
        surrogate: ``"h"`` (ReLU forward, h backward; the paper) or ``"softplus"`` (softplus with
            ``beta`` forward and backward; Dombrowski et al.).
        beta: β of the softplus surrogate (Dombrowski et al. raise it from 10 to 100).
        fused: run h(z)'s elementwise passes as compiled kernels (``"h"`` only; see the module).
    """

    def __init__(self, tau: float = 1e-4, surrogate: str = "h", beta: float = 10.0, fused: bool = False) -> None:
        super().__init__()
        if surrogate not in SURROGATES:
            raise ValueError(f"surrogate must be one of {SURROGATES}, got {surrogate!r}")
        if not tau > 0:
            raise ValueError(f"tau must be > 0, got {tau}")
        if not beta > 0:
            raise ValueError(f"beta must be > 0, got {beta}")
        self.tau, self.surrogate, self.beta, self.fused = float(tau), surrogate, float(beta), bool(fused)

    def forward(self, z: Tensor) -> Tensor:
        if self.surrogate == "softplus":
            return F.softplus(z, beta=self.beta)
        return smooth_relu_fn(z, self.tau, self.fused)

    def extra_repr(self) -> str:
        return f"surrogate={self.surrogate}, tau={self.tau}, beta={self.beta}, fused={self.fused}"


@contextlib.contextmanager
def smooth_relu(
    model: nn.Module, tau: float = 1e-4, surrogate: str = "h", beta: float = 10.0, fused: bool = False
) -> Iterator[nn.Module]:
    """Within the block, every ReLU of ``model`` (modules and functional calls) uses the surrogate.

    ``nn.ReLU`` children are swapped for :class:`SmoothReLU` and ``F.relu``, ``F.relu_``,
    ``torch.relu``, ``torch.relu_`` are patched; everything is restored on exit, also when the block
    raises. Graphs built inside the block keep the smooth backward after it ends, so a loss on a
    map computed inside can be differentiated outside.

    Example::

        with smooth_relu(classifier):
            g = torch.autograd.grad(classifier(x)[:, c].sum(), x, create_graph=True)[0]
    """
    act = SmoothReLU(tau, surrogate, beta, fused)
    swapped: list[tuple[nn.Module, str, nn.Module]] = []
    patched = [
        (F, "relu", F.relu),
        (F, "relu_", F.relu_),
        (torch, "relu", torch.relu),
        (torch, "relu_", torch.relu_),
    ]

    def functional(z: Tensor, inplace: bool = False) -> Tensor:
        return act(z)

    try:
        for parent in model.modules():
            for name, child in parent._modules.items():
                if isinstance(child, nn.ReLU):
                    swapped.append((parent, name, child))
        for parent, name, _ in swapped:
            parent._modules[name] = act
        for owner, name, _ in patched:
            setattr(owner, name, functional)
        yield model
    finally:
        for owner, name, original in patched:
            setattr(owner, name, original)
        for parent, name, child in swapped:
            parent._modules[name] = child
