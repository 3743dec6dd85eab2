"""PGD and ADV² on the PGD framework: constraints, determinism, batch independence, model hygiene,
end-to-end effect per interpreter family, input validation, and the pieces (strategies, schedules)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from aid.attacks import ADV2, PGD, build_attack, make_adv2
from aid.attacks.schedules import BestIterate, linear_schedule, smoothed_cross_entropy
from aid.attacks.strategies import (
    CAMInterpretationLoss,
    GradInterpretationLoss,
    InterpretationLoss,
    RTSInterpretationLoss,
    build_interpretation_loss,
)
from aid.attacks.targets import benign_target_maps
from aid.interpreters import build_interpreter
from aid.interpreters.base import Interpreter
from aid.metrics import map_l1
from aid.models import build_classifier

EPS = 0.05  # a little above the paper's 0.031: the tiny model below is trained for seconds only
ALPHA = 2 / 255


def quadrant_data(n: int, seed: int) -> tuple[Tensor, Tensor]:
    """4 classes: a bright 9×9 square in one quadrant of a noisy grey 32 px image."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 4, (n,), generator=g)
    x = 0.35 + 0.15 * torch.rand(n, 3, 32, 32, generator=g)
    cy = 8 + 16 * (y // 2) + torch.randint(-3, 4, (n,), generator=g)
    cx = 8 + 16 * (y % 2) + torch.randint(-3, 4, (n,), generator=g)
    ys, xs = torch.arange(32).view(1, 32, 1), torch.arange(32).view(1, 1, 32)
    blob = ((ys - cy.view(-1, 1, 1)).abs() <= 4) & ((xs - cx.view(-1, 1, 1)).abs() <= 4)
    color = 0.5 + 0.5 * torch.rand(n, 3, 1, 1, generator=g)
    return torch.where(blob[:, None], color.expand_as(x), x).clamp(0, 1), y


@pytest.fixture(scope="module")
def trained():
    """The tiny resnet10t (4 classes, 32 px) trained for 30 Adam steps on the quadrant data (~97 % acc)."""
    torch.manual_seed(0)
    model = build_classifier("resnet10t", num_classes=4, output_stride=8, channels=[8, 16, 32, 64])
    opt = torch.optim.Adam(model.parameters(), 3e-3)
    g_seed = 100
    model.train()
    for i in range(30):
        x, y = quadrant_data(32, g_seed + i)
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    opt.zero_grad(set_to_none=True)
    return model.eval()


@pytest.fixture(scope="module")
def batch():
    """8 test images, their labels and target classes (label + 1 mod 4)."""
    x, y = quadrant_data(8, 1)
    return x, y, (y + 1) % 4


def rts_interpreter(classifier) -> Interpreter:
    """The RTS interpreter with a random decoder (seeded) and the classifier's backbone as encoder."""
    torch.manual_seed(0)
    return build_interpreter("rts", classifier)


def model_state(model: nn.Module) -> dict:
    """Everything an attack must leave alone: weights and buffers, modes, flags, hooks, module types."""
    return {
        "tensors": {k: v.clone() for k, v in model.state_dict().items()},
        "training": [m.training for m in model.modules()],
        "requires_grad": [p.requires_grad for p in model.parameters()],
        "hooks": [len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks) for m in model.modules()],
        "types": [type(m) for m in model.modules()],
        "grads": [p.grad for p in model.parameters()],
    }


def assert_same_state(before: dict, after: dict) -> None:
    assert before["training"] == after["training"]
    assert before["requires_grad"] == after["requires_grad"]
    assert before["hooks"] == after["hooks"]
    assert before["types"] == after["types"]
    assert all(g is None for g in after["grads"])
    for k, v in before["tensors"].items():
        assert torch.equal(v, after["tensors"][k]), k


def assert_in_budget(x_adv: Tensor, x: Tensor, eps: float) -> None:
    assert x_adv.min() >= 0 and x_adv.max() <= 1
    assert (x_adv - x).abs().max() <= eps + 1e-6


