"""Map distances, IoU, localisation and the torchmetrics Metrics, on hand-computed examples."""

from __future__ import annotations

import math
import warnings

import pytest
import torch

from aid.metrics import (
    AttackSuccessRate,
    Localization,
    MapDistance,
    MeanConfidence,
    binarize_top,
    localization,
    map_iou,
    map_l1,
    map_l2,
)


def maps(*rows):
    """(B, 1, H, W) maps from nested lists, one per image."""
    return torch.tensor(rows, dtype=torch.float32)[:, None]


def test_l1_and_l2_are_normalised_per_pixel():
    a = maps([[0.0, 0.0], [0.0, 0.0]], [[1.0, 1.0], [1.0, 1.0]])
    b = maps([[1.0, 0.0], [0.0, 0.0]], [[1.0, 1.0], [1.0, 1.0]])
    torch.testing.assert_close(map_l1(a, b), torch.tensor([0.25, 0.0]))
    torch.testing.assert_close(map_l2(a, b), torch.tensor([0.5, 0.0]))  # sqrt(1) / sqrt(4)
    full = torch.ones(1, 1, 5, 7)
    assert map_l1(full, torch.zeros_like(full)).item() == pytest.approx(1.0)
    assert map_l2(full, torch.zeros_like(full)).item() == pytest.approx(1.0)


def test_distances_clamp_to_unit_range_and_accept_three_dimensional_maps():
    a = torch.tensor([[[2.0, -1.0]]])  # (B, H, W), clamped to [1, 0]
    b = torch.tensor([[[1.0, 0.0]]])
    assert map_l1(a, b).item() == 0.0


def test_minmax_normalisation_makes_scaled_maps_equal():
    a = maps([[0.0, 1.0], [2.0, 3.0]])
    assert map_l1(a, a * 0.1 + 0.5, normalize="minmax").item() == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(ValueError, match="normalize"):
        map_l1(a, a, normalize="zscore")


def test_second_map_is_resized_to_the_first():
    a = torch.full((2, 1, 8, 8), 0.5)
    b = torch.full((2, 1, 2, 2), 0.25)
    torch.testing.assert_close(map_l1(a, b), torch.tensor([0.25, 0.25]))


def test_binarize_top_keeps_the_top_fraction_with_ties_and_never_zeros():
    m = maps(
        [[0.1, 0.4], [0.3, 0.2]], [[0.5, 0.5], [0.5, 0.0]], [[0.7, 0.7], [0.7, 0.7]], [[0.0, 0.0], [0.0, 0.0]]
    )
    on = binarize_top(m, 0.5)
    expected = torch.tensor(
        [
            [[False, True], [True, False]],  # the two largest
            [[True, True], [True, False]],  # ties at the threshold are kept; zero is off
            [[True, True], [True, True]],  # a constant non-zero map is all on
            [[False, False], [False, False]],  # a zero map is all off
        ]
    )[:, None]
    assert torch.equal(on, expected)
    assert binarize_top(m[:1], 0.25).sum() == 1
    assert torch.equal(
        binarize_top(m[:1], torch.tensor([0.75])).flatten(), torch.tensor([False, True, True, True])
    )


def test_map_iou_on_hand_computed_maps():
    a = maps([[0.9, 0.8, 0.0, 0.0]])  # top half: pixels 0, 1
    b = maps([[0.0, 0.7, 0.6, 0.0]])  # top half: pixels 1, 2
    assert map_iou(a, b, top_fraction=0.5).item() == pytest.approx(1 / 3)
    assert map_iou(a, a, top_fraction=0.5).item() == 1.0
    zero = torch.zeros_like(a)
    assert map_iou(zero, zero).item() == 1.0  # empty union
    assert map_iou(a, zero, top_fraction=0.5).item() == 0.0


def test_map_iou_compares_maps_of_different_scales_by_their_own_quantiles():
    a = maps([[0.9, 0.8, 0.1, 0.0]])
    assert map_iou(a, a * 0.01, top_fraction=0.5).item() == 1.0


