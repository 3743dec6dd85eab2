"""Any nn.Module classifier through wrap_classifier: torchvision ResNet-18 and one's own CNN under PGD, ADV²,
GRAD, CAM / Grad-CAM (against captum) and RTS; the timm path stays bit-identical to the code it replaced.

The torchvision ResNet-18 runs on 64 px images: at 32 px its layer4 (stride 32) is 1×1 and every CAM is constant.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
import torchvision
from captum.attr import LayerGradCam, Saliency
from torch import Tensor, nn

from aid.attacks import PGD, build_attack
from aid.attacks.strategies import CAMInterpretationLoss, encoder_is_classifier, map_mse
from aid.hooked import HookedEncoder, capture_output, probe_levels
from aid.interpreters import GradCAM, build_interpreter, minmax_normalize, smooth_relu
from aid.interpreters.cam import check_feature_map, upsample_normalize
from aid.interpreters.grad import class_score
from aid.interpreters.rts import RTSMasker
from aid.interpreters.rts_loss import RTSLoss
from aid.models import IMAGENET_MEAN, IMAGENET_STD, Classifier, NormalizedClassifier, WrappedClassifier, wrap_classifier
from tests.conftest import quadrant_images

SIZE = 64


def resnet18(num_classes: int = 4) -> WrappedClassifier:
    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None, num_classes=num_classes)
    return wrap_classifier(model, IMAGENET_MEAN, IMAGENET_STD, layer="layer4")


def train(clf: nn.Module, steps: int, size: int, lr: float = 3e-3) -> nn.Module:
    opt = torch.optim.Adam(clf.parameters(), lr=lr)
    clf.train()
    for i in range(steps):
        x, y = quadrant_images(16, seed=i, size=size)
        opt.zero_grad()
        F.cross_entropy(clf(x), y).backward()
        opt.step()
    opt.zero_grad(set_to_none=True)
    return clf.eval()


@pytest.fixture(scope="module")
def trained() -> WrappedClassifier:
    """The torchvision ResNet-18 (4 classes) trained for 15 Adam steps on 64 px quadrant images."""
    return train(resnet18(), 15, SIZE)


@pytest.fixture(scope="module")
def batch() -> tuple[Tensor, Tensor, Tensor]:
    """6 images, their labels and target classes (label + 1 mod 4)."""
    x, y = quadrant_images(6, seed=100, size=SIZE)
    return x, y, (y + 1) % 4


class SmallCNN(nn.Module):
    """One's own CNN: conv-relu-conv-relu-avgpool-linear, on unnormalised [0, 1] images."""

    def __init__(self, num_classes: int = 4) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.act1 = nn.ReLU()
        self.conv2 = nn.Conv2d(8, 16, 3, stride=2, padding=1)
        self.act2 = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(16, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        h = self.act2(self.conv2(self.act1(self.conv1(x))))
        return self.fc(self.pool(h).flatten(1))


@pytest.fixture(scope="module")
def small() -> WrappedClassifier:
    """:class:`SmallCNN` wrapped with ``layer="act2"`` and trained for 40 Adam steps on 32 px quadrant images."""
    torch.manual_seed(0)
    return train(wrap_classifier(SmallCNN(), layer="act2"), 40, 32, lr=1e-2)


def model_state(model: nn.Module) -> dict:
    """What attacks and interpreters must leave alone: modes, flags, hooks, module types, weights."""
    return {
        "training": [m.training for m in model.modules()],
        "requires_grad": [p.requires_grad for p in model.parameters()],
        "hooks": [len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks) for m in model.modules()],
        "types": [type(m) for m in model.modules()],
        "tensors": {k: v.clone() for k, v in model.state_dict().items()},
    }


def assert_same_state(before: dict, after: dict) -> None:
    for key in ("training", "requires_grad", "hooks", "types"):
        assert before[key] == after[key], key
    assert all(torch.equal(v, after["tensors"][k]) for k, v in before["tensors"].items())


def upsample_minmax(maps: Tensor, size: int) -> Tensor:
    return minmax_normalize(F.interpolate(maps, size=(size, size), mode="bilinear", align_corners=False))


# ----- the wrapper ---------------------------------------------------------------------------------------