# ---------------------------------------------------------------------------------------------- PGD


@pytest.mark.parametrize("random_start", [False, True])
def test_pgd_stays_in_eps_ball_and_unit_box(tiny_classifier, random_start):
    x = torch.rand(4, 3, 32, 32)
    x[0] = 0.0  # pixels at the box edges: projection must keep them inside
    x[1] = 1.0
    result = PGD(tiny_classifier, eps=0.031, alpha=0.02, steps=4, random_start=random_start)(x, 1)
    assert_in_budget(result.x_adv, x, 0.031)
    assert result.x_adv.shape == x.shape
    assert result.success.dtype == torch.bool and result.iterations.dtype == torch.long


def test_pgd_reaches_target_class_for_most_samples(trained, batch):
    x, y, t = batch
    assert (trained(x).argmax(1) == y).float().mean() >= 0.75
    result = PGD(trained, eps=EPS, alpha=ALPHA, steps=20)(x, t)
    assert result.success.float().mean() >= 0.75
    assert torch.equal(result.success, trained(result.x_adv).argmax(1) == t)
    # iterations: the first step where the target held, in [0, steps]; never reached -> steps
    assert ((result.iterations >= 0) & (result.iterations <= 20)).all()
    assert (result.iterations[result.success] < 20).all()


def test_pgd_same_seed_same_output_and_seed_changes_random_start(tiny_classifier):
    x = torch.rand(3, 3, 32, 32)
    a = PGD(tiny_classifier, steps=3, random_start=True, seed=5)(x, 2).x_adv
    b = PGD(tiny_classifier, steps=3, random_start=True, seed=5)(x, 2).x_adv
    c = PGD(tiny_classifier, steps=3, random_start=True, seed=6)(x, 2).x_adv
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_pgd_random_start_with_per_sample_seeds_equals_two_batches_of_8(trained):
    x, _ = quadrant_data(16, 3)
    t = torch.arange(16) % 4
    seeds = torch.arange(16) * 7
    attack = PGD(trained, eps=EPS, alpha=ALPHA, steps=3, random_start=True, seed=1)
    whole = attack(x, t, seeds=seeds).x_adv
    halves = torch.cat([attack(x[i : i + 8], t[i : i + 8], seeds=seeds[i : i + 8]).x_adv for i in (0, 8)])
    assert torch.allclose(whole, halves, atol=1e-6)
    # ADV²'s PGD warm start draws from the same per-sample seeds.
    adv2 = make_adv2(trained, build_interpreter("cam", trained), eps=EPS, alpha=ALPHA, steps=2, warm_steps=2)
    adv2.warm.random_start = True
    a = adv2(x, t, seeds=seeds).x_adv
    b = torch.cat([adv2(x[i : i + 8], t[i : i + 8], seeds=seeds[i : i + 8]).x_adv for i in (0, 8)])
    assert torch.allclose(a, b, atol=1e-5)
    assert adv2.sample_seeds is None and adv2.warm.sample_seeds is None  # the call's seeds do not stay


def test_pgd_batch_of_16_equals_two_batches_of_8(trained):
    x, _ = quadrant_data(16, 3)
    t = torch.arange(16) % 4
    attack = PGD(trained, eps=EPS, alpha=ALPHA, steps=6)
    whole = attack(x, t)
    halves = [attack(x[:8], t[:8]), attack(x[8:], t[8:])]
    torch.testing.assert_close(whole.x_adv, torch.cat([h.x_adv for h in halves]), atol=1e-6, rtol=0)
    assert torch.equal(whole.iterations, torch.cat([h.iterations for h in halves]))


