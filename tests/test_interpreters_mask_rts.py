"""MASK (Eqn 9), RTS (Eqn 8) and the RTS loss (Eqn 15): shapes, batching, seeds, gradients, model state."""

from __future__ import annotations

import pytest
import torch

from aid.interpreters.base import INTERPRETERS
from aid.interpreters.blend import Blend, blend, blur_reference, random_reference
from aid.interpreters.mask import MaskInterpreter
from aid.interpreters.rts import RTSInterpreter, RTSMasker, load_masker_state
from aid.interpreters.rts_loss import RTSLoss
from tests.conftest import quadrant_classifier, quadrant_images


def images(n: int = 4, seed: int = 0, size: int = 32) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, size, size, generator=g)


def model_state(model: torch.nn.Module):
    hooks = sum(
        len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks) for m in model.modules()
    )
    return [m.training for m in model.modules()], [p.requires_grad for p in model.parameters()], hooks


@pytest.fixture
def masker(tiny_classifier):
    torch.manual_seed(1)
    return RTSMasker.from_classifier(tiny_classifier).eval()


# ----- blend operator φ ----------------------------------------------------------------------------


def test_blend_keeps_image_where_mask_is_one_and_reference_where_zero():
    x = images(2)
    ref = random_reference(x, torch.Generator().manual_seed(0))
    ones = torch.ones(2, 1, 32, 32)
    assert torch.equal(blend(x, ones, ref), x)
    assert torch.equal(blend(x, torch.zeros_like(ones), ref), ref)
    half = blend(x, 0.5 * ones, ref)
    assert torch.allclose(half, 0.5 * (x + ref))


def test_random_reference_is_seeded_in_range_and_per_image():
    x = images(3)
    a = random_reference(x, torch.Generator().manual_seed(5))
    b = random_reference(x, torch.Generator().manual_seed(5))
    c = random_reference(x, torch.Generator().manual_seed(6))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert a.min() >= 0 and a.max() <= 1
    colour = random_reference(x, torch.Generator().manual_seed(5), noise_std=0.0)
    assert torch.equal(colour, colour[:, :, :1, :1].expand_as(colour))  # constant per image
    assert not torch.equal(colour[0], colour[1])


def test_blur_reference_smooths_and_keeps_constants():
    x = images(2)
    blurred = blur_reference(x, sigma=2.0)
    assert blurred.shape == x.shape
    assert blurred.std() < 0.5 * x.std()
    const = torch.full((1, 3, 16, 16), 0.3)
    assert torch.allclose(blur_reference(const, sigma=11.0), const, atol=1e-6)  # kernel capped to the image


def test_mixed_reference_chooses_blur_or_noise_per_image():
    x = images(16)
    phi = Blend("mixed", blur_sigma=2.0)
    ref = phi.reference(x, torch.Generator().manual_seed(0))
    is_blur = (ref - blur_reference(x, 2.0)).flatten(1).abs().amax(1) < 1e-6
    assert 0 < int(is_blur.sum()) < 16


def test_grey_reference_is_constant_grey_and_draws_nothing():
    phi = Blend("grey")
    assert not phi.random
    ref = phi.reference(images(2))
    assert torch.equal(ref, torch.full_like(ref, 0.5))


def test_blend_rejects_unknown_reference():
    with pytest.raises(ValueError, match="blur, noise, color, grey, mixed"):
        Blend("pink")


# ----- MASK ------------------------------------------------------------------------------------------


def test_mask_maps_have_input_shape_and_unit_range(tiny_classifier):
    x = images(3)
    maps = MaskInterpreter(tiny_classifier, iterations=5).attribute(x, [0, 1, 2])
    assert maps.shape == (3, 1, 32, 32)
    assert maps.min() >= 0 and maps.max() <= 1
    assert not maps.requires_grad


def test_mask_batch_of_eight_equals_one_by_one(tiny_classifier):
    x, t = images(8, seed=1), torch.tensor([0, 1, 2, 3, 0, 1, 2, 3])
    # no area term: the untrained classifier's class evidence alone must move the masks
    mask = MaskInterpreter(tiny_classifier, iterations=25, area_weight=0.0, seed=0)
    batched = mask.attribute(x, t)
    single = torch.cat([mask.attribute(x[i : i + 1], t[i : i + 1]) for i in range(8)])
    assert torch.allclose(batched, single, atol=1e-4)
    assert batched.std() > 0  # the optimisation moved the mask away from its constant start