def test_wrapped_resnet_reads_classes_channels_and_layer4_features_in_one_pass():
    clf = resnet18(num_classes=7).eval()
    x = torch.rand(2, 3, SIZE, SIZE)
    assert isinstance(clf, Classifier) and clf.num_classes == 7 and clf.in_chans == 3
    assert clf.head_name == "fc" and clf.linear_head is clf.backbone.fc
    feats, logits = clf.features_and_logits(x)
    assert feats.shape == (2, 512, 2, 2) and logits.shape == (2, 7)
    torch.testing.assert_close(logits, clf.backbone(clf.normalize(x)), atol=0, rtol=0)
    torch.testing.assert_close(feats, clf.features(x), atol=0, rtol=0)
    assert all(not m._forward_hooks for m in clf.modules())


def test_wrapper_without_mean_and_std_leaves_inputs_unchanged():
    clf = wrap_classifier(SmallCNN(num_classes=5), layer="act2")
    x = torch.rand(2, 3, 16, 16)
    assert clf.in_chans == 3 and clf.num_classes == 5
    assert torch.equal(clf.normalize(x), x)
    assert torch.equal(clf(x), clf.backbone(x))


def test_wrapper_rejects_bad_arguments_by_name(tiny_classifier):
    with pytest.raises(ValueError, match="layer 'layer9'"):
        wrap_classifier(torchvision.models.resnet18(num_classes=3), layer="layer9")
    with pytest.raises(ValueError, match="both mean and std"):
        wrap_classifier(SmallCNN(), mean=IMAGENET_MEAN)
    with pytest.raises(ValueError, match="head 'conv1'"):
        wrap_classifier(SmallCNN(), head="conv1")
    with pytest.raises(ValueError, match="num_classes"):
        wrap_classifier(nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten()))
    with pytest.raises(ValueError, match="already a Classifier"):
        wrap_classifier(tiny_classifier, layer="backbone.layer4")
    assert wrap_classifier(tiny_classifier) is tiny_classifier


def test_features_without_a_layer_and_cam_without_a_pooled_linear_end_raise_type_errors():
    with pytest.raises(TypeError, match="layer=<module name>"):
        wrap_classifier(SmallCNN()).features(torch.rand(1, 3, 16, 16))
    flat = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 64 * 64, 3))
    with pytest.raises(TypeError, match="feed the linear head '3'"):
        build_interpreter("cam", wrap_classifier(flat, layer="1"))
    max_pooled = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.AdaptiveMaxPool2d(1), nn.Flatten(), nn.Linear(4, 3))
    with pytest.raises(TypeError, match="global average pool"):
        build_interpreter("cam", wrap_classifier(max_pooled, layer="0"))
    no_linear = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    with pytest.raises(TypeError, match="nn.Linear"):
        build_interpreter("cam", wrap_classifier(no_linear, layer="0", num_classes=4))
    # Grad-CAM needs no particular end: only the named layer
    maps = build_interpreter("gradcam", wrap_classifier(flat, layer="1"))(torch.rand(2, 3, 64, 64), 0)
    assert maps.shape == (2, 1, 64, 64)


# ----- attacks on a torchvision ResNet-18 -------------------------------------------------------------------


def test_pgd_on_wrapped_resnet_reaches_the_target_and_restores_the_model(trained, batch):
    x, y, t = batch
    assert (trained(x).argmax(1) == y).float().mean() >= 0.8
    trained.train()  # a caller's training mode and trainable weights must come back as they were
    try:
        before = model_state(trained)
        result = PGD(trained, eps=0.1, alpha=2 / 255, steps=10)(x, t)
        assert_same_state(before, model_state(trained))
    finally:
        trained.eval()
    assert result.x_adv.shape == x.shape and result.success.shape == (6,)
    assert (result.x_adv - x).abs().max() <= 0.1 + 1e-6
    assert result.success.float().mean() >= 0.8