def test_attacks_leave_models_unchanged(trained, batch):
    x, _, t = batch
    model = trained
    model.train()  # attacks must not switch it to eval for good (nor touch BatchNorm statistics)
    model.backbone.fc.weight.requires_grad_(False)  # a mixed pattern of flags must come back as it was
    masker_interp = rts_interpreter(model)
    masker = masker_interp.masker
    masker.train()
    try:
        before, before_masker = model_state(model), model_state(masker)
        PGD(model, eps=EPS, steps=2)(x, t)
        for interp in (build_interpreter("grad", model), build_interpreter("cam", model), masker_interp):
            ADV2(model, interp, eps=EPS, warm_steps=1, steps=2)(x, t)
        assert_same_state(before, model_state(model))
        assert_same_state(before_masker, model_state(masker))
    finally:
        model.backbone.fc.weight.requires_grad_(True)
        model.eval()


# --------------------------------------------------------------------------------------------- ADV²


def test_adv2_stays_in_eps_ball_and_unit_box(tiny_classifier):
    x = torch.rand(4, 3, 32, 32)
    x[0] = 1.0
    cam = build_interpreter("cam", tiny_classifier)
    result = ADV2(tiny_classifier, cam, eps=0.031, alpha=0.02, warm_steps=2, steps=3)(x, 0)
    assert_in_budget(result.x_adv, x, 0.031)
    assert result.maps.shape == (4, 1, 32, 32)


def test_adv2_same_seed_same_output_and_batch_split_invariance(trained):
    x, _ = quadrant_data(16, 4)
    t = torch.arange(16) % 4
    attack = ADV2(trained, build_interpreter("cam", trained), eps=EPS, alpha=ALPHA, warm_steps=3, steps=4)
    first, second = attack(x, t), attack(x, t)
    assert torch.equal(first.x_adv, second.x_adv) and torch.equal(first.iterations, second.iterations)
    halves = [attack(x[:8], t[:8]), attack(x[8:], t[8:])]
    torch.testing.assert_close(first.x_adv, torch.cat([h.x_adv for h in halves]), atol=1e-6, rtol=0)
    assert torch.equal(first.iterations, torch.cat([h.iterations for h in halves]))


@pytest.mark.parametrize("family", ["grad", "grad_pool4", "cam", "rts", "gradcam"])
def test_adv2_reaches_target_and_map_closer_to_target_than_pgd(trained, batch, family):
    x, _, t = batch
    if family == "rts":
        interp = rts_interpreter(trained)
    elif family == "grad_pool4":  # the configs' GRAD: the map averaged over 4×4-pixel cells
        interp = build_interpreter("grad", trained, pool=4)
    else:
        interp = build_interpreter(family, trained)
    benign = benign_target_maps(interp, trained, x)
    steps, warm = 40, 20
    pgd = PGD(trained, eps=EPS, alpha=ALPHA, steps=warm + steps)(x, t)
    adv2 = ADV2(trained, interp, eps=EPS, alpha=ALPHA, warm_steps=warm, steps=steps, kappa=0.5)(x, t)
    assert_in_budget(adv2.x_adv, x, EPS)
    assert adv2.success.float().mean() >= 0.75
    l1_pgd = map_l1(interp.attribute(pgd.x_adv, t), benign)
    l1_adv2 = map_l1(adv2.maps, benign)
    both = pgd.success & adv2.success
    assert both.sum() >= 4
    assert l1_adv2[both].mean() < 0.9 * l1_pgd[both].mean()
    # the result's maps are the evaluation interpreter's maps of the returned images
    torch.testing.assert_close(adv2.maps, interp.attribute(adv2.x_adv, t))


def test_adv2_selection_keeps_confident_iterates(trained, batch):
    x, _, t = batch
    cam = build_interpreter("cam", trained)
    result = ADV2(trained, cam, eps=EPS, alpha=ALPHA, warm_steps=10, steps=10, kappa=0.6)(x, t)
    last = 20
    selected = result.iterations < last  # an earlier iterate was chosen: it had confidence >= κ
    assert ((result.iterations >= 10) & (result.iterations <= last)).all()
    assert (result.confidence[selected] >= 0.6 - 1e-5).all()


