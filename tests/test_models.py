import pytest
import torch

from aid.models import build_classifier, check_images


@pytest.mark.parametrize("name", ["resnet18", "resnet50", "densenet121", "densenet169"])
def test_factory_builds_each_named_architecture_with_normalisation_inside(name):
    model = build_classifier(name, num_classes=5).eval()
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        logits = model(x)
        feats = model.features(x)
        assert torch.allclose(model.head(feats), logits, atol=1e-5)
    assert logits.shape == (2, 5)
    assert feats.dim() == 4
    assert model.linear_head.out_features == 5
    # normalisation inside: the backbone sees (x - mean) / std
    assert torch.allclose(model.normalize(torch.ones(1, 3, 1, 1)).flatten(), ((1 - model.mean) / model.std).flatten())


def test_output_stride_gives_finer_feature_map_for_cam():
    coarse = build_classifier("resnet10t", num_classes=3, channels=[8, 16, 32, 64]).eval()
    fine = build_classifier("resnet10t", num_classes=3, output_stride=8, channels=[8, 16, 32, 64]).eval()
    x = torch.rand(1, 3, 32, 32)
    assert coarse.features(x).shape[-1] == 1
    assert fine.features(x).shape[-1] == 4


def test_unknown_architecture_is_rejected_with_a_clear_message():
    with pytest.raises(ValueError, match="unknown classifier"):
        build_classifier("no_such_net")


@pytest.mark.parametrize(
    "bad, match",
    [
        (torch.full((1, 3, 8, 8), float("nan")), "NaN"),
        (torch.full((1, 3, 8, 8), 2.0), r"\[0, 1\]"),
        (torch.zeros(3, 8, 8), "shape"),
        (torch.zeros(1, 1, 8, 8), "channels"),
        (torch.zeros(1, 3, 8, 8, dtype=torch.uint8), "float"),
    ],
)
def test_check_images_rejects_bad_input(bad, match):
    model = build_classifier("resnet10t", num_classes=3, channels=[8, 16, 32, 64])
    with pytest.raises(ValueError, match=match):
        check_images(bad, model)


def test_check_images_rejects_images_too_small_for_the_model():
    model = build_classifier("resnet10t", num_classes=3, channels=[8, 16, 32, 64])
    with pytest.raises(ValueError, match="at least"):
        check_images(torch.rand(1, 3, 4, 32), model)


def test_cam_family_on_a_vision_transformer_explains_what_it_needs():
    from aid.interpreters import build_interpreter

    vit = build_classifier("vit_tiny_patch16_224", num_classes=4, img_size=32, patch_size=8)
    with pytest.raises(ValueError, match="global average pooling"):
        build_interpreter("cam", vit)
    with pytest.raises(ValueError, match="convolutional feature map"):
        build_interpreter("gradcam", vit)(torch.rand(2, 3, 32, 32), torch.tensor([0, 1]))
