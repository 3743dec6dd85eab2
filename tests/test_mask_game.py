"""The min-max game behind ADV² against MASK (aid/attacks/mask_game.py): the inner player never deletes
the target region, the loss is differentiable in x and rewards the class dying with the region."""

from __future__ import annotations

import torch

from aid.attacks.mask_game import minmax_loss, target_region, worst_deletion_outside
from aid.attacks.schedules import smoothed_cross_entropy
from aid.interpreters.mask import MaskInterpreter
from aid.model_state import frozen_eval
from tests.conftest import quadrant_classifier, quadrant_images


def test_target_region_is_the_maps_pixels_above_the_threshold():
    m = torch.tensor([0.0, 0.05, 0.06, 1.0]).view(1, 1, 2, 2)
    assert target_region(m, 0.05).flatten().tolist() == [0.0, 0.0, 1.0, 1.0]


def test_inner_player_keeps_the_region_deletes_elsewhere_and_leaves_the_classifier_alone():
    clf = quadrant_classifier()
    x, y = quadrant_images(4, seed=5)
    region = torch.zeros(4, 1, *x.shape[-2:])
    region[..., :8, :8] = 1
    mask = MaskInterpreter(clf, iterations=20)
    grads = [None if p.grad is None else p.grad.clone() for p in clf.parameters()]
    keep = worst_deletion_outside(mask, x, y, region, iterations=20)
    assert keep.shape == region.shape and torch.all(keep[region.bool()] == 1)
    assert keep.min() < 0.9  # something outside the region was deleted
    for p, g in zip(clf.parameters(), grads, strict=True):  # the classifier's .grad fields are untouched
        assert (p.grad is None and g is None) or torch.equal(p.grad, g)


def test_minmax_loss_is_per_sample_differentiable_and_grows_with_the_class_surviving_the_region_deletion():
    clf = quadrant_classifier()
    x, y = quadrant_images(4, seed=6)
    mask = MaskInterpreter(clf, iterations=10)

    def prd(images, labels):
        return smoothed_cross_entropy(clf(images), labels, 0.05)

    region = torch.zeros(4, 1, *x.shape[-2:])
    region[..., 8:, 8:] = 1
    with frozen_eval(clf), torch.enable_grad():
        keep = worst_deletion_outside(mask, x, y, region, iterations=5)
        xv = x.clone().requires_grad_(True)
        loss = minmax_loss(mask, xv, y, region, [keep, keep], prd(xv, y), 3.0, 30.0)
        (grad,) = torch.autograd.grad(loss.sum(), xv)
        without = minmax_loss(mask, x, y, region, [keep], prd(x, y), 3.0, 0.0)
        alone = minmax_loss(mask, x[:2], y[:2], region[:2], [keep[:2]], prd(x[:2], y[:2]), 3.0, 30.0)
    assert loss.shape == (4,)
    assert torch.isfinite(grad).all() and (grad.flatten(1).abs().sum(1) > 0).all()
    assert (loss > without).all()  # the region term is a positive probability
    assert torch.allclose(alone, loss[:2], atol=1e-5)  # samples do not mix