def test_adv2_follow_up_continues_only_the_samples_below_kappa_and_raises_their_success(trained, batch):
    x, _, t = batch
    grad = build_interpreter("grad", trained)
    # A short budget and a heavy λ leave samples below κ after the main loop.
    kw = dict(eps=EPS, alpha=ALPHA, warm_steps=1, steps=3, lam=300.0, kappa=0.9)
    plain = ADV2(trained, grad, **kw)(x, t)
    more = ADV2(trained, grad, extra_steps=60, **kw)(x, t)
    below = plain.confidence < 0.9
    assert below.any()
    # the samples that reached κ in the main loop keep their selection
    assert torch.equal(more.x_adv[~below], plain.x_adv[~below])
    assert torch.equal(more.iterations[~below], plain.iterations[~below])
    assert more.success.sum() > plain.success.sum()
    followed = more.iterations > 4  # steps past warm + main: found in the follow-up, at κ
    assert followed.any() and (more.confidence[followed] >= 0.9 - 1e-5).all()
    assert_in_budget(more.x_adv, x, EPS)


def test_adv2_follow_up_gives_each_sample_the_result_it_gets_alone(trained):
    x, _ = quadrant_data(8, 5)
    t = (torch.arange(8) + 1) % 4
    attack = ADV2(trained, build_interpreter("grad", trained), eps=EPS, alpha=ALPHA, warm_steps=1, steps=3,
                  lam=300.0, kappa=0.9, extra_steps=20)
    whole = attack(x, t)
    alone = [attack(x[i : i + 1], t[i : i + 1]) for i in range(8)]
    torch.testing.assert_close(whole.x_adv, torch.cat([a.x_adv for a in alone]), atol=1e-6, rtol=0)
    assert torch.equal(whole.iterations, torch.cat([a.iterations for a in alone]))


def test_adv2_accepts_explicit_target_map_and_moves_towards_it(trained, batch):
    x, _, t = batch
    cam = build_interpreter("cam", trained)
    target_map = torch.zeros(8, 1, 32, 32)
    target_map[..., 8:24, 8:24] = 1.0
    loose = ADV2(trained, cam, eps=EPS, alpha=ALPHA, warm_steps=10, steps=20, lam=0.0, kappa=0.0)(x, t, target_map)
    tight = ADV2(trained, cam, eps=EPS, alpha=ALPHA, warm_steps=10, steps=20, lam=30.0, kappa=0.0)(x, t, target_map)
    assert map_l1(tight.maps, target_map).mean() < map_l1(loose.maps, target_map).mean()


# ----------------------------------------------------------------------------------- registry, errors


def test_build_attack_adv2_dispatches_on_interpreter_name(tiny_classifier):
    from aid.attacks.adv2_mask import ADV2Mask

    cam = build_interpreter("cam", tiny_classifier)
    assert type(build_attack("adv2", tiny_classifier, cam, steps=2)) is ADV2
    assert type(make_adv2(tiny_classifier, cam, steps=2)) is ADV2
    mask = build_interpreter("mask", tiny_classifier)
    assert isinstance(build_attack("adv2", tiny_classifier, mask), ADV2Mask)
    assert isinstance(ADV2(tiny_classifier, mask), ADV2Mask)
    assert type(build_attack("pgd", tiny_classifier)) is PGD


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"eps": 0.0}, "eps"),
        ({"eps": -0.1}, "eps"),
        ({"steps": 0}, "steps"),
        ({"alpha": 0.0}, "alpha"),
        ({"warm_steps": -1}, "warm_steps"),
        ({"kappa": 1.5}, "kappa"),
        ({"smoothing": (0.05, 1.5)}, "smoothing"),
        ({"lam": -1.0}, "lam"),
        ({"select_every": 0}, "select_every"),
        ({"extra_steps": -1}, "extra_steps"),
    ],
)
def test_adv2_rejects_bad_hyper_parameters(tiny_classifier, kwargs, match):
    cam = build_interpreter("cam", tiny_classifier)
    with pytest.raises(ValueError, match=match):
        ADV2(tiny_classifier, cam, **kwargs)


