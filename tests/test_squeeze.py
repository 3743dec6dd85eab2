"""Squeezers (bit depth, median, non-local means) and the feature-squeezing detector."""

from __future__ import annotations

import pytest
import torch

from aid.defenses import FeatureSqueezingDetector, build_squeezer

ALL = ["bit_depth_3", "median_3x3", "median_2x2", "nlm_11_3_4"]


def smooth_images(n: int, size: int = 32, seed: int = 0) -> torch.Tensor:
    """Piecewise-smooth colour images (gradients and a square) in [0, 1]."""
    g = torch.Generator().manual_seed(seed)
    ramp = torch.linspace(0, 1, size)
    img = 0.2 + 0.6 * ramp.view(1, 1, 1, size) * torch.rand(n, 3, 1, 1, generator=g)
    img = img.expand(n, 3, size, size).clone()
    img[:, :, 8:20, 10:24] = torch.rand(n, 3, 1, 1, generator=g) * 0.8 + 0.1
    return img.clamp(0, 1)


@pytest.mark.parametrize("name", ALL)
def test_squeezers_keep_shape_dtype_and_unit_range(name):
    x = torch.rand(3, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    out = build_squeezer(name)(x)
    assert out.shape == x.shape and out.dtype == x.dtype
    assert out.min() >= 0 and out.max() <= 1


@pytest.mark.parametrize("bits", [1, 2, 3, 5])
def test_bit_depth_quantises_to_two_to_the_bits_levels(bits):
    x = torch.linspace(0, 1, 4096).view(1, 1, 64, 64).expand(1, 3, 64, 64)
    levels = torch.unique(build_squeezer("bit_depth", bits=bits)(x))
    assert levels.numel() == 2**bits
    assert torch.allclose(levels, torch.linspace(0, 1, 2**bits))


def test_bit_depth_bpda_is_straight_through():
    x = torch.rand(2, 3, 8, 8, requires_grad=True)
    sq = build_squeezer("bit_depth_2")
    out = sq.bpda(x)
    assert torch.equal(out, sq(x))
    (g,) = torch.autograd.grad(out.sum(), x)
    assert torch.equal(g, torch.ones_like(x))


@pytest.mark.parametrize("k", [2, 3])
def test_median_of_a_constant_image_is_itself(k):
    x = torch.full((2, 3, 16, 16), 0.37)
    assert torch.equal(build_squeezer("median", kernel_size=k)(x), x)


# scipy.ndimage.median_filter(IMAGE, size=k, mode="reflect") (the feature-squeezing code's call), borders included.
IMAGE = [[0.55, 0.72, 0.6, 0.54, 0.42], [0.65, 0.44, 0.89, 0.96, 0.38], [0.79, 0.53, 0.57, 0.93, 0.07],
         [0.09, 0.02, 0.83, 0.78, 0.87]]
SCIPY = {
    2: [[0.55, 0.72, 0.72, 0.6, 0.54], [0.65, 0.65, 0.72, 0.89, 0.54], [0.79, 0.65, 0.57, 0.93, 0.93],
        [0.79, 0.53, 0.57, 0.83, 0.87]],
    3: [[0.55, 0.6, 0.6, 0.54, 0.42], [0.65, 0.6, 0.6, 0.57, 0.42], [0.53, 0.57, 0.78, 0.83, 0.78],
        [0.09, 0.53, 0.78, 0.83, 0.87]],
}


@pytest.mark.parametrize("k", [2, 3])
def test_median_gives_scipy_median_filter_values_borders_included(k):
    x = torch.tensor(IMAGE, dtype=torch.float64).expand(2, 3, 4, 5)
    out = build_squeezer("median", kernel_size=k)(x)
    assert torch.equal(out, torch.tensor(SCIPY[k], dtype=torch.float64).expand(2, 3, 4, 5))


def test_median_removes_salt_and_pepper_dots():
    x = torch.full((1, 3, 16, 16), 0.5)
    noisy = x.clone()
    noisy[:, :, 4, 4] = 1.0
    noisy[:, :, 10, 7] = 0.0
    assert torch.equal(build_squeezer("median_3x3")(noisy), x)


def test_median_is_differentiable_and_routes_gradient_to_inputs():
    x = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(2), requires_grad=True)
    sq = build_squeezer("median_3x3")
    assert sq.differentiable
    (g,) = torch.autograd.grad(sq(x).sum(), x)
    # each output pixel selects exactly one input value, so the gradients count selections
    assert g.sum().item() == pytest.approx(x.numel())
    assert (g >= 0).all() and g.abs().sum() > 0


