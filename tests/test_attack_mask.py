"""ADV² against MASK (Algorithm 1, the unrolled and the min-max estimate): budget, determinism, per-sample independence,
model state, effect, dispatch by ``estimate`` and each class's own arguments."""

from __future__ import annotations

import pytest
import torch

from aid.attacks.adv2 import ADV2, make_adv2
from aid.attacks.adv2_mask import ADV2Mask, ADV2MaskBase, bisect_step
from aid.attacks.adv2_mask_minmax import ADV2MaskMinMax
from aid.attacks.adv2_mask_unrolled import ADV2MaskUnrolled
from aid.attacks.base import attack_arguments, build_attack
from aid.attacks.mask_follower import MaskFollower
from aid.attacks.pgd import PGD
from aid.attacks.strategies import map_mse
from aid.interpreters.mask import MaskInterpreter
from aid.model_state import frozen_eval
from tests.conftest import quadrant_images

SIZE = 16
EPS = 0.1


@pytest.fixture(scope="module")
def data(model):
    x, y = quadrant_images(8, seed=1234)
    return x, (y + 1) % 4


CLASSES = {"algorithm1": ADV2Mask, "unrolled": ADV2MaskUnrolled, "minmax": ADV2MaskMinMax}
# lam 10 (the unrolled and min-max estimates): this toy classifier is barely confident, λ 100 outweighs its CE.
OWN_ARGS = {
    "algorithm1": dict(n_reset=3, reset_iterations=20, n_bs=5),
    "unrolled": dict(unroll=5, lam=10.0),
    "minmax": dict(lam=10.0, select_every=2, inner={"every": 2, "iterations": 5}),
}
# Fewer resets for Algorithm 1 where a test asks for a short or long attack.
SHORT = {"algorithm1": dict(n_reset=1, reset_iterations=2)}
LONG = {"algorithm1": dict(n_reset=4)}


def make_attack(model, estimate: str = "algorithm1", **kw) -> ADV2MaskBase:
    interp = MaskInterpreter(model, iterations=20)
    args = dict(eps=EPS, alpha=EPS / 5, steps=6, warm_steps=10, **OWN_ARGS[estimate])
    args.update(kw)
    return CLASSES[estimate](model, interp, **args)


@pytest.fixture(scope="module", params=["algorithm1", "unrolled", "minmax"])
def estimate(request):
    return request.param


@pytest.fixture(scope="module")
def result(model, data, estimate):
    return make_attack(model, estimate)(*data)


def test_stays_in_the_eps_ball_and_the_unit_box(result, data):
    x, _ = data
    assert (result.x_adv - x).abs().max() <= EPS + 1e-6
    assert result.x_adv.min() >= 0 and result.x_adv.max() <= 1


def test_result_fields_have_batch_shapes_and_maps_are_mask_maps_of_x_adv(model, result, data):
    x, t = data
    assert result.success.shape == result.confidence.shape == result.iterations.shape == (8,)
    assert result.maps.shape == (8, 1, SIZE, SIZE)
    fresh = MaskInterpreter(model, iterations=20).attribute(result.x_adv, t)
    assert torch.allclose(result.maps, fresh, atol=1e-5)


def test_same_seed_gives_the_same_adversarial_examples(model, result, data, estimate):
    again = make_attack(model, estimate)(*data)
    assert torch.equal(again.x_adv, result.x_adv)
    assert torch.equal(again.iterations, result.iterations)


def test_batch_of_eight_equals_two_batches_of_four(model, result, data, estimate):
    x, t = data
    attack = make_attack(model, estimate)
    first, second = attack(x[:4], t[:4]), attack(x[4:], t[4:])
    joined = torch.cat([first.x_adv, second.x_adv])
    assert torch.allclose(joined, result.x_adv, atol=1e-4)
    assert torch.equal(torch.cat([first.success, second.success]), result.success)


