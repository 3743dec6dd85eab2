"""Losses stay finite under CPU bf16 autocast: ADV² per family, the RTS loss and the AID step."""

import pytest
import torch

from aid.attacks import build_attack
from aid.interpreters import build_interpreter
from aid.interpreters.rts import RTSInterpreter, RTSMasker
from aid.interpreters.rts_loss import RTSLoss
from aid.models import build_classifier


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return build_classifier("resnet10t", num_classes=4, output_stride=8, channels=[8, 16, 32, 64]).eval()


@pytest.mark.parametrize("family", ["grad", "cam", "rts"])
def test_adv2_loss_and_result_are_finite_under_bf16_autocast(model, family):
    interp = build_interpreter(family, model)
    attack = build_attack("adv2", model, interpreter=interp, steps=2, warm_steps=1)
    x = torch.rand(4, 3, 32, 32)
    target = torch.tensor([1, 2, 3, 0])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss, l_int, logits = attack.losses(x.clone().requires_grad_(True), target, interp(x, target), 0)
        result = attack(x, target)
    assert torch.isfinite(loss).all() and torch.isfinite(l_int).all() and torch.isfinite(logits).all()
    assert torch.isfinite(result.x_adv).all() and torch.isfinite(result.confidence).all()
    assert (result.x_adv - x).abs().max() <= attack.eps + 1e-6


def test_rts_loss_is_finite_and_differentiable_under_bf16_autocast(model):
    masker = RTSMasker.from_classifier(model)
    x, y = torch.rand(4, 3, 32, 32), torch.tensor([0, 1, 2, 3])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mask, _ = masker(x, y, upsample=False)
        terms = RTSLoss()(model, x, y, mask, generator=torch.Generator().manual_seed(0))
    assert all(torch.isfinite(v).all() for v in terms.values())
    grads = torch.autograd.grad(terms["loss"], [p for p in masker.decoder.parameters()])
    assert all(torch.isfinite(g).all() for g in grads)


def test_constant_maps_normalise_without_dividing_by_zero():
    from aid.interpreters import minmax_normalize
    from aid.metrics import map_iou, map_l1

    flat = torch.full((2, 1, 8, 8), 0.3)
    out = minmax_normalize(flat)
    assert torch.isfinite(out).all() and (out == 0).all()
    assert torch.isfinite(map_l1(flat, out)).all() and torch.isfinite(map_iou(flat, out)).all()


def test_rts_interpreter_maps_from_bf16_are_float32_and_in_range(model):
    interp = RTSInterpreter(model)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        maps = interp(torch.rand(2, 3, 32, 32), 1)
    assert maps.dtype == torch.float32 and torch.isfinite(maps).all() and maps.min() >= 0 and maps.max() <= 1
