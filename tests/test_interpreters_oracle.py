"""Our GRAD, CAM / Grad-CAM, IG and ensemble maps against captum and against their definitions."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from captum.attr import IntegratedGradients as CaptumIG
from captum.attr import LayerGradCam, Saliency

from aid.interpreters import INTERPRETERS, build_interpreter, minmax_normalize
from aid.models import build_classifier


@pytest.fixture
def batch():
    g = torch.Generator().manual_seed(1)
    return torch.rand(4, 3, 32, 32, generator=g), torch.tensor([0, 1, 2, 3])


def _upsample_minmax(maps, size=(32, 32)):
    return minmax_normalize(F.interpolate(maps, size=size, mode="bilinear", align_corners=False))


def test_importing_the_package_registers_every_interpreter_family():
    assert {"grad", "cam", "gradcam", "ig", "ensemble", "mask", "rts"} <= set(INTERPRETERS.names())


@pytest.mark.parametrize("score", ["logit", "prob"])
def test_grad_equals_captum_saliency_reduced_by_channel_max(tiny_classifier, batch, score):
    x, t = batch
    ours = build_interpreter("grad", tiny_classifier, score=score)(x, t)
    forward = tiny_classifier if score == "logit" else (lambda z: tiny_classifier(z).softmax(1))
    ref = (
        Saliency(forward).attribute(x.clone().requires_grad_(), target=t, abs=True).amax(dim=1, keepdim=True)
    )
    assert ours.shape == (4, 1, 32, 32)
    torch.testing.assert_close(ours, minmax_normalize(ref), atol=1e-6, rtol=0)


@pytest.mark.parametrize("layer", ["backbone.layer4", "backbone.layer3", "backbone.layer2.0.act1"])
def test_gradcam_equals_captum_layergradcam_upsampled_and_normalised(tiny_classifier, batch, layer):
    x, t = batch
    ours = build_interpreter("gradcam", tiny_classifier, layer=layer)(x, t)
    module = dict(tiny_classifier.named_modules())[layer]
    ref = LayerGradCam(tiny_classifier, module).attribute(x, target=t, relu_attributions=True)
    torch.testing.assert_close(ours, _upsample_minmax(ref.detach()), atol=1e-5, rtol=0)


def test_gradcam_default_layer_is_the_feature_map(tiny_classifier, batch):
    # For timm's ResNet the output of forward_features is the output of layer4.
    x, t = batch
    default = build_interpreter("gradcam", tiny_classifier)(x, t)
    named = build_interpreter("gradcam", tiny_classifier, layer="backbone.layer4")(x, t)
    torch.testing.assert_close(default, named, atol=1e-5, rtol=0)


@pytest.mark.parametrize("relu", [False, True])
def test_cam_and_gradcam_agree_on_a_global_average_pool_linear_head(tiny_classifier, batch, relu):
    x, t = batch
    cam = build_interpreter("cam", tiny_classifier, relu=relu)(x, t)
    gradcam = build_interpreter("gradcam", tiny_classifier, relu=relu)(x, t)
    torch.testing.assert_close(cam, gradcam, atol=1e-5, rtol=0)


def test_cam_is_the_class_weighted_sum_of_feature_maps(tiny_classifier, batch):
    x, t = batch
    with torch.no_grad():
        feats = tiny_classifier.features(x)
        w = tiny_classifier.linear_head.weight
        manual = torch.stack([(w[c][:, None, None] * feats[i]).sum(0) for i, c in enumerate(t.tolist())])
    ours = build_interpreter("cam", tiny_classifier)(x, t)
    torch.testing.assert_close(ours, _upsample_minmax(manual[:, None]), atol=1e-5, rtol=0)


def test_cam_rejects_a_head_without_average_pooling():
    model = build_classifier("resnet10t", num_classes=3, channels=[8, 16, 32, 64], global_pool="max")
    with pytest.raises(ValueError, match="average pooling"):
        build_interpreter("cam", model)


@pytest.mark.parametrize(
    "name, kwargs, match",
    [
        ("gradcam", {"layer": "backbone.nope"}, "not a module"),
        ("gradcam", {"score": "softmax"}, "score"),
        ("grad", {"score": "loss"}, "score"),
        ("grad", {"surrogate": "sigmoid"}, "surrogate"),
        ("ig", {"baseline": "noise"}, "baseline"),
        ("ig", {"steps": 0}, "steps"),
    ],
)
def test_bad_interpreter_arguments_are_rejected_by_name(tiny_classifier, name, kwargs, match):
    with pytest.raises(ValueError, match=match):
        build_interpreter(name, tiny_classifier, **kwargs)


def test_ig_default_pass_holds_the_batch_and_at_least_half_a_million_pixels_on_cpu_or_4m_elsewhere():
    from aid.interpreters.integrated_gradients import default_pass

    assert default_pass(torch.zeros(8, 3, 32, 32)) == 512
    assert default_pass(torch.zeros(8, 3, 64, 64)) == 128
    assert default_pass(torch.zeros(600, 3, 32, 32)) == 600
    assert default_pass(torch.zeros(2, 3, 224, 224)) == 2**19 // 224**2
    assert default_pass(torch.zeros(1, 3, 224, 224, device="meta")) == 2**22 // 224**2
    assert default_pass(torch.zeros(128, 3, 224, 224, device="meta")) == 128
    assert default_pass(torch.zeros(32, 3, 32, 32, device="meta")) == 4096


@pytest.mark.parametrize("baseline", ["zeros", "blur"])
def test_ig_does_not_depend_on_how_many_path_images_a_pass_holds(tiny_classifier, batch, baseline):
    x, t = batch
    rows = x.shape[0] * 7  # steps = 6: seven path points per image
    results = []
    for chunk in (None, 5, rows):  # one path point of the batch per pass (default), uneven passes, all at once
        ig = build_interpreter("ig", tiny_classifier, steps=6, baseline=baseline, internal_batch_size=chunk)
        xg = x.clone().requires_grad_(True)
        a = ig.attributions(xg, t, create_graph=True)
        (dx,) = torch.autograd.grad(a.square().sum(), xg)
        results.append((a.detach(), dx))
    for a, dx in results[1:]:
        torch.testing.assert_close(a, results[0][0], atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(dx, results[0][1], atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("baseline", ["zeros", 0.5, "blur"])
def test_ig_equals_captum_trapezoid_rescaled(tiny_classifier, batch, baseline):
    x, t = batch
    ig = build_interpreter("ig", tiny_classifier, steps=8, baseline=baseline, internal_batch_size=10)
    ours = ig.attributions(x, t)
    ref = CaptumIG(tiny_classifier).attribute(
        x, baselines=ig.make_baseline(x), target=t, n_steps=9, method="riemann_trapezoid"
    )
    # captum's trapezoid puts n points on [0, 1] but weights them as if spaced 1/n, so its weights
    # sum to (n - 1) / n; ours are the trapezoid rule proper (weights sum to 1).
    torch.testing.assert_close(ours, ref * 9 / 8, atol=1e-6, rtol=1e-4)
    maps = ig(x, t)
    torch.testing.assert_close(maps, minmax_normalize(ours.abs().sum(1, keepdim=True)), atol=1e-6, rtol=0)


@pytest.mark.parametrize("baseline", ["zeros", 0.5])
def test_ig_attributions_are_complete_within_one_percent(baseline):
    # A smooth (GELU, no max-pool) variant in float64, so the only error is the quadrature's, O(1/n²);
    # ReLU and max-pool kinks along the path leave O(1/n) errors (the captum oracle above covers them).
    torch.manual_seed(0)
    model = build_classifier(
        "resnet10t",
        num_classes=4,
        output_stride=8,
        channels=[8, 16, 32, 64],
        act_layer="gelu",
        replace_stem_pool=True,
    )
    model = model.double().eval()
    x = torch.rand(2, 3, 32, 32, dtype=torch.float64)
    t = torch.tensor([0, 1])
    ig = build_interpreter("ig", model, steps=64, baseline=baseline)
    a = ig.attributions(x, t)
    with torch.no_grad():
        base = ig.make_baseline(x)
        delta = (model(x) - model(base)).gather(1, t[:, None]).squeeze(1)
    assert a.shape == x.shape
    assert ((a.sum(dim=(1, 2, 3)) - delta).abs() <= 0.01 * delta.abs()).all()


def test_ensemble_is_the_renormalised_weighted_mean_of_its_members(tiny_classifier, batch):
    x, t = batch
    ens = build_interpreter("ensemble", tiny_classifier, members=["grad", "cam"], weights=[1.0, 3.0])
    grad = build_interpreter("grad", tiny_classifier)(x, t)
    cam = build_interpreter("cam", tiny_classifier)(x, t)
    torch.testing.assert_close(ens(x, t), minmax_normalize(0.25 * grad + 0.75 * cam), atol=1e-6, rtol=0)


def test_ensemble_accepts_instances_and_member_kwargs(tiny_classifier, batch):
    x, t = batch
    layer3 = build_interpreter("gradcam", tiny_classifier, layer="backbone.layer3")
    ens = build_interpreter(
        "ensemble", tiny_classifier, members=[layer3, "cam"], member_kwargs={"cam": {"relu": True}}
    )
    expected = minmax_normalize(layer3(x, t) + build_interpreter("cam", tiny_classifier, relu=True)(x, t))
    torch.testing.assert_close(ens(x, t), expected, atol=1e-6, rtol=0)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"members": []}, "at least one"),
        ({"weights": [1.0]}, "weights"),
        ({"weights": [-1.0, 2.0]}, "non-negative"),
        ({"member_kwargs": {"ig": {}}}, "not members"),
    ],
)
def test_ensemble_rejects_bad_configuration(tiny_classifier, kwargs, match):
    with pytest.raises(ValueError, match=match):
        build_interpreter("ensemble", tiny_classifier, **kwargs)
