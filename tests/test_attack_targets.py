"""Attack targets (§5 Q1): random target classes, benign maps, random patch maps, random-class maps."""

from __future__ import annotations

import pytest
import torch

from aid.attacks.targets import (
    benign_target_maps,
    random_class_maps,
    random_patch_maps,
    random_target_classes,
)
from aid.interpreters import build_interpreter

# ------------------------------------------------------------------------------------ target classes


def test_random_target_classes_differ_from_labels_and_cover_other_classes():
    labels = torch.arange(400) % 5
    targets = random_target_classes(labels, 5, generator=0)
    assert targets.shape == labels.shape and targets.dtype == torch.long
    assert (targets != labels).all()
    assert ((targets >= 0) & (targets < 5)).all()
    for c in range(5):  # every other class is drawn for each label
        assert set(targets[labels == c].tolist()) == set(range(5)) - {c}


def test_random_target_classes_are_deterministic_per_seed():
    labels = torch.randint(0, 10, (64,), generator=torch.Generator().manual_seed(1))
    a = random_target_classes(labels, 10, generator=torch.Generator().manual_seed(3))
    b = random_target_classes(labels, 10, generator=3)
    c = random_target_classes(labels, 10, generator=4)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_random_target_classes_reject_bad_arguments():
    with pytest.raises(ValueError, match="num_classes"):
        random_target_classes(torch.zeros(3, dtype=torch.long), 1)
    with pytest.raises(ValueError, match="labels"):
        random_target_classes(torch.tensor([0, 5]), 5)
    with pytest.raises(ValueError, match="shape"):
        random_target_classes(torch.zeros(2, 2, dtype=torch.long), 5)


# ------------------------------------------------------------------------------------- benign maps


def test_benign_target_maps_are_maps_for_the_predicted_class(tiny_classifier):
    x = torch.rand(4, 3, 32, 32)
    cam = build_interpreter("cam", tiny_classifier)
    tiny_classifier.train()
    try:
        maps = benign_target_maps(cam, tiny_classifier, x)
        assert tiny_classifier.training  # mode restored
    finally:
        tiny_classifier.eval()
    pred = tiny_classifier(x).argmax(dim=1)
    assert maps.shape == (4, 1, 32, 32) and not maps.requires_grad
    torch.testing.assert_close(maps, cam.attribute(x, pred))


# ------------------------------------------------------------------------------------------ patches


@pytest.mark.parametrize("shape", ["rectangle", "circle", "random"])
def test_random_patch_maps_are_binary_with_area_in_range(shape):
    size, area_range = 64, (0.1, 0.3)
    maps = random_patch_maps(200, size, generator=0, shape=shape, area_range=area_range)
    assert maps.shape == (200, 1, size, size) and maps.dtype == torch.float32
    assert set(maps.unique().tolist()) <= {0.0, 1.0}
    area = maps.mean(dim=(1, 2, 3))
    # pixels whose centre falls inside: the area matches up to the rasterised border (~perimeter / 2)
    assert area.min() >= area_range[0] - 0.02 and area.max() <= area_range[1] + 0.02
    assert area.max() - area.min() > 0.1  # areas spread over the range


def test_random_patch_maps_vary_in_position_and_angle():
    maps = random_patch_maps(64, 32, generator=1)
    ys, xs = torch.meshgrid(torch.arange(32.0), torch.arange(32.0), indexing="ij")
    mass = maps.sum(dim=(1, 2, 3))
    cy = (maps[:, 0] * ys).sum(dim=(1, 2)) / mass
    cx = (maps[:, 0] * xs).sum(dim=(1, 2)) / mass
    assert cy.std() > 2 and cx.std() > 2  # centres spread over the image
    assert len({tuple(m.flatten().tolist()) for m in maps}) == 64  # all different


def test_random_patch_maps_random_shape_mixes_rectangles_and_circles():
    rect = random_patch_maps(32, 48, generator=2, shape="rectangle")
    circ = random_patch_maps(32, 48, generator=2, shape="circle")
    mixed = random_patch_maps(32, 48, generator=2, shape="random")
    same_as_rect = (mixed == rect).flatten(1).all(1)
    same_as_circ = (mixed == circ).flatten(1).all(1)
    assert (same_as_rect | same_as_circ).all()
    assert same_as_rect.any() and same_as_circ.any()


def test_random_patch_maps_are_deterministic_and_accept_rectangular_sizes():
    a = random_patch_maps(8, (24, 40), generator=torch.Generator().manual_seed(5))
    b = random_patch_maps(8, (24, 40), generator=5)
    c = random_patch_maps(8, (24, 40), generator=6)
    assert a.shape == (8, 1, 24, 40)
    assert torch.equal(a, b) and not torch.equal(a, c)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"shape": "triangle"}, "shape"),
        ({"area_range": (0.0, 0.3)}, "area_range"),
        ({"area_range": (0.4, 0.3)}, "area_range"),
        ({"area_range": (0.1, 1.5)}, "area_range"),
        ({"aspect_range": (0.0, 2.0)}, "aspect_range"),
    ],
)
def test_random_patch_maps_reject_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        random_patch_maps(2, 32, generator=0, **kwargs)


# -------------------------------------------------------------------------------- random-class maps


def test_random_class_maps_come_from_pool_images_of_another_class(tiny_classifier):
    cam = build_interpreter("cam", tiny_classifier)
    x_pool = torch.rand(12, 3, 32, 32)
    y_pool = torch.arange(12) % 4
    targets = torch.tensor([0, 1, 2, 3, 0, 1, 2, 3])
    maps, idx = random_class_maps(cam, x_pool, y_pool, targets, generator=0, return_index=True)
    assert maps.shape == (8, 1, 32, 32) and idx.shape == (8,)
    assert (y_pool[idx] != targets).all()
    torch.testing.assert_close(maps, cam.attribute(x_pool[idx], y_pool[idx]))
    again = random_class_maps(cam, x_pool, y_pool, targets, generator=0)
    torch.testing.assert_close(maps, again)
    other = random_class_maps(cam, x_pool, y_pool, targets.repeat(4), generator=1, return_index=True)[1]
    assert len(set(other.tolist())) > 4  # the choice is random, not the first match


def test_random_class_maps_need_an_image_of_another_class(tiny_classifier):
    cam = build_interpreter("cam", tiny_classifier)
    x_pool = torch.rand(3, 3, 32, 32)
    with pytest.raises(ValueError, match="target class"):
        random_class_maps(cam, x_pool, torch.tensor([2, 2, 2]), torch.tensor([0, 2]), generator=0)
    with pytest.raises(ValueError, match="y_pool"):
        random_class_maps(cam, x_pool, torch.tensor([0, 1]), torch.tensor([0]), generator=0)