def test_nlm_removes_gaussian_noise():
    clean = smooth_images(4)
    noise = torch.randn(clean.shape, generator=torch.Generator().manual_seed(3)) * 0.03
    noisy = (clean + noise).clamp(0, 1)
    denoised = build_squeezer("nlm", search_window=11, patch_size=3, strength=8)(noisy)
    assert ((denoised - clean) ** 2).mean() < 0.7 * ((noisy - clean) ** 2).mean()


def test_nlm_bpda_forward_is_nlm_and_backward_follows_the_surrogate():
    x = smooth_images(2, size=16).requires_grad_(True)
    for surrogate in ("identity", "blur"):
        sq = build_squeezer("nlm", surrogate=surrogate)
        out = sq.bpda(x)
        assert torch.equal(out.detach(), sq(x))
        (g,) = torch.autograd.grad(out.sum(), x)
        # both surrogates preserve the total: identity everywhere, the normalised blur away from borders
        assert g.sum().item() == pytest.approx(x.numel(), rel=1e-4)
        assert torch.allclose(g[..., 2:-2, 2:-2], torch.ones_like(g[..., 2:-2, 2:-2]), atol=1e-5)


def test_nlm_grayscale_images_are_supported():
    x = smooth_images(2, size=16)[:, :1]
    assert build_squeezer("nlm_11_3_4")(x).shape == x.shape


def test_full_and_registry_names_agree_and_unknown_names_fail():
    assert build_squeezer("median_2x2").name == build_squeezer("median", kernel_size=2).name == "median_2x2"
    assert build_squeezer("nlm_13_3_2").name == "nlm_13_3_2"
    with pytest.raises(KeyError, match="allowed"):
        build_squeezer("jpeg")
    with pytest.raises(ValueError):
        build_squeezer("bit_depth", bits=9)


def test_detector_threshold_gives_about_fpr_on_its_benign_set(tiny_classifier):
    x = torch.rand(100, 3, 16, 16, generator=torch.Generator().manual_seed(4))
    det = FeatureSqueezingDetector(tiny_classifier, ["bit_depth_3", "median_2x2"], fpr=0.1).fit(x)
    rate = det.detection_rate(x)
    assert 0.05 <= rate <= 0.1
    for name in det.names:
        assert 0.05 <= det.detection_rate(x, squeezer=name) <= 0.1
    assert isinstance(det.thresholds["joint"], torch.Tensor)


def test_detector_scores_are_non_negative_and_joint_is_the_max(tiny_classifier):
    x = torch.rand(6, 3, 32, 32, generator=torch.Generator().manual_seed(5))
    det = FeatureSqueezingDetector(tiny_classifier, ["bit_depth_2", "median_3x3", "nlm_11_3_4"])
    s = det.scores(x)
    assert set(s) == {"bit_depth_2", "median_3x3", "nlm_11_3_4", "joint"}
    stacked = torch.stack([s[n] for n in det.names])
    assert (stacked >= 0).all() and (stacked <= 2 + 1e-6).all()
    assert torch.equal(s["joint"], stacked.amax(0))
    assert torch.equal(det.score(x), s["joint"])


def test_detector_flags_heavily_perturbed_inputs_more_than_benign(tiny_classifier):
    torch.manual_seed(0)
    benign = smooth_images(64, seed=6)
    noisy = (benign + 0.3 * torch.randn(benign.shape, generator=torch.Generator().manual_seed(7))).clamp(0, 1)
    det = FeatureSqueezingDetector(tiny_classifier, ["median_3x3"], fpr=0.05).fit(benign)
    assert det.score(noisy).mean() > det.score(benign).mean()
    assert det.detection_rate(noisy) > det.detection_rate(benign)


def test_detector_leaves_the_classifier_untouched(tiny_classifier):
    tiny_classifier.train()
    flags = [p.requires_grad for p in tiny_classifier.parameters()]
    det = FeatureSqueezingDetector(tiny_classifier, ["median_3x3"])
    det.fit(torch.rand(4, 3, 32, 32))
    assert tiny_classifier.training and flags == [p.requires_grad for p in tiny_classifier.parameters()]


def test_detector_refuses_to_detect_before_fit(tiny_classifier):
    det = FeatureSqueezingDetector(tiny_classifier, ["median_3x3"])
    with pytest.raises(RuntimeError, match="fit"):
        det.detect(torch.rand(2, 3, 32, 32))
