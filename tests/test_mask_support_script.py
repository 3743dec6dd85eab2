"""scripts/mask_support.py: PGD confined to a support changes nothing outside it, and the supports nest."""

from __future__ import annotations

import torch

from aid.attacks.pgd import PGD
from tests.conftest import load_script, quadrant_classifier, quadrant_images

mask_support = load_script("mask_support")


def test_confined_pgd_leaves_pixels_outside_the_support_unchanged_and_full_support_is_plain_pgd():
    clf = quadrant_classifier()
    x, y = quadrant_images(4, seed=1)
    t = (y + 1) % 4
    support = torch.zeros(4, 1, *x.shape[-2:])
    support[..., 4:12, 4:12] = 1
    x_adv = mask_support.confined_pgd(clf, x, t, support, eps=0.1, steps=10)
    outside = (support == 0).expand_as(x)
    assert torch.equal(x_adv[outside], x[outside])
    assert (x_adv - x)[~outside].abs().max() > 0 and (x_adv - x).abs().max() <= 0.1 + 1e-6
    full = mask_support.confined_pgd(clf, x, t, torch.ones_like(support), eps=0.1, steps=10)
    assert torch.allclose(full, PGD(clf, eps=0.1, alpha=1 / 255, steps=10)(x, t).x_adv)


def test_the_support_classifier_sees_a_change_only_inside_the_support():
    clf = quadrant_classifier()
    x, _ = quadrant_images(2, seed=2)
    support = torch.zeros(2, 1, *x.shape[-2:])
    support[..., :8, :] = 1
    wrapped = mask_support.SupportClassifier(clf, x, support)
    z = torch.rand_like(x).requires_grad_(True)
    logits = wrapped(z)
    assert torch.allclose(logits, clf(x + (z - x) * support))
    (grad,) = torch.autograd.grad(logits[:, 0].sum(), z)
    assert grad[..., 8:, :].abs().max() == 0 and grad[..., :8, :].abs().max() > 0


def test_supports_grow_with_the_dilation_and_keep_the_benign_region():
    benign = torch.zeros(2, 1, 16, 16)
    benign[:, :, 6:9, 6:9] = 0.5
    objects = torch.zeros(2, 1, 16, 16)
    objects[:, :, 2:5, 2:5] = 1
    s = mask_support.supports(benign, objects)
    assert list(s) == ["image", "benign map", "benign map + 1 px", "benign map + 2 px", "benign map + 3 px", "object"]
    areas = [s[k].sum().item() for k in ("benign map", "benign map + 1 px", "benign map + 2 px", "benign map + 3 px")]
    assert areas == [2 * 9, 2 * 25, 2 * 49, 2 * 81]
    assert s["image"].min() == 1 and torch.equal(s["object"], objects)
