"""Differentiability of the maps (what ADV² needs), the smooth ReLU, batching and model hygiene."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from aid.interpreters import build_interpreter
from aid.interpreters.smooth_relu import SmoothReLU, smooth_relu, smooth_relu_fn, smooth_step
from aid.models import NormalizedClassifier, build_classifier

# (name, kwargs) of every interpreter written here; IG with few steps keeps the tests fast.
INTERPRETERS = [
    ("grad", {}),
    ("grad", {"smooth": True}),
    ("grad", {"smooth": True, "surrogate": "softplus"}),
    ("grad", {"smooth": True, "pool": 4}),
    ("cam", {}),
    ("gradcam", {}),
    ("gradcam", {"layer": "backbone.layer3"}),
    ("ig", {"steps": 4, "internal_batch_size": 7}),
    ("ensemble", {"members": ["grad", "cam", "gradcam"]}),
]
IDS = [f"{n}-{'-'.join(f'{k}={v}' for k, v in kw.items())}" for n, kw in INTERPRETERS]


def tiny_densenet() -> NormalizedClassifier:
    torch.manual_seed(0)
    return build_classifier("densenet121", num_classes=3, growth_rate=8, block_config=(2, 2)).eval()


def map_loss_grad(interp, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Input gradient of an L2 loss between the map and a fixed target map (the ADV² term)."""
    x = x.clone().requires_grad_(True)
    maps = interp(x, t, create_graph=True)
    target_map = torch.linspace(0, 1, maps[0].numel()).view_as(maps[0]).expand_as(maps)
    (g,) = torch.autograd.grad((maps - target_map).pow(2).sum(), x)
    return g


@pytest.fixture
def batch():
    g = torch.Generator().manual_seed(2)
    return torch.rand(2, 3, 32, 32, generator=g), torch.tensor([1, 3])


def test_smooth_step_is_the_papers_h():
    z = torch.tensor([-1.0, -1e-3, 0.0, 1e-3, 1.0], dtype=torch.float64)
    tau = 1e-4
    expected = torch.where(z < 0, 1 + z / (z * z + tau).sqrt(), z / (z * z + tau).sqrt())
    torch.testing.assert_close(smooth_step(z, tau), expected)
    # away from 0 it is ReLU's step function
    assert smooth_step(torch.tensor([-1.0]), tau).item() == pytest.approx(0, abs=1e-4)
    assert smooth_step(torch.tensor([1.0]), tau).item() == pytest.approx(1, abs=1e-4)


def test_smooth_relu_keeps_relu_forward_and_has_h_backward_and_h_prime_double_backward():
    tau = 1e-2
    z = torch.tensor([-0.5, -0.05, 0.05, 0.5], dtype=torch.float64, requires_grad=True)
    y = smooth_relu_fn(z, tau)
    torch.testing.assert_close(y, z.relu())
    (g,) = torch.autograd.grad(y.sum(), z, create_graph=True)
    torch.testing.assert_close(g, smooth_step(z, tau))
    (gg,) = torch.autograd.grad(g.sum(), z)
    torch.testing.assert_close(gg, tau / (z.detach() ** 2 + tau) ** 1.5)


def test_smooth_relu_backward_has_the_exact_derivatives_of_grad_times_h():
    # The hand-written derivatives of the backward grad_out · h(z) (what ADV²'s double backward uses)
    # against finite differences, in both arguments. (The first derivative of the smooth ReLU itself is
    # h by design, not ReLU's, so gradcheck applies to the backward function, not to the forward.)
    from aid.interpreters.smooth_relu import SmoothReLUBackward

    tau = 1e-2
    z = torch.linspace(-0.4, 0.4, 9, dtype=torch.float64).add(0.013).requires_grad_(True)
    g = torch.linspace(0.5, 1.5, 9, dtype=torch.float64).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda g, z: SmoothReLUBackward.apply(g, z, tau), (g, z))


def _smooth_relu_reference(z: torch.Tensor, tau: float) -> torch.Tensor:
    """ReLU(z) in value, with the gradients of an antiderivative of h (plain autograd, any order)."""
    s = torch.where(z < 0, z, torch.zeros_like(z)) + (z * z + tau).sqrt()
    return z.clamp_min(0).detach() + (s - s.detach())