def test_localization_iou_and_energy_by_hand():
    m = maps([[0.8, 0.6, 0.4, 0.2]], [[0.0, 0.0, 0.0, 0.0]])
    gt = maps([[1.0, 0.0, 1.0, 0.0]], [[0.0, 1.0, 0.0, 0.0]])
    iou, energy = localization(m, gt)
    # image 0: gt area 2 -> the map keeps pixels 0, 1; IoU = 1 / 3; energy = (0.8 + 0.4) / 2.0
    # image 1: an all-zero map keeps nothing (IoU 0) and has no energy
    torch.testing.assert_close(iou, torch.tensor([1 / 3, 0.0]))
    torch.testing.assert_close(energy, torch.tensor([0.6, 0.0]))
    iou_fixed, _ = localization(m[:1], gt[:1], top_fraction=0.75)
    assert iou_fixed.item() == pytest.approx(2 / 3)  # pixels 0, 1, 2 against 0, 2


def test_metrics_average_over_updates_and_masks():
    asr = AttackSuccessRate()
    asr.update(torch.tensor([True, False, True]))
    asr.update(torch.tensor([True]))
    assert asr.compute().item() == pytest.approx(0.75)

    mc = MeanConfidence()
    mc.update(torch.tensor([0.9, 0.2, 0.7]), torch.tensor([True, False, True]))
    assert mc.compute().item() == pytest.approx(0.8)  # successful samples only


@pytest.mark.parametrize("kind", ["l1", "l2", "iou"])
def test_two_updates_equal_one_update_on_the_concatenation(kind):
    g = torch.Generator().manual_seed(0)
    a, b = torch.rand(6, 1, 8, 8, generator=g), torch.rand(6, 1, 8, 8, generator=g)
    valid = torch.tensor([True, False, True, True, False, True])
    split, whole = MapDistance(kind), MapDistance(kind)
    split.update(a[:2], b[:2], valid[:2])
    split.update(a[2:], b[2:], valid[2:])
    whole.update(a, b, valid)
    fn = {"l1": map_l1, "l2": map_l2, "iou": map_iou}[kind]
    expected = fn(a, b)[valid].mean()
    torch.testing.assert_close(split.compute(), whole.compute())
    torch.testing.assert_close(whole.compute(), expected)


def test_localization_metric_accumulates_like_the_function():
    g = torch.Generator().manual_seed(1)
    m = torch.rand(5, 1, 8, 8, generator=g)
    gt = (torch.rand(5, 1, 8, 8, generator=g) > 0.6).float()
    metric = Localization()
    metric.update(m[:3], gt[:3])
    metric.update(m[3:], gt[3:])
    iou, energy = localization(m, gt)
    out = metric.compute()
    torch.testing.assert_close(out["iou"], iou.mean())
    torch.testing.assert_close(out["energy"], energy.mean())


def test_empty_metrics_compute_nan_and_reset_clears_state():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torchmetrics warns about compute() before update()
        for metric in (AttackSuccessRate(), MeanConfidence(), MapDistance("iou")):
            assert math.isnan(metric.compute().item())
        assert all(math.isnan(v.item()) for v in Localization().compute().values())
        mc = MeanConfidence()
        mc.update(torch.tensor([0.9]), torch.tensor([False]))  # nothing successful
        assert math.isnan(mc.compute().item())
    asr = AttackSuccessRate()
    asr.update(torch.tensor([True, True]))
    asr.reset()
    asr.update(torch.tensor([False]))
    assert asr.compute().item() == 0.0


def test_map_distance_rejects_bad_arguments():
    with pytest.raises(ValueError, match="kind"):
        MapDistance("l3")
    metric = MapDistance("l1")
    with pytest.raises(ValueError, match="valid_mask"):
        metric.update(torch.zeros(2, 1, 4, 4), torch.zeros(2, 1, 4, 4), torch.tensor([True]))
    with pytest.raises(ValueError, match="batch sizes"):
        map_l1(torch.zeros(2, 1, 4, 4), torch.zeros(3, 1, 4, 4))