def test_models_are_left_as_found(model, data, estimate):
    x, t = data
    model.train()
    flags = [p.requires_grad for p in model.parameters()]
    weights = [p.detach().clone() for p in model.parameters()]
    buffers = [b.detach().clone() for b in model.buffers()]
    hooks = sum(len(m._forward_hooks) + len(m._backward_hooks) for m in model.modules())
    try:
        make_attack(model, estimate, steps=2, warm_steps=2, **SHORT.get(estimate, {}))(x[:2], t[:2])
        assert model.training and all(m.training for m in model.modules())
        assert flags == [p.requires_grad for p in model.parameters()]
        assert all(torch.equal(a, b) for a, b in zip(weights, model.parameters(), strict=True))
        assert all(torch.equal(a, b) for a, b in zip(buffers, model.buffers(), strict=True))
        assert hooks == sum(len(m._forward_hooks) + len(m._backward_hooks) for m in model.modules())
    finally:
        model.eval()


def test_reaches_the_target_class_for_most_samples(result):
    assert result.success.float().mean() >= 0.75


def test_moves_the_mask_map_towards_the_target_map_more_than_pgd(model, data, estimate):
    x, t = data
    interp = MaskInterpreter(model, iterations=20)
    target_map = interp.attribute(x, model(x).argmax(1))
    pgd = PGD(model, eps=EPS, alpha=EPS / 5, steps=16)(x, t)
    adv2 = make_attack(model, estimate, steps=12, **LONG.get(estimate, {}))(x, t, target_map)
    both = pgd.success & adv2.success
    assert both.sum() >= 4
    d_pgd = map_mse(interp.attribute(pgd.x_adv, t), target_map)[both]
    d_adv2 = map_mse(adv2.maps, target_map)[both]
    assert d_adv2.mean() < d_pgd.mean()


def test_bisection_finds_each_samples_largest_accepted_step():
    x = torch.zeros(3, 1, 2, 2)
    direction = torch.ones_like(x)
    limits = torch.tensor([0.1, 0.55, 2.0])  # the last one lies beyond alpha_max

    def accept(z):
        return z.flatten(1).amax(dim=1) <= limits

    s = bisect_step(accept, x, direction, alpha_max=1.0, n_bs=12)
    assert torch.allclose(s, limits.clamp(max=1.0), atol=1e-3)
    assert (s <= limits).all()


def test_lookahead_loss_is_differentiable_with_respect_to_the_input(model, data):
    x, _ = data
    t = model(x).argmax(1)  # a class the images carry evidence for, so p_t responds to the mask
    interp = MaskInterpreter(model, iterations=5)
    with frozen_eval(model), torch.enable_grad():
        follower = MaskFollower(interp, t, n_step=2)
        follower.reset(x)
        follower.update(x)
        xv = x.clone().requires_grad_(True)
        loss = follower.lookahead(xv, torch.zeros(8, 1, SIZE, SIZE))
        (grad,) = torch.autograd.grad(loss.sum(), xv)
    assert loss.shape == (8,)
    assert torch.isfinite(grad).all() and (grad.flatten(1).abs().sum(1) > 0).all()


def test_adv2_dispatches_to_algorithm_1_for_mask(model):
    interp = MaskInterpreter(model, iterations=5)
    assert isinstance(make_adv2(model, interp, steps=3), ADV2Mask)
    assert isinstance(ADV2(model, interp, steps=3), ADV2Mask)
    assert isinstance(build_attack("adv2_mask", model, interp), ADV2Mask)


@pytest.mark.parametrize("estimate", ["algorithm1", "unrolled", "minmax"])
def test_adv2_dispatches_on_the_estimate_and_each_estimate_has_its_registry_name(model, estimate):
    interp = MaskInterpreter(model, iterations=5)
    cls = CLASSES[estimate]
    assert type(build_attack("adv2", model, interpreter=interp, estimate=estimate)) is cls
    assert type(ADV2(model, interp, estimate=estimate)) is cls
    assert type(make_adv2(model, interp, estimate=estimate)) is cls
    assert type(build_attack(cls.name, model, interp)) is cls
    assert cls.name == {"algorithm1": "adv2_mask"}.get(estimate, f"adv2_mask_{estimate}")