@pytest.mark.parametrize("retain", [False, True])
def test_double_backward_computes_h_once_per_activation_and_matches_autograd(monkeypatch, retain):
    # The second backward reuses the h(z) of the first (create_graph) one; the gradients are those of
    # plain autograd through an antiderivative of h, also when the graph is kept and used again.
    import importlib

    srelu = importlib.import_module("aid.interpreters.smooth_relu")
    calls = []
    real = srelu._step_eager
    monkeypatch.setattr(srelu, "_step_eager", lambda z, tau: calls.append(z.shape) or real(z, tau))
    tau = 1e-2
    torch.manual_seed(0)
    w1, w2 = torch.randn(6, 5, dtype=torch.float64), torch.randn(3, 6, dtype=torch.float64)
    x0 = torch.randn(4, 5, dtype=torch.float64)

    def input_grad(act):
        x = x0.clone().requires_grad_(True)
        logits = act(x @ w1.T) @ w2.T
        (g,) = torch.autograd.grad(logits[:, 0].sum(), x, create_graph=True)
        loss = logits.logsumexp(1).sum() + (g * g).sum()
        (g2,) = torch.autograd.grad(loss, x, retain_graph=retain)
        again = torch.autograd.grad(loss, x)[0] if retain else g2
        return g, g2, again

    ours = input_grad(lambda z: smooth_relu_fn(z, tau))
    assert len(calls) == (2 if retain else 1)  # a third backward recomputes h: the cache serves once
    expected = input_grad(lambda z: _smooth_relu_reference(z, tau))
    for a, b in zip(ours, expected, strict=True):
        torch.testing.assert_close(a, b)


def test_first_order_backward_is_grad_times_h():
    tau = 1e-2
    z = torch.linspace(-0.3, 0.3, 11, dtype=torch.float64).requires_grad_(True)
    g = torch.linspace(1, 2, 11, dtype=torch.float64)
    (dz,) = torch.autograd.grad(smooth_relu_fn(z, tau), z, g)
    torch.testing.assert_close(dz, g * smooth_step(z.detach(), tau))


def test_smooth_grad_map_has_a_finite_nonzero_input_gradient_and_plain_relu_has_none(tiny_classifier, batch):
    x, t = batch
    plain = map_loss_grad(build_interpreter("grad", tiny_classifier), x, t)
    smooth = map_loss_grad(build_interpreter("grad", tiny_classifier, smooth=True), x, t)
    # A ReLU network's input gradient is piecewise constant: the map's own gradient vanishes (§3.2).
    assert plain.abs().max() < 1e-8
    assert torch.isfinite(smooth).all() and smooth.abs().max() > 1e-3


def test_softplus_surrogate_also_gives_a_nonzero_map_gradient(tiny_classifier, batch):
    x, t = batch
    g = map_loss_grad(build_interpreter("grad", tiny_classifier, smooth=True, surrogate="softplus"), x, t)
    assert torch.isfinite(g).all() and g.abs().max() > 1e-3


def test_smooth_grad_map_is_close_to_the_plain_map(tiny_classifier, batch):
    # h(z) differs from the step only within ~sqrt(τ) of 0, so the maps nearly agree.
    x, t = batch
    plain = build_interpreter("grad", tiny_classifier)(x, t)
    smooth = build_interpreter("grad", tiny_classifier, smooth=True)(x, t)
    assert (plain - smooth).abs().mean() < 0.02


@pytest.mark.parametrize("side", [32, 30])
def test_pooled_grad_map_is_the_cell_average_of_the_channel_max_gradient(tiny_classifier, side):
    # The authors' GRAD: |∂f_t/∂x| (max over channels) averaged over pool×pool cells, min-max
    # normalised, each cell repeated over its pixels; a side the pool does not divide ends in a
    # smaller cell that averages only its own pixels.
    torch.manual_seed(1)
    x, t = torch.rand(3, 3, side, side), torch.tensor([0, 1, 2])
    maps = build_interpreter("grad", tiny_classifier, pool=4)(x, t)
    assert maps.shape == (3, 1, side, side)
    xi = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(tiny_classifier(xi).gather(1, t[:, None]).sum(), xi)
    m = g.abs().amax(dim=1, keepdim=True)
    for b in range(3):
        cells = torch.stack([
            torch.stack([m[b, 0, i : i + 4, j : j + 4].mean() for j in range(0, side, 4)])
            for i in range(0, side, 4)
        ])
        cells = (cells - cells.min()) / (cells.max() - cells.min())
        expected = cells.repeat_interleave(4, 0).repeat_interleave(4, 1)[:side, :side]
        torch.testing.assert_close(maps[b, 0], expected, atol=1e-5, rtol=1e-4)


def test_grad_pool_must_be_a_positive_integer(tiny_classifier):
    for bad in (0, 2.5, -1):
        with pytest.raises(ValueError, match="pool"):
            build_interpreter("grad", tiny_classifier, pool=bad)