@pytest.mark.parametrize("family", ["cam", "grad"])
def test_adv2_on_wrapped_resnet_succeeds_with_result_shapes_and_leaves_no_hooks(trained, batch, family):
    x, _, t = batch
    interpreter = build_interpreter(family, trained)
    before = model_state(trained)
    result = build_attack("adv2", trained, interpreter=interpreter, eps=0.1, alpha=2 / 255, steps=6, warm_steps=6)(
        x, t
    )
    assert_same_state(before, model_state(trained))
    assert all(not m._forward_hooks for m in trained.modules())
    assert result.x_adv.shape == x.shape and result.maps.shape == (6, 1, SIZE, SIZE)
    assert result.success.dtype == torch.bool and result.success.shape == (6,)
    assert result.confidence.shape == (6,) and result.iterations.shape == (6,)
    assert (result.x_adv - x).abs().max() <= 0.1 + 1e-6
    assert result.success.float().mean() >= 0.8


def test_cam_loss_takes_the_logits_from_the_wrapped_models_one_pass(trained, batch):
    x, _, t = batch
    cam = build_interpreter("cam", trained)
    target_map = cam(x, t)
    logits, l_int, _ = CAMInterpretationLoss(cam).logits_and_losses(x, t, target_map, trained)
    torch.testing.assert_close(logits, trained(x), atol=0, rtol=0)
    torch.testing.assert_close(l_int, map_mse(cam.attribute(x, t, create_graph=True), target_map))


# ----- interpreters against captum --------------------------------------------------------------------------


@pytest.mark.parametrize("layer", [None, "layer3", "backbone.layer2.1"])
def test_gradcam_of_wrapped_resnet_equals_captum_layergradcam(trained, batch, layer):
    x, _, t = batch
    ours = build_interpreter("gradcam", trained, layer=layer)(x, t)
    name = "layer4" if layer is None else layer.removeprefix("backbone.")
    ref = LayerGradCam(trained, trained.backbone.get_submodule(name)).attribute(x, target=t, relu_attributions=True)
    torch.testing.assert_close(ours, upsample_minmax(ref.detach(), SIZE), atol=1e-5, rtol=0)


def test_cam_of_wrapped_resnet_is_the_class_weighted_layer4_map_and_equals_gradcam(trained, batch):
    x, _, t = batch
    body = nn.Sequential(*list(trained.backbone.children())[:-2])  # conv1 ... layer4, without avgpool and fc
    with torch.no_grad():
        feats = body(trained.normalize(x))
        manual = torch.einsum("bd,bdhw->bhw", trained.backbone.fc.weight[t], feats)[:, None]
    cam = build_interpreter("cam", trained)(x, t)
    torch.testing.assert_close(cam, upsample_minmax(manual, SIZE), atol=1e-5, rtol=0)
    gradcam = build_interpreter("gradcam", trained, relu=False)(x, t)
    torch.testing.assert_close(cam, gradcam, atol=1e-5, rtol=0)


def test_smooth_relu_swaps_the_reused_relus_of_torchvision_and_gives_map_gradients(trained, batch):
    x, _, t = batch
    types = [type(m) for m in trained.modules()]
    with smooth_relu(trained):
        assert not any(isinstance(m, nn.ReLU) for m in trained.modules())
    assert [type(m) for m in trained.modules()] == types
    xi = x[:2].clone().requires_grad_(True)
    maps = build_interpreter("grad", trained, smooth=True).attribute(xi, t[:2], create_graph=True)
    (g,) = torch.autograd.grad(maps.pow(2).sum(), xi)
    assert torch.isfinite(g).all() and g.abs().sum() > 0
    assert [type(m) for m in trained.modules()] == types


# ----- RTS on a torchvision ResNet-18 --------------------------------------------------------------------------


def test_rts_masker_of_wrapped_resnet_reads_every_stride_up_to_layer4(trained, batch):
    x, _, t = batch
    masker = RTSMasker.from_classifier(trained)
    assert isinstance(masker.encoder, HookedEncoder) and masker.encoder.model is not trained.backbone
    info = [(f["module"], f["num_chs"], f["reduction"]) for f in masker.encoder.feature_info]
    assert info == [("relu", 64, 2), ("layer1", 64, 4), ("layer2", 128, 8), ("layer3", 256, 16), ("layer4", 512, 32)]
    with torch.no_grad():
        mask, logits = masker.eval()(x, t)
    assert mask.shape == (6, 1, SIZE, SIZE) and mask.min() >= 0 and mask.max() <= 1
    torch.testing.assert_close(logits, trained(x), atol=0, rtol=0)
    assert encoder_is_classifier(masker, trained)  # ADV² against RTS then shares one pass
    assert all(not m._forward_hooks for m in masker.modules())