@pytest.mark.parametrize("estimate", ["unrolled", "minmax"])
def test_the_selector_builds_the_same_attack_as_the_class(model, data, estimate):
    x, t = data
    kw = dict(eps=EPS, alpha=EPS / 5, steps=2, warm_steps=1, **OWN_ARGS[estimate])
    by_name = build_attack("adv2", model, interpreter=MaskInterpreter(model, iterations=3), estimate=estimate, **kw)
    direct = CLASSES[estimate](model, MaskInterpreter(model, iterations=3), **kw)
    assert torch.equal(by_name(x[:2], t[:2]).x_adv, direct(x[:2], t[:2]).x_adv)


def test_each_estimate_takes_only_its_own_arguments(model):
    interp = MaskInterpreter(model, iterations=5)
    assert {"n_reset", "alpha_max", "mask_lr"} <= attack_arguments("adv2", "mask")
    assert {"unroll", "lam", "estimate"} <= attack_arguments("adv2", "mask", "unrolled")
    assert not {"n_reset", "select_every", "lam_enc", "strategy_kwargs"} & attack_arguments("adv2", "mask", "unrolled")
    assert not {"unroll", "n_reset", "lam_enc"} & attack_arguments("adv2", "mask", "minmax")
    assert "estimate" not in attack_arguments("adv2_mask_minmax", "mask")  # a class name selects nothing
    with pytest.raises(TypeError, match="n_reset"):
        ADV2MaskMinMax(model, interp, n_reset=2)
    with pytest.raises(ValueError, match=r"n_reset: attack 'adv2' \(ADV2MaskUnrolled\) has no argument"):
        build_attack("adv2", model, interpreter=interp, estimate="unrolled", n_reset=2)
    with pytest.raises(ValueError, match=r"has no argument 'estimate'"):
        build_attack("adv2_mask", model, interp, estimate="minmax")


def test_an_unknown_estimate_or_one_for_another_family_is_refused(model):
    from aid.interpreters.cam import CAM

    with pytest.raises(ValueError, match=r"estimate must be one of algorithm1, minmax, unrolled .*'exact'"):
        build_attack("adv2", model, interpreter=MaskInterpreter(model, iterations=5), estimate="exact")
    with pytest.raises(ValueError, match=r"attack 'adv2' \(ADV2\) has no argument 'estimate'"):
        build_attack("adv2", model, interpreter=CAM(model), estimate="minmax")


def test_rejects_an_interpreter_without_mask_pieces(model):
    from aid.interpreters.cam import CAM

    for cls in CLASSES.values():
        with pytest.raises(TypeError, match="MASK"):
            cls(model, CAM(model))


def test_rejects_out_of_range_arguments_naming_them(model):
    interp = MaskInterpreter(model, iterations=5)
    for key in ("n_step", "n_reset", "reset_iterations", "n_bs"):
        with pytest.raises(ValueError, match=key):
            ADV2Mask(model, interp, **{key: 0})
    with pytest.raises(ValueError, match="warm_steps"):
        ADV2Mask(model, interp, warm_steps=-1)
    with pytest.raises(ValueError, match="unroll"):
        ADV2MaskUnrolled(model, interp, unroll=0)
    with pytest.raises(ValueError, match="lam"):
        ADV2MaskUnrolled(model, interp, lam=-1.0)
    ADV2MaskUnrolled(model, interp, lam=(5.0, 10.0))  # a ramp, as ADV2 accepts
    with pytest.raises(ValueError, match="select_every"):
        ADV2MaskMinMax(model, interp, select_every=0)
    for key in ("every", "iterations", "pool"):
        with pytest.raises(ValueError, match=f"inner {key}"):
            ADV2MaskMinMax(model, interp, inner={key: 0})
    with pytest.raises(ValueError, match="unknown inner player settings"):
        ADV2MaskMinMax(model, interp, inner={"iters": 3})
    with pytest.raises(ValueError, match="survive_weight"):
        ADV2MaskMinMax(model, interp, survive_weight=-1.0)
