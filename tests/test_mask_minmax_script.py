"""scripts/mask_minmax.py: the inner player never deletes the benign region, the attack keeps its box."""

from __future__ import annotations

import torch

from aid.interpreters.mask import MaskInterpreter
from tests.conftest import load_script, quadrant_classifier, quadrant_images

mask_minmax = load_script("mask_minmax")


def test_inner_player_keeps_the_region_and_deletes_elsewhere():
    clf = quadrant_classifier()
    x, y = quadrant_images(4, seed=5)
    region = torch.zeros(4, 1, *x.shape[-2:])
    region[..., :8, :8] = 1
    mask = MaskInterpreter(clf, iterations=20)
    grads = [None if p.grad is None else p.grad.clone() for p in clf.parameters()]
    keep = mask_minmax.worst_deletion_outside(mask, x, y, region, iterations=20)
    assert keep.shape == region.shape and torch.all(keep[region.bool()] == 1)
    assert keep.min() < 0.9  # something outside the region was deleted
    for p, g in zip(clf.parameters(), grads, strict=True):  # the classifier's .grad fields are untouched
        assert (p.grad is None and g is None) or torch.equal(p.grad, g)


def test_minmax_attack_stays_in_its_box_and_is_deterministic():
    clf = quadrant_classifier()
    x, y = quadrant_images(4, seed=6)
    t = (y + 1) % 4
    mask = MaskInterpreter(clf, iterations=20)
    benign = mask.attribute(x, y)
    kwargs = dict(eps=0.05, steps=4, warm_steps=3, every=2, inner=5, select_every=2)
    x_adv = mask_minmax.minmax_attack(mask, x, t, benign, **kwargs)
    assert (x_adv - x).abs().max() <= 0.05 + 1e-6 and x_adv.min() >= 0 and x_adv.max() <= 1
    assert torch.equal(x_adv, mask_minmax.minmax_attack(mask, x, t, benign, **kwargs))
    assert not torch.equal(x_adv, x)
