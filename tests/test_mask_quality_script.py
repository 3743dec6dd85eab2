"""scripts/mask_quality.py: setting parsing and the statistics it prints for one MASK setting."""

from __future__ import annotations

import pytest
import torch

from aid.interpreters.mask import MaskInterpreter
from tests.conftest import load_script, quadrant_classifier, quadrant_images

mask_quality = load_script("mask_quality")


def test_settings_parse_literals_and_words_and_reject_missing_values():
    assert mask_quality.parse_setting("default") == {}
    assert mask_quality.parse_setting("perturbation=blur,area_weight=0.1") == {
        "perturbation": "blur", "area_weight": 0.1}
    with pytest.raises(SystemExit, match="key=value"):
        mask_quality.parse_setting("area_weight")


def test_a_mask_that_deletes_the_class_scores_below_the_image_probability():
    clf = quadrant_classifier()
    x, y = quadrant_images(4, seed=3)
    objects = torch.zeros(4, 1, *x.shape[-2:])
    objects[..., :8, :8] = 1
    q = mask_quality.quality(MaskInterpreter(clf, iterations=30), clf, x, y, objects)
    assert set(q) == {"empty", "nonzero", "largest", "p_image", "p_deleted", "loc_iou", "energy"}
    assert all(0 <= v <= 1 for v in q.values())
    assert q["p_deleted"] < q["p_image"]


def test_noise_of_zero_size_leaves_every_map_as_it_was_and_noise_stays_in_its_box():
    clf = quadrant_classifier()
    x, y = quadrant_images(4, seed=4)
    mask = MaskInterpreter(clf, iterations=20)
    benign = mask.attribute(x, y)
    assert mask_quality.noise_stability(mask, clf, x, y, benign, 0.0) == {"kept": 1.0, "iou": 1.0, "l1": 0.0}
    noisy = mask_quality.uniform_noise(x, 0.05)
    assert (noisy - x).abs().max() <= 0.05 + 1e-6 and noisy.min() >= 0 and noisy.max() <= 1
    assert torch.equal(noisy, mask_quality.uniform_noise(x, 0.05)) and not torch.equal(noisy, x)
