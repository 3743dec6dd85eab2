"""MaskInterpreter.unrolled_map: MASK's own K-step map, with a gradient to x (ADV² estimate="unrolled")."""

from __future__ import annotations

import torch

from aid.interpreters.mask import MaskInterpreter
from tests.conftest import quadrant_classifier, quadrant_images


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


def test_mask_unrolled_script_builds_the_mask_of_the_eval_config():
    import yaml

    from tests.conftest import ROOT, load_script

    script = load_script("mask_unrolled")
    config = yaml.safe_load((ROOT / "configs" / "eval_adv2.yaml").read_text())
    kwargs = script.eval_mask_kwargs()
    assert kwargs == config["trainer"]["callbacks"][0]["init_args"]["interpreter_kwargs"]["mask"]
    MaskInterpreter(quadrant_classifier(), **kwargs)  # valid MaskInterpreter arguments