def test_rts_masker_trains_on_wrapped_resnet_and_leaves_the_classifier_alone(trained):
    torch.manual_seed(0)
    trained.requires_grad_(False)
    try:
        masker = RTSMasker.from_classifier(trained).train()
        params = [p for p in masker.parameters() if p.requires_grad]
        start = [p.detach().clone() for p in params]
        weights = {k: v.clone() for k, v in trained.state_dict().items()}
        criterion, opt = RTSLoss(), torch.optim.Adam(params, lr=3e-3)
        x, t = quadrant_images(4, seed=7, size=SIZE)
        for _ in range(3):
            out = criterion(trained, x, t, masker(x, t)[0], torch.Generator().manual_seed(0))
            assert torch.isfinite(out["loss"])
            opt.zero_grad()
            out["loss"].backward()
            opt.step()
    finally:
        trained.requires_grad_(True)
    changed = [not torch.equal(a, p) for a, p in zip(start, params, strict=True)]
    assert sum(changed) > len(params) // 2 and not torch.equal(start[-1], params[-1])
    assert all(torch.equal(v, trained.state_dict()[k]) for k, v in weights.items())
    assert all(p.grad is None for p in trained.parameters())
    assert all(p.grad is None for p in masker.encoder.parameters())


def test_probe_levels_keeps_the_call_of_a_module_reused_within_a_block():
    model = torchvision.models.resnet18(num_classes=3)
    levels = probe_levels(model, "layer1.0.relu", 3, 64)
    # BasicBlock runs its ReLU twice; the deepest output of the block at stride 4 is its second call
    assert (levels[-1].module, levels[-1].call, levels[-1].reduction) == ("layer1.0.relu", 1, 4)
    encoder = HookedEncoder(model, "layer1.0.relu", 3, 3)
    z = torch.rand(2, 3, 32, 32)
    logits, feats = encoder.eval().forward_intermediates(z)
    with capture_output(model.layer1[0]) as block:
        ref = model(z)
    torch.testing.assert_close(logits, ref, atol=0, rtol=0)
    torch.testing.assert_close(feats[-1], block[-1], atol=0, rtol=0)


# ----- one's own CNN -----------------------------------------------------------------------------------------


def test_own_cnn_gradcam_equals_captum_and_grad_equals_saliency(small):
    x, y = quadrant_images(4, seed=3, size=32)
    gradcam = build_interpreter("gradcam", small)(x, y)
    ref = LayerGradCam(small, small.backbone.act2).attribute(x, target=y, relu_attributions=True)
    torch.testing.assert_close(gradcam, upsample_minmax(ref.detach(), 32), atol=1e-5, rtol=0)
    grad = build_interpreter("grad", small)(x, y)
    sal = Saliency(small).attribute(x.clone().requires_grad_(), target=y, abs=True).amax(dim=1, keepdim=True)
    torch.testing.assert_close(grad, minmax_normalize(sal), atol=1e-6, rtol=0)
    smooth = build_interpreter("grad", small, smooth=True)
    xi = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(smooth.attribute(xi, y, create_graph=True).pow(2).sum(), xi)
    assert torch.isfinite(g).all() and g.abs().sum() > 0


def test_pgd_on_own_cnn_reaches_the_target_and_restores_it(small):
    x, _ = quadrant_images(8, seed=5, size=32)
    with torch.no_grad():
        t = (small(x).argmax(1) + 1) % 4  # never the class it predicts now (GAP blurs the quadrants for it)
    before = model_state(small)
    result = PGD(small, eps=0.15, alpha=0.02, steps=15)(x, t)
    assert_same_state(before, model_state(small))
    assert result.success.float().mean() >= 0.75


# ----- the timm path is unchanged ---------------------------------------------------------------------------


class OldGradCAM(GradCAM):
    """GradCAM's activations as computed before features_and_logits / capture_output existed."""

    def activations_and_scores(self, x: Tensor, target: Tensor, cut: bool = False) -> tuple[Tensor, Tensor]:
        if self.module is None:
            if cut:
                with torch.no_grad():
                    feats = self.classifier.features(x)
                feats = feats.detach().requires_grad_(True)
            else:
                feats = self.classifier.features(x)
            check_feature_map(feats, "Grad-CAM")
            return feats, class_score(self.classifier.head(feats), target, self.score)
        captured: list[Tensor] = []

        def hook(module, inputs, output):
            if cut:
                output = output.detach().requires_grad_(True)
            captured.append(output)
            return output.clone()

        handle = self.module.register_forward_hook(hook)
        try:
            scores = class_score(self.classifier(x), target, self.score)
        finally:
            handle.remove()
        return captured[-1], scores


