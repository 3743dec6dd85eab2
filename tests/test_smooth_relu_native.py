"""The smooth ReLU's C++ kernels: the same numbers as the PyTorch ops, bit for bit, and a safe fallback."""

from __future__ import annotations

import shutil

import pytest
import torch
from torch import nn

from aid.interpreters import smooth_relu_native as native
from aid.interpreters.smooth_relu import smooth_relu, smooth_relu_fn
from aid.models import build_classifier

TAU = 1e-4

needs_compiler = pytest.mark.skipif(shutil.which("c++") is None and shutil.which("g++") is None,
                                    reason="no C++ compiler to build the kernels")


def both_paths(monkeypatch, fn):
    """fn() with the kernels (asserting they served) and with the PyTorch ops."""
    monkeypatch.setenv(native.ENV, "1")
    assert native.kernels() is not None
    with_kernels = fn()
    monkeypatch.setenv(native.ENV, "0")
    with_ops = fn()
    monkeypatch.setenv(native.ENV, "1")
    return with_kernels, with_ops


def assert_bitwise_equal(a, b):
    for u, v in zip(a, b, strict=True):
        assert u.dtype == v.dtype and u.shape == v.shape
        assert torch.equal(u.view(torch.int32), v.view(torch.int32)), (u - v).abs().max()


def awkward_values(shape, seed=0) -> torch.Tensor:
    """Activations around 0 at the scale of sqrt(τ), with exact zeros of both signs, tiny and large values."""
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(shape, generator=g) * 0.05
    flat = z.view(-1)
    flat[:8] = torch.tensor([0.0, -0.0, 1e-30, -1e-30, 1e-2, -1e-2, 3e4, -3e4])
    return z


def double_backward(z0: torch.Tensor, layout=torch.contiguous_format, retain: bool = False):
    """(y, first gradient with a graph, second gradient[, the second again]) of a small elementwise graph."""
    z = z0.clone().to(memory_format=layout).requires_grad_(True)
    w = torch.linspace(-1, 2, z.numel()).view_as(z0)
    y = smooth_relu_fn(z, TAU)
    (g,) = torch.autograd.grad((y * w).sum(), z, create_graph=True)
    loss = (g * g).sum() + (y * y).sum()
    (g2,) = torch.autograd.grad(loss, z, retain_graph=retain)
    out = [y.detach(), g.detach(), g2]
    if retain:  # the h cached by the double backward serves once; a later backward recomputes it
        out.append(torch.autograd.grad(loss, z)[0])
    return out


@needs_compiler
def test_kernels_build_and_serve_float32_cpu_tensors_that_need_a_gradient(monkeypatch):
    monkeypatch.setenv(native.ENV, "1")
    assert native.kernels() is not None
    z = torch.randn(3, 4, requires_grad=True)
    assert "CppFunction" in type(smooth_relu_fn(z).grad_fn).__name__
    assert type(smooth_relu_fn(z.double()).grad_fn).__name__ == "SmoothReLUFunctionBackward"
    monkeypatch.setenv(native.ENV, "0")
    assert not native.applies(z)
    assert type(smooth_relu_fn(z).grad_fn).__name__ == "SmoothReLUFunctionBackward"


@needs_compiler
@pytest.mark.parametrize("retain", [False, True])
def test_kernels_give_the_pytorch_ops_numbers_bit_for_bit_in_a_double_backward(monkeypatch, retain):
    z0 = awkward_values((4, 6, 33, 31))  # > one parallel task, not a multiple of any vector width
    assert_bitwise_equal(*both_paths(monkeypatch, lambda: double_backward(z0, retain=retain)))


