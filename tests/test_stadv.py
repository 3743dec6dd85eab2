"""StAdv and ADV² on StAdv (Appendix A1): flow warping, flow loss, box, determinism, independence, effect."""

from __future__ import annotations

import math

import pytest
import torch

from aid.attacks.base import build_attack
from aid.attacks.stadv import ADV2StAdv, StAdv, apply_flow, flow_loss
from aid.attacks.strategies import map_mse
from aid.interpreters.cam import CAM
from aid.interpreters.mask import MaskInterpreter
from tests.conftest import quadrant_images

SIZE = 16


@pytest.fixture(scope="module")
def data(model):
    """Eight toy images and, as targets, each image's second most likely class (reachable by a flow)."""
    x, _ = quadrant_images(8, seed=1234)
    with torch.no_grad():
        return x, model(x).topk(2, dim=1).indices[:, 1]


def attacks(model):
    return {
        "stadv": lambda **kw: StAdv(model, **{"steps": 30, "lr": 0.1, **kw}),
        "adv2_stadv": lambda **kw: ADV2StAdv(model, CAM(model), **{"steps": 12, "warm_steps": 10, "lr": 0.1, **kw}),
    }


@pytest.fixture(scope="module")
def results(model, data):
    return {name: make()(*data) for name, make in attacks(model).items()}


def test_zero_flow_is_the_identity_and_integer_flows_shift():
    x = torch.rand(2, 3, 8, 8)
    assert torch.allclose(apply_flow(x, torch.zeros(2, 2, 8, 8)), x, atol=1e-6)
    flow = torch.zeros(2, 2, 8, 8)
    flow[:, 0] = 1.0  # every output pixel samples its right neighbour
    flow[:, 1] = -1.0  # ... in the row above
    out = apply_flow(x, flow)
    assert torch.allclose(out[:, :, 1:, :-1], x[:, :, :-1, 1:], atol=1e-6)
    assert torch.allclose(out[:, :, 0, :-1], x[:, :, 0, 1:], atol=1e-6)  # border padding repeats row 0


def test_flow_loss_is_per_sample_zero_for_constant_flows_and_counts_each_pair_twice():
    flow = torch.zeros(2, 2, 4, 4)
    flow[0] = 0.7  # a constant (translation) flow is perfectly smooth
    flow[1, 0, :, 2:] = 1.0  # a vertical edge of height 4 and jump 1
    loss = flow_loss(flow, eps=0.0)
    assert loss.shape == (2,)
    assert loss[0] == 0
    assert loss[1].item() == pytest.approx(2 * 4 * 1.0)


def test_flow_loss_gradient_is_finite_at_zero_flow():
    flow = torch.zeros(1, 2, 4, 4, requires_grad=True)
    (g,) = torch.autograd.grad(flow_loss(flow).sum(), flow)
    assert torch.isfinite(g).all()


@pytest.mark.parametrize("name", ["stadv", "adv2_stadv"])
def test_stays_in_the_unit_box_and_is_not_an_linf_attack(name, results, model):
    r = results[name]
    assert r.x_adv.min() >= 0 and r.x_adv.max() <= 1
    assert math.isinf(attacks(model)[name]().eps)


@pytest.mark.parametrize("name", ["stadv", "adv2_stadv"])
def test_same_seed_gives_the_same_adversarial_examples(name, results, model, data):
    again = attacks(model)[name]()(*data)
    assert torch.equal(again.x_adv, results[name].x_adv)


def test_a_different_seed_draws_a_different_flow_start(model, data):
    x, t = data
    a = StAdv(model, steps=1, seed=0)(x, t).x_adv
    b = StAdv(model, steps=1, seed=1)(x, t).x_adv
    assert not torch.equal(a, b)


@pytest.mark.parametrize("name", ["stadv", "adv2_stadv"])
def test_batch_of_eight_equals_two_batches_of_four_without_random_start(name, model, data):
    x, t = data
    make = attacks(model)[name]
    full = make(init_range=0.0)(x, t)
    halves = [make(init_range=0.0)(x[i : i + 4], t[i : i + 4]) for i in (0, 4)]
    assert torch.allclose(torch.cat([h.x_adv for h in halves]), full.x_adv, atol=1e-4)


def test_random_start_of_a_batch_prefix_is_the_start_of_the_smaller_batch(model, data, results):
    x, t = data
    first = attacks(model)["stadv"]()(x[:4], t[:4])
    assert torch.allclose(first.x_adv, results["stadv"].x_adv[:4], atol=1e-4)


@pytest.mark.parametrize("name", ["stadv", "adv2_stadv"])
def test_models_are_left_as_found(name, model, data):
    x, t = data
    model.train()
    flags = [p.requires_grad for p in model.parameters()]
    weights = [p.detach().clone() for p in model.parameters()]
    hooks = sum(len(m._forward_hooks) + len(m._backward_hooks) for m in model.modules())
    try:
        attacks(model)[name](steps=2, **({"warm_steps": 1} if name != "stadv" else {}))(x[:2], t[:2])
        assert all(m.training for m in model.modules())
        assert flags == [p.requires_grad for p in model.parameters()]
        assert all(torch.equal(a, b) for a, b in zip(weights, model.parameters(), strict=True))
        assert hooks == sum(len(m._forward_hooks) + len(m._backward_hooks) for m in model.modules())
    finally:
        model.eval()


