"""Adaptive ADV² against feature squeezing (Algorithm 2): evasion, budget, determinism, dispatch."""

from __future__ import annotations

import pytest
import torch

from aid.attacks.adaptive import (
    ADV2Adaptive,
    ADV2MaskAdaptive,
    ADV2MaskMinMaxAdaptive,
    ADV2MaskUnrolledAdaptive,
    MaskSqueezeTerm,
)
from aid.attacks.adv2 import ADV2
from aid.attacks.base import attack_class, build_attack
from aid.defenses import FeatureSqueezingDetector, build_squeezer
from aid.interpreters.cam import CAM
from aid.interpreters.mask import MaskInterpreter
from tests.conftest import quadrant_images

SIZE = 16
EPS = 0.1
KW = dict(eps=EPS, alpha=EPS / 5, steps=10, warm_steps=10)


@pytest.fixture(scope="module")
def data():
    x, y = quadrant_images(8, seed=1234)
    return x, (y + 1) % 4


@pytest.fixture(scope="module")
def plain(model, data):
    return ADV2(model, CAM(model), **KW)(*data)


@pytest.fixture(scope="module")
def adaptive(model, data):
    return ADV2Adaptive(model, CAM(model), squeezer="median_3x3", **KW)(*data)


def test_adaptive_attack_lowers_the_median_squeezing_score_of_plain_adv2(model, plain, adaptive):
    det = FeatureSqueezingDetector(model, ["median_3x3"])
    ok = plain.success & adaptive.success
    assert ok.sum() >= 4
    assert det.score(adaptive.x_adv)[ok].mean() < 0.6 * det.score(plain.x_adv)[ok].mean()


def test_adaptive_attack_still_reaches_the_target_for_most_samples(adaptive):
    assert adaptive.success.float().mean() > 0.5


def test_stays_in_the_eps_ball_and_the_unit_box(adaptive, data):
    x, _ = data
    assert (adaptive.x_adv - x).abs().max() <= EPS + 1e-6
    assert adaptive.x_adv.min() >= 0 and adaptive.x_adv.max() <= 1


def test_same_seed_gives_the_same_adversarial_examples(model, data, adaptive):
    again = ADV2Adaptive(model, CAM(model), squeezer="median_3x3", **KW)(*data)
    assert torch.equal(again.x_adv, adaptive.x_adv)


def test_batch_of_eight_equals_two_batches_of_four(model, data, adaptive):
    x, t = data
    attack = ADV2Adaptive(model, CAM(model), squeezer="median_3x3", **KW)
    halves = torch.cat([attack(x[:4], t[:4]).x_adv, attack(x[4:], t[4:]).x_adv])
    assert torch.allclose(halves, adaptive.x_adv, atol=1e-4)


def test_models_are_left_as_found(model, data):
    x, t = data
    model.train()
    flags = [p.requires_grad for p in model.parameters()]
    weights = [p.detach().clone() for p in model.parameters()]
    hooks = sum(len(m._forward_hooks) + len(m._backward_hooks) for m in model.modules())
    try:
        ADV2Adaptive(model, CAM(model), squeezer="bit_depth_2", eps=EPS, steps=2, warm_steps=1, plus_steps=2)(
            x[:2], t[:2]
        )
        assert all(m.training for m in model.modules())
        assert flags == [p.requires_grad for p in model.parameters()]
        assert all(torch.equal(a, b) for a, b in zip(weights, model.parameters(), strict=True))
        assert hooks == sum(len(m._forward_hooks) + len(m._backward_hooks) for m in model.modules())
    finally:
        model.eval()


def test_squeezed_space_search_returns_squeezed_images_reachable_from_the_eps_ball(model, data):
    x, t = data
    attack = ADV2Adaptive(model, CAM(model), squeezer="bit_depth_2", plus_steps=5, **KW)
    assert attack.mode == "two_stage"
    squeeze = build_squeezer("bit_depth_2")
    with torch.enable_grad():
        x_plus = attack.squeezed_space_search(x, t)
    assert torch.equal(squeeze(x_plus), x_plus)  # on the 2-bit grid
    # every level is the squeezed value of some pixel value within ε of the original
    levels = torch.round(x_plus * 3)
    lowest, highest = squeeze((x - EPS).clamp(0, 1)) * 3, squeeze((x + EPS).clamp(0, 1)) * 3
    assert ((levels >= lowest.round()) & (levels <= highest.round())).all()
    with torch.no_grad():
        p_plus = model(x_plus).softmax(1).gather(1, t[:, None])
        p_start = model(squeeze(x)).softmax(1).gather(1, t[:, None])
    assert p_plus.mean() > p_start.mean()


def test_two_stage_bit_depth_attack_respects_the_budget(model, data):
    x, t = data
    r = ADV2Adaptive(model, CAM(model), squeezer="bit_depth_3", plus_steps=3, **{**KW, "steps": 3})(x, t)
    assert (r.x_adv - x).abs().max() <= EPS + 1e-6
    assert r.x_adv.min() >= 0 and r.x_adv.max() <= 1


def test_mask_interpreter_dispatches_to_the_algorithm_1_variant(model, data):
    x, t = data
    interp = MaskInterpreter(model, iterations=5)
    attack = ADV2Adaptive(model, interp, squeezer="median_3x3", eps=EPS, steps=2, warm_steps=2, n_reset=1,
                          reset_iterations=5)
    assert isinstance(attack, ADV2MaskAdaptive)
    r = attack(x[:2], t[:2])
    assert r.maps.shape == (2, 1, SIZE, SIZE)
    assert (r.x_adv - x[:2]).abs().max() <= EPS + 1e-6


MASK_ADAPTIVE = {
    "algorithm1": (ADV2MaskAdaptive, dict(n_reset=1, reset_iterations=5)),
    "unrolled": (ADV2MaskUnrolledAdaptive, dict(unroll=2)),
    "minmax": (ADV2MaskMinMaxAdaptive, dict(inner={"iterations": 2, "every": 1}, select_every=1)),
}


@pytest.mark.parametrize("estimate", ["algorithm1", "unrolled", "minmax"])
def test_adaptive_attack_on_mask_adds_the_squeeze_term_with_every_estimate(model, data, estimate, monkeypatch):
    x, t = data
    cls, own = MASK_ADAPTIVE[estimate]
    kw = dict(eps=EPS, steps=2, warm_steps=1, estimate=estimate, **own)
    plain = build_attack("adv2", model, interpreter=MaskInterpreter(model, iterations=5), **kw)(x[:2], t[:2])
    calls = []
    original = MaskSqueezeTerm.squeeze_loss
    monkeypatch.setattr(MaskSqueezeTerm, "squeeze_loss", lambda self, *a: calls.append(1) or original(self, *a))
    attack = ADV2Adaptive(model, MaskInterpreter(model, iterations=5), squeezer="median_3x3", lam_sqz=100.0, **kw)
    assert type(attack) is cls is attack_class("adv2_adaptive", "mask", estimate)
    r = attack(x[:2], t[:2])
    assert len(calls) >= 2  # once per outer step at least
    assert not torch.equal(r.x_adv, plain.x_adv)


def test_registry_and_argument_checks(model):
    assert isinstance(build_attack("adv2_adaptive", model, CAM(model)), ADV2Adaptive)
    with pytest.raises(ValueError, match="two-stage"):
        ADV2Adaptive(model, CAM(model), squeezer="median_3x3", mode="two_stage")
    with pytest.raises(ValueError, match="consistency"):
        ADV2Adaptive(model, CAM(model), consistency="kl")