def test_mask_same_seed_same_maps_other_seed_other_maps(tiny_classifier):
    x = images(2, seed=2)

    def maps(seed: int) -> torch.Tensor:
        kw = {"iterations": 10, "perturbation": "noise", "area_weight": 0.0, "seed": seed}
        return MaskInterpreter(tiny_classifier, **kw).attribute(x, 1)

    first, again, other = maps(3), maps(3), maps(4)
    assert torch.equal(first, again)
    assert not torch.allclose(first, other)


def test_mask_optimisation_lowers_its_objective(tiny_classifier):
    x, t = images(4, seed=3), torch.tensor([0, 1, 2, 3])
    mask = MaskInterpreter(tiny_classifier, iterations=40)
    with torch.no_grad():
        ref = mask.reference(x)
        start = mask.mask_loss(x, t, mask.init_mask(x), ref)
        end = mask.mask_loss(x, t, mask.optimize(x, t), ref)
    assert (end < start).all()


def test_mask_temperature_keeps_the_deletion_gradient_of_a_saturated_classifier(tiny_classifier):
    # Scaling the linear head by s saturates the softmax (p = 1 in float32): at T = 1 the class term's
    # gradient with respect to the mask vanishes; T = s gives back the unscaled classifier's loss.
    import copy

    scale = 1e5
    clf = copy.deepcopy(tiny_classifier)
    with torch.no_grad():
        clf.linear_head.weight.mul_(scale)
        clf.linear_head.bias.mul_(scale)
    x = images(2, seed=5)
    t = clf(x).argmax(1)

    def loss_and_grad(model, temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
        mask = MaskInterpreter(model, area_weight=0.0, tv_weight=0.0, temperature=temperature)
        param = mask.init_mask(x)
        loss = mask.mask_loss(x, t, param)
        (g,) = torch.autograd.grad(loss.sum(), param)
        return loss.detach(), g

    plain_loss, plain_grad = loss_and_grad(tiny_classifier, 1.0)
    _, saturated_grad = loss_and_grad(clf, 1.0)
    tempered_loss, tempered_grad = loss_and_grad(clf, scale)
    assert saturated_grad.abs().max() < 1e-6 * plain_grad.abs().max()
    torch.testing.assert_close(tempered_loss, plain_loss, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(tempered_grad, plain_grad, rtol=1e-3, atol=1e-6)
    with pytest.raises(ValueError, match="temperature"):
        MaskInterpreter(clf, temperature=0.0)


def test_mask_loss_supports_look_ahead_gradients_to_the_input(tiny_classifier):
    # Algorithm 1 differentiates the map after an unrolled mask step with respect to x.
    x, t = images(2, seed=4).requires_grad_(True), torch.tensor([1, 2])
    mask = MaskInterpreter(tiny_classifier)
    param = mask.init_mask(x)
    loss = mask.mask_loss(x, t, param)
    assert loss.shape == (2,)
    (g_param,) = torch.autograd.grad(loss.sum(), param, create_graph=True)
    stepped = param - 0.1 * g_param
    (g_x,) = torch.autograd.grad(mask.mask_to_map(stepped, x.shape[-2:]).sum(), x)
    assert torch.isfinite(g_x).all() and g_x.abs().sum() > 0


def test_mask_runs_inside_no_grad_and_restores_the_classifier(tiny_classifier):
    tiny_classifier.train()
    before = model_state(tiny_classifier)
    with torch.no_grad():
        maps = MaskInterpreter(tiny_classifier, iterations=5).attribute(images(2), 0)
    assert torch.isfinite(maps).all()
    assert model_state(tiny_classifier) == before


def test_mask_under_inference_mode_raises_a_clear_error(tiny_classifier):
    mask = MaskInterpreter(tiny_classifier, iterations=2)
    with torch.inference_mode(), pytest.raises(RuntimeError, match=r"Trainer\(inference_mode=False\)"):
        mask.attribute(images(1), 0)


def test_mask_accepts_a_tensor_made_under_inference_mode(tiny_classifier):
    with torch.inference_mode():
        x = images(1)
    maps = MaskInterpreter(tiny_classifier, iterations=2).attribute(x, 0)
    assert maps.shape == (1, 1, 32, 32)


def test_mask_size_follows_the_scale_with_a_floor(tiny_classifier):
    mask = MaskInterpreter(tiny_classifier)
    assert mask.mask_size(224, 224) == (28, 28)
    assert mask.mask_size(32, 32) == (16, 16)


# ----- RTS masker and interpreter ---------------------------------------------------------------------


def test_rts_is_registered_and_gives_maps_in_unit_range(tiny_classifier, masker):
    assert INTERPRETERS.get("rts") is RTSInterpreter and INTERPRETERS.get("mask") is MaskInterpreter
    maps = RTSInterpreter(tiny_classifier, masker=masker).attribute(images(3), [0, 1, 3])
    assert maps.shape == (3, 1, 32, 32) and maps.dtype == torch.float32
    assert maps.min() >= 0 and maps.max() <= 1


def test_rts_map_has_a_finite_non_zero_input_gradient(tiny_classifier, masker):
    rts = RTSInterpreter(tiny_classifier, masker=masker)
    x = images(2, seed=5).requires_grad_(True)
    with torch.no_grad():  # create_graph must still build a graph (attacks run under no_grad loops)
        maps = rts.attribute(x, [0, 1], create_graph=True)
    (g,) = torch.autograd.grad((maps - 0.5).pow(2).sum(), x, create_graph=True)
    assert torch.isfinite(g).all() and g.abs().sum() > 0
    assert g.requires_grad  # second-order graph kept


def test_rts_batch_of_eight_equals_one_by_one(tiny_classifier, masker):
    rts = RTSInterpreter(tiny_classifier, masker=masker)
    x, t = images(8, seed=6), torch.tensor([3, 2, 1, 0, 3, 2, 1, 0])
    batched = rts.attribute(x, t)
    single = torch.cat([rts.attribute(x[i : i + 1], t[i : i + 1]) for i in range(8)])
    assert torch.allclose(batched, single, atol=1e-5)


def test_rts_mask_depends_on_the_selected_class(tiny_classifier, masker):
    rts = RTSInterpreter(tiny_classifier, masker=masker)
    x = images(1, seed=7)
    assert not torch.allclose(rts.attribute(x, 0), rts.attribute(x, 3))


def test_rts_encoder_logits_match_the_copied_classifier(tiny_classifier, masker):
    rts = RTSInterpreter(tiny_classifier, masker=masker)
    x = images(2)
    with torch.no_grad():
        assert torch.allclose(rts.encoder_logits(x), tiny_classifier(x), atol=1e-5)
        mask, logits = masker(x, torch.tensor([0, 1]))
    assert logits.shape == (2, 4) and mask.shape == (2, 1, 32, 32)


def test_rts_attribute_leaves_masker_and_classifier_unchanged(tiny_classifier, masker):
    masker.train()
    tiny_classifier.train()
    before = model_state(masker), model_state(tiny_classifier)
    rts = RTSInterpreter(tiny_classifier, masker=masker)
    rts.attribute(images(2), 1, create_graph=True)
    rts.encoder_logits(images(2))
    assert (model_state(masker), model_state(tiny_classifier)) == before
    assert rts.modules() == [masker]


def test_frozen_encoder_stays_in_eval_mode_and_without_gradients(masker):
    masker.train()
    assert not masker.encoder.training and masker.decoder.training
    assert not any(p.requires_grad for p in masker.encoder.parameters())
    assert all(p.requires_grad for p in masker.decoder.parameters())


def test_trainable_encoder_copied_from_a_frozen_classifier_gets_gradients(tiny_classifier):
    tiny_classifier.requires_grad_(False)
    masker = RTSMasker.from_classifier(tiny_classifier, freeze_encoder=False).train()
    assert masker.encoder.training and all(p.requires_grad for p in masker.encoder.parameters())
    assert not any(p.requires_grad for p in tiny_classifier.parameters())


def test_masker_built_on_a_classifier_copies_it_and_leaves_it_trainable(tiny_classifier):
    tiny_classifier.train()
    masker = RTSMasker(tiny_classifier)
    assert masker.encoder is not tiny_classifier.backbone and masker.num_classes == 4
    assert tiny_classifier.training and all(p.requires_grad for p in tiny_classifier.parameters())


def test_rts_masker_by_timm_name_and_full_resolution_decoder():
    m = RTSMasker(
        "resnet10t", num_classes=3, encoder_kwargs={"channels": [8, 16, 32, 64]}, mask_scale=1
    ).eval()
    with torch.no_grad():
        low, logits = m(images(2), torch.tensor([0, 2]), upsample=False)
    assert low.shape == (2, 1, 32, 32) and logits.shape == (2, 3)


def test_rts_checkpoint_round_trip_plain_and_lightning(tiny_classifier, masker, tmp_path):
    x, t = images(2, seed=8), torch.tensor([0, 1])
    expected = RTSInterpreter(tiny_classifier, masker=masker).attribute(x, t)
    plain, lightning = tmp_path / "masker.pt", tmp_path / "aid.ckpt"
    torch.save(masker.state_dict(), plain)
    state = {f"masker.{k}": v for k, v in masker.state_dict().items()}
    state["classifier.weight"] = torch.zeros(1)  # other modules of a LightningModule are ignored
    torch.save({"state_dict": state, "epoch": 3}, lightning)
    nested = tmp_path / "nested.ckpt"
    torch.save({"state_dict": {f"rts.masker.{k}": v for k, v in masker.state_dict().items()}}, nested)
    for path in (plain, lightning, nested):
        torch.manual_seed(123)  # a differently initialised masker before loading
        loaded = RTSInterpreter(tiny_classifier, checkpoint=str(path))
        assert torch.allclose(loaded.attribute(x, t), expected, atol=1e-6)


def test_rts_checkpoint_of_another_architecture_is_refused(tiny_classifier, tmp_path):
    other = RTSMasker("resnet10t", num_classes=4, encoder_kwargs={"channels": [8, 16, 32, 64]})
    path = tmp_path / "other.pt"
    torch.save(other.state_dict(), path)
    fresh = RTSMasker.from_classifier(tiny_classifier)
    with pytest.raises(RuntimeError, match="does not hold weights"):
        load_masker_state(fresh, path)


def test_rts_maps_are_finite_under_bf16_autocast(tiny_classifier, masker):
    rts = RTSInterpreter(tiny_classifier, masker=masker)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        maps = rts.attribute(images(2), [0, 1])
    assert maps.dtype == torch.float32 and torch.isfinite(maps).all()
    assert maps.min() >= 0 and maps.max() <= 1


# ----- RTS loss (Eqn 15) -------------------------------------------------------------------------------


def test_rts_loss_terms_are_finite_and_train_only_the_masker(tiny_classifier, masker):
    tiny_classifier.requires_grad_(False)
    masker.train()
    x, t = images(4, seed=9), torch.tensor([0, 1, 2, 3])
    out = RTSLoss()(tiny_classifier, x, t, masker(x, t, upsample=False)[0], torch.Generator().manual_seed(0))
    assert set(out) == {"loss", "tv", "area", "preserve", "destroy"}
    assert all(torch.isfinite(v) and v.dim() == 0 for v in out.values())
    assert all(not out[k].requires_grad for k in ("tv", "area", "preserve", "destroy"))
    out["loss"].backward()
    grads = [p.grad for p in masker.decoder.parameters()]
    assert all(g is not None for g in grads) and sum(g.abs().sum() for g in grads) > 0
    assert masker.selector.weight.grad is not None
    assert all(p.grad is None for p in tiny_classifier.parameters())
    assert all(p.grad is None for p in masker.encoder.parameters())


@pytest.mark.parametrize("forms", [("hinge", "hinge"), ("nll", "prob")])
def test_rts_loss_per_sample_reduction_matches_the_mean(tiny_classifier, masker, forms):
    x, t = images(4, seed=10), torch.tensor([0, 1, 2, 3])
    with torch.no_grad():
        mask = masker(x, t)[0]
    kw = {"preserver": forms[0], "destroyer": forms[1], "destroy_power": 2.0}
    per = RTSLoss(reduction="none", **kw)(tiny_classifier, x, t, mask, torch.Generator().manual_seed(0))
    mean = RTSLoss(**kw)(tiny_classifier, x, t, mask, torch.Generator().manual_seed(0))
    assert per["loss"].shape == (4,) and per["destroy"].shape == (4,)
    assert torch.allclose(per["loss"].mean(), mean["loss"], atol=1e-6)


def test_rts_loss_with_fake_labels_keeps_only_area_and_smoothness_for_absent_classes(tiny_classifier, masker):
    x, t = images(4, seed=11), torch.tensor([0, 1, 2, 3])
    with torch.no_grad():
        mask = masker(x, t)[0]
    real = torch.tensor([True, False, True, False])
    crit = RTSLoss(reduction="none")
    all_real = crit(tiny_classifier, x, t, mask, torch.Generator().manual_seed(0))
    fake = crit(tiny_classifier, x, t, mask, torch.Generator().manual_seed(0), real=real)
    assert torch.equal(fake["preserve"][~real], torch.zeros(2)) and torch.equal(fake["destroy"][~real], torch.zeros(2))
    torch.testing.assert_close(fake["loss"][real], all_real["loss"][real])
    only_reg = crit.area_weight * all_real["area"] + crit.tv_weight * all_real["tv"]
    torch.testing.assert_close(fake["loss"][~real], only_reg[~real])


def test_rts_loss_area_and_smoothness_favour_small_smooth_masks():
    from aid.interpreters.rts_loss import area, smoothness

    empty, full = torch.zeros(1, 1, 8, 8), torch.ones(1, 1, 8, 8)
    checker = (torch.arange(64).view(1, 1, 8, 8) + torch.arange(8).view(1, 1, 8, 1)) % 2
    assert area(empty) < area(full)
    assert smoothness(empty) == 0 and smoothness(checker.float()) > smoothness(full)


def test_a_few_rts_loss_steps_on_one_batch_lower_the_loss(tiny_classifier):
    torch.manual_seed(0)
    tiny_classifier.requires_grad_(False)
    masker = RTSMasker.from_classifier(tiny_classifier).train()
    criterion = RTSLoss()
    opt = torch.optim.Adam([p for p in masker.parameters() if p.requires_grad], lr=3e-3)
    x, t = images(8, seed=11), torch.tensor([0, 1, 2, 3, 0, 1, 2, 3])

    def loss() -> torch.Tensor:
        return criterion(tiny_classifier, x, t, masker(x, t)[0], torch.Generator().manual_seed(0))["loss"]

    # train mode throughout: batch-norm uses the batch statistics, so start and end see the same maths
    with torch.no_grad():
        start = loss()
    for _ in range(15):
        opt.zero_grad()
        loss().backward()
        opt.step()
    with torch.no_grad():
        end = loss()
    assert end < start


def test_unrolled_map_equals_the_interpreters_k_step_map_and_has_a_gradient_to_x():
    clf = quadrant_classifier()
    x, y = quadrant_images(4, seed=7)
    mask = MaskInterpreter(clf, iterations=6)
    expected = mask.mask_to_map(mask.optimize(x, y, steps=6), x.shape[-2:])
    xv = x.clone().requires_grad_(True)
    got = mask.unrolled_map(xv, y, 6)
    torch.testing.assert_close(got.detach(), expected, atol=1e-5, rtol=0)
    (g,) = torch.autograd.grad(got.sum(), xv)
    assert g.abs().sum() > 0


def test_presence_gate_is_the_two_way_softmax_of_the_asked_class_against_its_strongest_rival():
    from aid.interpreters.presence import EncoderPresence

    gate = EncoderPresence(torch.nn.Identity()).gate
    logits = torch.tensor([[3.0, 1.0, 0.0], [1.0, 1.0, -5.0], [0.0, 2.0, 9.0]])
    got = gate(logits, torch.tensor([0, 1, 0])).flatten()
    expected = torch.sigmoid(torch.tensor([3.0 - 1.0, 0.0, 0.0 - 9.0]))
    torch.testing.assert_close(got, expected)
    # a clear winner passes near 1 however the rest of the probability is spread over many classes
    many = torch.cat([torch.tensor([[6.0]]), torch.full((1, 999), 0.0)], dim=1)
    assert gate(many, torch.tensor([0])).item() > 0.99 > many.softmax(1)[0, 0].item()


def test_presence_gate_sharpness_multiplies_the_margin_and_must_be_positive():
    from aid.interpreters.presence import EncoderPresence

    logits = torch.tensor([[0.75, 0.0, -1.0], [0.0, 0.5, 0.0]])
    target = torch.tensor([0, 0])
    got = EncoderPresence(torch.nn.Identity(), sharpness=4.0).gate(logits, target).flatten()
    torch.testing.assert_close(got, torch.sigmoid(torch.tensor([3.0, -2.0])))
    presence = EncoderPresence(torch.nn.Identity(), sharpness=4.0)
    with presence.sharpness_as(1.0):  # for a block only; the buffer (the checkpoint's k) is untouched
        torch.testing.assert_close(presence.gate(logits, target).flatten(), torch.sigmoid(torch.tensor([0.75, -0.5])))
    assert presence.sharpness.item() == 4.0
    torch.testing.assert_close(presence.gate(logits, target).flatten(), got)
    with pytest.raises(ValueError, match="sharpness"):
        EncoderPresence(torch.nn.Identity(), sharpness=0.0)


def test_rts_checkpoint_carries_its_gate_sharpness_and_older_gates_load_with_sharpness_one(
    tiny_classifier, tmp_path
):
    trained = RTSMasker.from_classifier(tiny_classifier)
    trained.add_presence(sharpness=4.0)
    path, old = tmp_path / "rtsa.pt", tmp_path / "rtsa_old.pt"
    torch.save(trained.state_dict(), path)
    torch.save({k: v for k, v in trained.state_dict().items() if k != "presence.sharpness"}, old)
    for ckpt, expected in ((path, 4.0), (old, 1.0)):
        fresh = RTSMasker.from_classifier(tiny_classifier)  # no gate yet: the checkpoint adds one
        load_masker_state(fresh, ckpt)
        assert fresh.presence is not None and fresh.presence.sharpness.item() == expected