def old_cam_logits_and_losses(self, x_adv, target, target_map, classifier=None):
    """CAMInterpretationLoss.logits_and_losses before features_and_logits existed (features, then head)."""
    clf = self.interpreter.classifier
    feats = clf.features(x_adv)
    maps = self.interpreter.from_features(feats, target, x_adv.shape[-2:])
    return clf.head(feats), map_mse(maps, target_map, self.pool), self.extra_loss(x_adv, target)


def test_timm_classifier_gives_bit_identical_cam_gradcam_adv2_and_rts(model, monkeypatch):
    assert isinstance(model, NormalizedClassifier)
    x, y = quadrant_images(6, seed=21, size=32)
    t = (y + 1) % 4
    feats, logits = model.features_and_logits(x)
    assert torch.equal(feats, model.features(x)) and torch.equal(logits, model.head(model.features(x)))
    with torch.no_grad():
        w = model.linear_head.weight[t]
        old_cam = upsample_normalize(torch.einsum("bd,bdhw->bhw", w, model.features(x))[:, None], (32, 32))
    assert torch.equal(build_interpreter("cam", model)(x, t), old_cam)
    for layer in (None, "backbone.layer3"):
        for create_graph in (False, True):
            new = GradCAM(model, layer=layer).attribute(x, t, create_graph=create_graph).detach()
            old = OldGradCAM(model, layer=layer).attribute(x, t, create_graph=create_graph).detach()
            assert torch.equal(new, old), (layer, create_graph)

    def adv2() -> tuple[Tensor, ...]:
        cam = build_interpreter("cam", model)
        r = build_attack("adv2", model, interpreter=cam, eps=0.05, alpha=2 / 255, steps=4, warm_steps=2)(x, t)
        return r.x_adv, r.success, r.confidence, r.iterations, r.maps

    new = adv2()
    monkeypatch.setattr(CAMInterpretationLoss, "logits_and_losses", old_cam_logits_and_losses)
    old = adv2()
    assert all(torch.equal(a, b) for a, b in zip(new, old, strict=True))

    torch.manual_seed(3)
    masker = RTSMasker.from_classifier(model).eval()
    torch.manual_seed(3)
    old_masker = RTSMasker(
        copy.deepcopy(model.backbone), mean=model.mean.flatten().tolist(), std=model.std.flatten().tolist(),
        num_classes=model.num_classes,
    ).eval()
    with torch.no_grad():
        assert all(torch.equal(a, b) for a, b in zip(masker(x, t), old_masker(x, t), strict=True))


def test_rts_and_aid_modules_train_a_few_steps_on_a_wrapped_torchvision_model(trained):
    import pytorch_lightning as pl

    from aid.modules.aid import AIDModule
    from aid.modules.rts import RTSModule
    from datamodules import ShapesDataModule

    data = ShapesDataModule(image_size=64, num_classes=4, train_size=16, val_size=8, test_size=8, batch_size=8)
    trained = copy.deepcopy(trained)  # the modules freeze the classifier they are given
    before = {k: v.clone() for k, v in trained.state_dict().items()}
    for module in (RTSModule(classifier=trained), AIDModule(classifier=trained, attack_fraction=0.5,
                                                            attack_kwargs={"eps": 0.05, "warm_steps": 1, "steps": 1})):
        assert module.hparams.num_classes == 4 and "classifier" not in module.hparams
        masker = {k: v.clone() for k, v in module.masker.state_dict().items()}
        pl.Trainer(max_steps=2, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                   enable_model_summary=False, accelerator="cpu", limit_val_batches=0).fit(module, datamodule=data)
        assert any(not torch.equal(v, module.masker.state_dict()[k]) for k, v in masker.items())
    assert all(torch.equal(v, trained.state_dict()[k]) for k, v in before.items())  # the classifier never trains