@needs_compiler
def test_kernels_match_the_pytorch_ops_on_channels_last_and_non_dense_activations(monkeypatch):
    z0 = awkward_values((2, 5, 7, 9), seed=1)
    assert_bitwise_equal(*both_paths(monkeypatch, lambda: double_backward(z0, torch.channels_last)))
    wide = awkward_values((2, 5, 7, 18), seed=2)

    def strided():  # a view with gaps: the kernels fall back to ATen ops inside the C++ functions
        z = wide.clone().requires_grad_(True)
        y = smooth_relu_fn(z[..., ::2], TAU)
        (g,) = torch.autograd.grad(y.sum() * 3, z, create_graph=True)
        return [g.detach(), torch.autograd.grad((g * g).sum(), z)[0]]

    assert_bitwise_equal(*both_paths(monkeypatch, strided))


@needs_compiler
def test_kernels_match_the_pytorch_ops_in_a_first_order_backward_and_with_odd_gradient_layouts(monkeypatch):
    z0 = awkward_values((3, 4, 5, 6), seed=3)

    def first_order():
        z = z0.clone().requires_grad_(True)
        y = smooth_relu_fn(z, TAU)
        # The incoming gradient is a transposed (non-contiguous) tensor.
        grad_out = torch.randn(3, 4, 6, 5, generator=torch.Generator().manual_seed(4)).transpose(2, 3)
        return [torch.autograd.grad(y, z, grad_out)[0]]

    assert_bitwise_equal(*both_paths(monkeypatch, first_order))


@needs_compiler
def test_a_smooth_grad_map_and_its_input_gradient_are_bitwise_the_same_with_the_kernels(monkeypatch):
    torch.manual_seed(0)
    clf = build_classifier("resnet10t", num_classes=4, channels=[8, 8, 16, 16], output_stride=8).eval()
    x0 = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(5))
    t = torch.tensor([0, 1, 3])

    def map_and_gradient():
        x = x0.clone().requires_grad_(True)
        with smooth_relu(clf):
            logits = clf(x)
            (g,) = torch.autograd.grad(logits.gather(1, t[:, None]).sum(), x, create_graph=True)
        (g2,) = torch.autograd.grad(g.abs().amax(1).sum() + logits.logsumexp(1).sum(), x)
        return [g.detach(), g2]

    assert_bitwise_equal(*both_paths(monkeypatch, map_and_gradient))


@needs_compiler
def test_a_third_derivative_through_the_kernels_raises(monkeypatch):
    monkeypatch.setenv(native.ENV, "1")
    z = torch.randn(5, requires_grad=True)
    (g,) = torch.autograd.grad(smooth_relu_fn(z, TAU).sum(), z, create_graph=True)
    with pytest.raises(RuntimeError, match="third derivatives"):
        torch.autograd.grad((g * g).sum(), z, create_graph=True)


def test_a_failed_build_warns_once_and_falls_back_to_the_pytorch_ops(monkeypatch):
    import torch.utils.cpp_extension as cpp

    def no_compiler(*args, **kwargs):
        raise RuntimeError("no C++ compiler")

    monkeypatch.setattr(native, "_state", {})
    monkeypatch.setattr(cpp, "load", no_compiler)
    monkeypatch.setenv(native.ENV, "1")
    z = torch.randn(6, requires_grad=True)
    with pytest.warns(RuntimeWarning, match="could not build"):
        y = smooth_relu_fn(z, TAU)
    assert type(y.grad_fn).__name__ == "SmoothReLUFunctionBackward"
    y2 = smooth_relu_fn(z, TAU)  # no second attempt, no second warning
    assert type(y2.grad_fn).__name__ == "SmoothReLUFunctionBackward"
    assert "no C++ compiler" in native._state["error"]


def test_kernels_are_not_built_for_a_forward_without_gradient(monkeypatch):
    monkeypatch.setattr(native, "_state", {})
    monkeypatch.setenv(native.ENV, "1")
    z = torch.randn(6)
    with torch.no_grad():
        torch.testing.assert_close(smooth_relu_fn(z.requires_grad_(True), TAU), z.relu())
    assert native._state == {}
    swapped = nn.Sequential(nn.ReLU())
    with smooth_relu(swapped):
        swapped(torch.randn(4))
    assert native._state == {}