@pytest.mark.parametrize("kwargs, match", [({"eps": 0.0}, "eps"), ({"steps": 0}, "steps")])
def test_pgd_rejects_bad_hyper_parameters(tiny_classifier, kwargs, match):
    with pytest.raises(ValueError, match=match):
        PGD(tiny_classifier, **kwargs)


def test_attacks_reject_bad_targets_and_target_maps(tiny_classifier):
    x = torch.rand(2, 3, 32, 32)
    pgd = PGD(tiny_classifier, steps=1)
    adv2 = ADV2(tiny_classifier, build_interpreter("cam", tiny_classifier), warm_steps=0, steps=1)
    for attack in (pgd, adv2):
        with pytest.raises(ValueError, match="target classes"):
            attack(x, torch.tensor([0, 4]))
        with pytest.raises(ValueError, match="target classes"):
            attack(x, -1)
        with pytest.raises(ValueError, match="one class per image"):
            attack(x, torch.tensor([0, 1, 2]))
    with pytest.raises(ValueError, match="target_map"):
        adv2(x, 0, torch.zeros(2, 1, 16, 16))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        adv2(x * 2, 0)


def test_strategy_for_non_differentiable_interpreter_is_refused(tiny_classifier):
    class Frozen(Interpreter):
        name = "frozen"
        differentiable = False

    with pytest.raises(ValueError, match="not differentiable"):
        build_interpretation_loss(Frozen(tiny_classifier))


# ------------------------------------------------------------------------------- strategies, schedules


def test_grad_strategy_differentiates_a_map_pooled_as_the_evaluated_one(tiny_classifier):
    # The smooth copy whose map ℓ_int differentiates has the evaluated map's cells: h(z) differs from
    # ReLU's step only near 0, so the two pooled maps nearly agree, far closer than an unpooled copy.
    x, t = torch.rand(4, 3, 32, 32), torch.arange(4)
    pooled = build_interpreter("grad", tiny_classifier, pool=4)
    smooth_maps = build_interpretation_loss(pooled).maps(x, t)
    assert torch.equal(smooth_maps, smooth_maps[..., ::4, ::4].repeat_interleave(4, -2).repeat_interleave(4, -1))
    unpooled = build_interpretation_loss(build_interpreter("grad", tiny_classifier)).maps(x, t)
    evaluated = pooled(x, t)
    assert (smooth_maps - evaluated).abs().mean() < 0.25 * (unpooled - evaluated).abs().mean()


def test_grad_strategy_takes_the_interpreters_fused_setting(tiny_classifier):
    fused = build_interpretation_loss(build_interpreter("grad", tiny_classifier, pool=4, fused=True))
    plain = build_interpretation_loss(build_interpreter("grad", tiny_classifier))
    assert fused.smooth.fused and fused.smooth.smooth and fused.smooth.pool == 4
    assert not plain.smooth.fused

def test_strategies_are_chosen_by_interpreter_name(tiny_classifier):
    grad = build_interpretation_loss(build_interpreter("grad", tiny_classifier), pool=2)
    assert isinstance(grad, GradInterpretationLoss) and grad.smooth.smooth and grad.pool == 2
    assert type(build_interpretation_loss(build_interpreter("ig", tiny_classifier))) is InterpretationLoss
    assert type(build_interpretation_loss(build_interpreter("cam", tiny_classifier))) is CAMInterpretationLoss
    assert type(build_interpretation_loss(rts_interpreter(tiny_classifier))) is RTSInterpretationLoss