@pytest.mark.parametrize("name", ["stadv", "adv2_stadv"])
def test_reaches_the_target_class_for_most_samples(name, results):
    assert results[name].success.float().mean() > 0.5


def test_adv2_stadv_brings_the_cam_closer_to_the_benign_map_than_stadv(model, data, results):
    x, t = data
    cam = CAM(model)
    benign = cam.attribute(x, model(x).argmax(1))
    both = results["stadv"].success & results["adv2_stadv"].success
    assert both.sum() >= 4
    d_stadv = map_mse(cam.attribute(results["stadv"].x_adv, t), benign)[both]
    d_adv2 = map_mse(results["adv2_stadv"].maps, benign)[both]
    assert d_adv2.mean() < d_stadv.mean()


def test_adv2_stadv_against_mask_uses_the_follower_and_returns_mask_maps(model, data):
    x, t = data
    interp = MaskInterpreter(model, iterations=10)
    r = ADV2StAdv(model, interp, steps=3, warm_steps=3, lr=0.1, n_reset=2, reset_iterations=10)(x[:4], t[:4])
    assert r.maps.shape == (4, 1, SIZE, SIZE)
    assert r.x_adv.min() >= 0 and r.x_adv.max() <= 1
    assert torch.allclose(r.maps, interp.attribute(r.x_adv, t[:4]), atol=1e-5)


@pytest.mark.parametrize("name", ["stadv", "adv2_stadv"])
def test_per_sample_seeds_make_a_batch_give_the_examples_of_its_halves(model, data, name):
    x, t = data
    attack = attacks(model)[name](steps=3, **({"warm_steps": 2} if name != "stadv" else {}))
    seeds = torch.arange(100, 108)
    whole = attack(x, t, seeds=seeds)
    halves = [attack(x[i : i + 4], t[i : i + 4], seeds=seeds[i : i + 4]) for i in (0, 4)]
    assert torch.allclose(whole.x_adv, torch.cat([h.x_adv for h in halves]), atol=1e-5)
    swapped = attack(x.flip(0), t.flip(0), seeds=seeds.flip(0))  # each image keeps its seed
    assert torch.allclose(swapped.x_adv.flip(0), whole.x_adv, atol=1e-5)
    other = attack(x, t, seeds=seeds + 1)
    assert not torch.allclose(other.x_adv, whole.x_adv, atol=1e-5)
    with pytest.raises(ValueError, match="seeds"):
        attack(x, t, seeds=seeds[:3])


def test_registry_names_build_the_attacks(model):
    assert isinstance(build_attack("stadv", model), StAdv)
    assert isinstance(build_attack("adv2_stadv", model, CAM(model)), ADV2StAdv)
    with pytest.raises(ValueError, match="loss"):
        StAdv(model, loss="l2")
    with pytest.raises(ValueError, match="select"):
        StAdv(model, select="first")
    with pytest.raises(ValueError, match="lr"):
        StAdv(model, lr=0)
    with pytest.raises(ValueError, match="lam_enc"):
        ADV2StAdv(model, CAM(model), lam_enc=-1)



class _Recorder:
    """Stands in for BestIterate in StAdv.perturb: keeps every offered iterate."""

    def __init__(self) -> None:
        self.offers: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []

    def update(self, x, rank, confidence, step):
        self.offers.append((x.detach().clone(), rank.detach().clone(), confidence.detach().clone()))


def _trajectory(model, x, t, select):
    attack = StAdv(model, steps=30, lr=0.1, select=select)
    recorder = _Recorder()
    attack.perturb(x, t, attack.flow_optimizer(x), best=recorder)
    xs, ranks, conf = (torch.stack(v) for v in zip(*recorder.offers, strict=True))
    return attack(x, t), xs, ranks, conf  # xs (steps + 1, B, C, H, W); ranks, conf (steps + 1, B)


def test_stadv_last_returns_the_final_iterate_and_its_first_success_step(model, data):
    x, t = data
    r, xs, _, conf = _trajectory(model, x, t, "last")
    assert torch.allclose(r.x_adv, xs[-1], atol=1e-6)
    hit = conf.bool().any(dim=0)
    assert hit.sum() >= 4
    first = torch.where(hit, conf.argmax(dim=0), torch.full_like(r.iterations, 30))
    assert torch.equal(r.iterations, first)  # the first step that reached the target, else `steps`


def test_stadv_min_flow_returns_the_least_distorted_successful_iterate(model, data):
    x, t = data
    r, xs, flow_losses, conf = _trajectory(model, x, t, "min_flow")
    masked = torch.where(conf > 0, flow_losses, torch.full_like(flow_losses, float("inf")))
    hit = conf.bool().any(dim=0)
    chosen = torch.where(hit, masked.argmin(dim=0), torch.full_like(r.iterations, 30))  # else: the last
    assert hit.sum() >= 4
    assert torch.equal(r.iterations, chosen)
    assert torch.allclose(r.x_adv, xs[chosen, torch.arange(len(x))], atol=1e-6)
    assert (chosen[hit] < 30).any()  # not simply the last iterate