def test_smooth_grad_works_on_a_timm_densenet():
    model = tiny_densenet()
    x, t = torch.rand(2, 3, 32, 32), torch.tensor([0, 2])
    plain = map_loss_grad(build_interpreter("grad", model), x, t)
    smooth = map_loss_grad(build_interpreter("grad", model, smooth=True), x, t)
    assert plain.abs().max() < 1e-8
    assert torch.isfinite(smooth).all() and smooth.abs().max() > 1e-3


class FunctionalReLUNet(nn.Module):
    """A small net calling F.relu, torch.relu and F.relu_ instead of nn.ReLU modules."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.c = nn.Linear(6, 8), nn.Linear(8, 8), nn.Linear(8, 2)

    def forward(self, x):
        h = F.relu(self.a(x))
        h = torch.relu(self.b(h))
        return self.c(F.relu_(h * 1.0))


def test_smooth_relu_reaches_functional_relu_calls():
    torch.manual_seed(0)
    net = FunctionalReLUNet()
    x = torch.randn(4, 6, requires_grad=True)

    def second_order(ctx):
        with ctx:
            (g,) = torch.autograd.grad(net(x)[:, 0].sum(), x, create_graph=True)
        return torch.autograd.grad(g.pow(2).sum(), x)[0]

    assert second_order(torch.enable_grad()).abs().max() < 1e-8
    assert second_order(smooth_relu(net)).abs().max() > 1e-4


def test_fused_smooth_relu_falls_back_to_the_eager_passes_with_one_warning_when_it_cannot_compile(
    tiny_classifier, batch, monkeypatch
):
    import importlib

    module = importlib.import_module("aid.interpreters.smooth_relu")

    def broken_compile(fn, **kwargs):
        def run(*args):
            raise RuntimeError("no compiler here")
        return run

    monkeypatch.setattr(module, "_KERNELS", {})
    monkeypatch.setattr(module, "_FUSION_FAILED", [])
    monkeypatch.setattr(module.torch, "compile", broken_compile)
    x, t = batch
    eager = map_loss_grad(build_interpreter("grad", tiny_classifier, smooth=True), x, t)
    with pytest.warns(RuntimeWarning, match="could not compile"):
        fused = map_loss_grad(build_interpreter("grad", tiny_classifier, smooth=True, fused=True), x, t)
    torch.testing.assert_close(fused, eager, rtol=0, atol=0)
    assert len(module._FUSION_FAILED) == 1  # one failure, then eager without retrying


@pytest.mark.slow
def test_fused_smooth_relu_gives_the_eager_map_and_map_gradient_up_to_rounding(tiny_classifier, batch):
    # Compiles the kernels (tens of seconds on a small CPU the first time; torch caches them on disk).
    x, t = batch
    eager = build_interpreter("grad", tiny_classifier, smooth=True, pool=4)
    fused = build_interpreter("grad", tiny_classifier, smooth=True, pool=4, fused=True)
    torch.testing.assert_close(fused(x, t), eager(x, t), rtol=1e-5, atol=1e-6)
    g_eager, g_fused = map_loss_grad(eager, x, t), map_loss_grad(fused, x, t)
    assert g_eager.abs().max() > 1e-3
    torch.testing.assert_close(g_fused, g_eager, rtol=1e-3, atol=1e-5 * g_eager.abs().max().item())


@pytest.mark.parametrize("model_fn", [None, tiny_densenet], ids=["resnet", "densenet"])
def test_smooth_relu_context_restores_modules_and_functions_even_on_error(tiny_classifier, model_fn):
    model = tiny_classifier if model_fn is None else model_fn()
    before = {name: m for name, m in model.named_modules()}
    relu_modules = [m for m in model.modules() if isinstance(m, nn.ReLU)]
    originals = (F.relu, F.relu_, torch.relu, torch.relu_)
    assert relu_modules
    with pytest.raises(RuntimeError, match="boom"):
        with smooth_relu(model):
            assert not any(isinstance(m, nn.ReLU) for m in model.modules())
            assert any(isinstance(m, SmoothReLU) for m in model.modules())
            assert F.relu is not originals[0] and torch.relu is not originals[2]
            raise RuntimeError("boom")
    assert (F.relu, F.relu_, torch.relu, torch.relu_) == originals
    assert {name: m for name, m in model.named_modules()} == before
    assert not any(isinstance(m, SmoothReLU) for m in model.modules())


@pytest.mark.parametrize(
    "name, kwargs", [("cam", {}), ("gradcam", {}), ("gradcam", {"layer": "backbone.layer3"})]
)
def test_cam_family_maps_have_nonzero_input_gradients(tiny_classifier, batch, name, kwargs):
    x, t = batch
    g = map_loss_grad(build_interpreter(name, tiny_classifier, **kwargs), x, t)
    assert torch.isfinite(g).all() and g.abs().max() > 1e-4


def test_ig_map_is_differentiable_with_respect_to_x(tiny_classifier, batch):
    x, t = batch
    interp = build_interpreter("ig", tiny_classifier, steps=4, score="prob")
    g = map_loss_grad(interp, x, t)
    assert torch.isfinite(g).all() and g.abs().max() > 0


def test_map_is_differentiable_with_respect_to_the_callers_nonleaf_x(tiny_classifier, batch):
    x, t = batch
    delta = torch.zeros_like(x, requires_grad=True)
    maps = build_interpreter("cam", tiny_classifier)((x * 0.9 + delta).clamp(0, 1), t, create_graph=True)
    (g,) = torch.autograd.grad(maps.square().sum(), delta)
    assert g.abs().max() > 0


@pytest.mark.parametrize("name, kwargs", INTERPRETERS, ids=IDS)
def test_batch_of_eight_equals_one_image_at_a_time(tiny_classifier, name, kwargs):
    # float64, so that float32 differences between batched and single convolutions (~1e-5 after
    # min-max normalisation) cannot hide or fake a mix-up between the images of a batch.
    x = torch.rand(8, 3, 32, 32, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    t = torch.arange(8) % 4
    interp = build_interpreter(name, tiny_classifier.double(), **kwargs)
    together = interp(x, t)
    one_by_one = torch.cat([interp(x[i : i + 1], t[i : i + 1]) for i in range(8)])
    assert together.shape == (8, 1, 32, 32)
    assert together.min() >= 0 and together.max() <= 1
    torch.testing.assert_close(together, one_by_one, atol=1e-5, rtol=0)


def _hooks(model):
    return [
        (name, kind)
        for name, m in model.named_modules()
        for kind in ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks")
        if getattr(m, kind)
    ]


@pytest.mark.parametrize("name, kwargs", INTERPRETERS, ids=IDS)
@pytest.mark.parametrize("create_graph", [False, True])
def test_interpreters_leave_the_model_as_they_found_it(tiny_classifier, name, kwargs, create_graph):
    model = tiny_classifier
    x, t = torch.rand(2, 3, 32, 32), torch.tensor([0, 1])
    reference = build_interpreter(name, model, **kwargs)(x, t)  # model in eval mode
    model.train()
    model.backbone.fc.requires_grad_(False)
    modes = {n: m.training for n, m in model.named_modules()}
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    stats = {n: b.clone() for n, b in model.named_buffers()}
    relus = (F.relu, F.relu_, torch.relu, torch.relu_)
    maps = build_interpreter(name, model, **kwargs)(x.clone().requires_grad_(create_graph), t, create_graph)
    # BatchNorm ran with its running statistics (eval mode), which did not move.
    torch.testing.assert_close(maps.detach(), reference, atol=1e-5, rtol=0)
    assert {n: m.training for n, m in model.named_modules()} == modes
    assert {n: p.requires_grad for n, p in model.named_parameters()} == flags
    assert all(torch.equal(b, stats[n]) for n, b in model.named_buffers())
    assert all(p.grad is None for p in model.parameters())
    assert _hooks(model) == []
    assert (F.relu, F.relu_, torch.relu, torch.relu_) == relus  # the smooth-ReLU patch did not leak
    assert not any(isinstance(m, SmoothReLU) for m in model.modules())


@pytest.mark.parametrize("guard", [torch.no_grad, torch.inference_mode], ids=["no_grad", "inference_mode"])
@pytest.mark.parametrize("name", ["grad", "gradcam", "ig"])
def test_gradient_interpreters_work_under_no_grad_and_inference_mode(tiny_classifier, batch, guard, name):
    x, t = batch
    interp = build_interpreter(name, tiny_classifier, **({"steps": 4} if name == "ig" else {}))
    expected = interp(x, t)
    with guard():
        maps = interp(x.clone(), t)
    torch.testing.assert_close(maps, expected, atol=1e-6, rtol=0)


def test_maps_without_create_graph_are_detached_and_leave_x_grad_alone(tiny_classifier, batch):
    x, t = batch
    x = x.clone().requires_grad_(True)
    maps = build_interpreter("grad", tiny_classifier, smooth=True)(x, t)
    assert not maps.requires_grad and x.grad is None


@pytest.mark.parametrize("name, kwargs", INTERPRETERS, ids=IDS)
def test_interpreters_run_under_bf16_autocast(tiny_classifier, batch, name, kwargs):
    x, t = batch
    interp = build_interpreter(name, tiny_classifier, **kwargs)
    reference = interp(x, t)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        g = map_loss_grad(interp, x, t)
        maps = interp(x, t)
    assert maps.dtype == torch.float32 and torch.isfinite(g).all()
    assert (maps - reference).abs().mean() < 0.05