@pytest.mark.parametrize("name", ["cam", "grad"])
def test_shared_pass_gives_the_classifier_logits_and_the_generic_loss(tiny_classifier, name):
    # CAM and GRAD take ℓ_prd's logits from the pass that makes the map: the logits must be the
    # classifier's and ℓ_int that of the map the generic strategy differentiates, gradients included.
    torch.manual_seed(0)
    x = torch.rand(4, 3, 16, 16)
    t = torch.tensor([0, 1, 2, 3]) % tiny_classifier.num_classes
    interp = build_interpreter(name, tiny_classifier)
    strategy = build_interpretation_loss(interp)
    target_map = torch.rand(4, 1, 16, 16)
    xa = x.clone().requires_grad_(True)
    logits, l_int, extra = strategy.logits_and_losses(xa, t, target_map)
    torch.testing.assert_close(logits, tiny_classifier(x), rtol=1e-5, atol=1e-5)
    xb = x.clone().requires_grad_(True)
    ref = InterpretationLoss.__call__(strategy, xb, t, target_map)
    torch.testing.assert_close(l_int, ref, rtol=1e-5, atol=1e-6)
    (ga,) = torch.autograd.grad(l_int.sum(), xa)
    (gb,) = torch.autograd.grad(ref.sum(), xb)
    torch.testing.assert_close(ga, gb, rtol=1e-4, atol=1e-6)
    assert ga.abs().sum() > 0
    assert torch.equal(extra, torch.zeros(4))


@pytest.mark.parametrize("name", ["cam", "grad", "rts"])
def test_shared_pass_is_not_used_for_another_attacked_classifier(tiny_classifier, name):
    import copy

    other = copy.deepcopy(tiny_classifier)
    with torch.no_grad():
        for p in other.parameters():
            p.mul_(1.1)
    interp = rts_interpreter(tiny_classifier) if name == "rts" else build_interpreter(name, tiny_classifier)
    strategy = build_interpretation_loss(interp)
    x = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(3))
    t = torch.tensor([0, 1])
    logits, _, _ = strategy.logits_and_losses(x, t, torch.rand(2, 1, 16, 16), other)
    torch.testing.assert_close(logits, other(x))


def test_rts_shares_the_encoder_pass_only_while_the_encoder_is_the_classifier(tiny_classifier):
    from aid.attacks.strategies import encoder_is_classifier

    interp = rts_interpreter(tiny_classifier)
    strategy = build_interpretation_loss(interp)
    x = torch.rand(4, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    t = torch.tensor([1, 0, 1, 0])
    target_map = torch.rand(4, 1, 16, 16)
    assert encoder_is_classifier(interp.masker, tiny_classifier)
    logits, l_int, extra = strategy.logits_and_losses(x, t, target_map)
    torch.testing.assert_close(logits, tiny_classifier(x), rtol=1e-5, atol=1e-5)
    ref_int, ref_extra = strategy.losses(x, t, target_map)
    torch.testing.assert_close(l_int, ref_int)
    torch.testing.assert_close(extra, ref_extra)
    # An optimiser step on the encoder (in place) makes it a different network: separate passes again.
    with torch.no_grad():
        next(interp.masker.encoder.parameters()).add_(0.5)
    assert not encoder_is_classifier(interp.masker, tiny_classifier)
    logits, _, extra = strategy.logits_and_losses(x, t, target_map)
    torch.testing.assert_close(logits, tiny_classifier(x), rtol=1e-5, atol=1e-5)
    assert not torch.allclose(extra, ref_extra)


def test_grad_loss_has_a_gradient_only_through_the_smooth_relu(trained, batch):
    x, _, t = batch
    grad = build_interpreter("grad", trained)
    target_map = torch.rand(8, 1, 32, 32)
    xs = x.clone().requires_grad_(True)
    plain = InterpretationLoss(grad)(xs, t, target_map)
    (g_plain,) = torch.autograd.grad(plain.sum(), xs, allow_unused=True)
    smooth = GradInterpretationLoss(grad)(xs, t, target_map)
    (g_smooth,) = torch.autograd.grad(smooth.sum(), xs)
    assert g_plain is None or g_plain.abs().max() < 1e-6  # ReLU: the map is piecewise constant in x
    assert g_smooth.abs().max() > 1e-6
    assert smooth.shape == (8,)


def test_rts_loss_adds_encoder_cross_entropy(trained, batch):
    x, _, t = batch
    interp = rts_interpreter(trained)
    loss = build_interpretation_loss(interp)
    target_map = torch.rand(8, 1, 32, 32)
    l_int, extra = loss.losses(x, t, target_map)
    torch.testing.assert_close(l_int, loss(x, t, target_map))
    torch.testing.assert_close(extra, F.cross_entropy(interp.encoder_logits(x), t, reduction="none"))
    assert (extra > 0).all()
    assert torch.equal(InterpretationLoss(build_interpreter("cam", trained)).extra_loss(x, t), torch.zeros(8))


def test_rts_loss_also_attacks_a_presence_gate_like_the_encoder(trained, batch):
    x, _, t = batch
    interp = rts_interpreter(trained)
    interp.masker.add_presence()
    with torch.no_grad():  # the copy no longer matches the classifier once AID has trained it
        interp.masker.presence.model.get_classifier().bias.add_(torch.arange(4.0))
    encoder_ce = F.cross_entropy(interp.encoder_logits(x), t, reduction="none")
    presence_ce = F.cross_entropy(interp.masker.presence(interp.masker.normalize(x)), t, reduction="none")
    extra = build_interpretation_loss(interp).extra_loss(x, t)
    torch.testing.assert_close(extra, encoder_ce + presence_ce)
    half = build_interpretation_loss(interp, presence_weight=0.5).losses(x, t, torch.rand(8, 1, 32, 32))[1]
    torch.testing.assert_close(half, encoder_ce + 0.5 * presence_ce)
    # The gate multiplies the mask by the copy's probability of the class.
    with torch.no_grad():
        mask = interp.masker(x, t)[0]
        interp.masker.presence = None
        plain = interp.masker(x, t)[0]
    assert torch.all(mask <= plain + 1e-6) and not torch.allclose(mask, plain)


def test_smoothed_cross_entropy_matches_torch_label_smoothing():
    logits = torch.randn(5, 4)
    t = torch.tensor([0, 1, 2, 3, 0])
    torch.testing.assert_close(smoothed_cross_entropy(logits, t, 0.0), F.cross_entropy(logits, t, reduction="none"))
    # ours puts 1 − ρ on the target and ρ/(K−1) elsewhere; torch's ε puts 1 − ε + ε/K and ε/K
    rho = 0.05
    ours = smoothed_cross_entropy(logits, t, rho)
    theirs = F.cross_entropy(logits, t, reduction="none", label_smoothing=rho * 4 / 3)
    torch.testing.assert_close(ours, theirs)


def test_linear_schedule_ramps_from_start_to_end():
    assert linear_schedule((0.05, 0.01), 0, 5) == pytest.approx(0.05)
    assert linear_schedule((0.05, 0.01), 4, 5) == pytest.approx(0.01)
    assert linear_schedule((0.05, 0.01), 2, 5) == pytest.approx(0.03)
    assert linear_schedule(3.0, 7, 10) == 3.0
    with pytest.raises(ValueError):
        linear_schedule((1, 2, 3), 0, 3)


def test_best_iterate_picks_lowest_loss_among_confident_iterates_per_sample():
    x0 = torch.zeros(3, 1, 2, 2)
    best = BestIterate(x0, kappa=0.8)
    # step 1: sample 0 confident with loss 5; step 2: sample 0 confident with loss 3 (better),
    # sample 1 confident with loss 1; step 3: sample 0 loss 1 but not confident. Sample 2 never confident.
    best.update(torch.full_like(x0, 1.0), torch.tensor([5.0, 9.0, 1.0]), torch.tensor([0.9, 0.1, 0.5]), step=1)
    best.update(torch.full_like(x0, 2.0), torch.tensor([3.0, 1.0, 1.0]), torch.tensor([0.9, 0.85, 0.7]), step=2)
    best.update(torch.full_like(x0, 3.0), torch.tensor([1.0, 0.5, 0.1]), torch.tensor([0.2, 0.1, 0.1]), step=3)
    x_sel, step = best.result(torch.full_like(x0, 4.0), last_step=4)
    assert step.tolist() == [2, 2, 4]
    assert x_sel[:, 0, 0, 0].tolist() == [2.0, 2.0, 4.0]
