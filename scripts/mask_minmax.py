"""Can an attack that plays against MASK's alternative deletions make MASK show the benign map? A probe.

MASK's map of an adversarial input marks the cheapest deletion that removes the adversarial class t
(README, "ADV² evaluation": after PGD many small deletions do, and MASK keeps whichever is cheapest).
For MASK to show the benign map's region R, deleting R must remove t and every cheaper deletion
elsewhere must not. This probe attacks that min-max directly, with signed steps of 1/255 in the ε-ball
from a 30-step PGD start, on the loss

    −log p_t(x) − w_survive · log p_t(φ(x; keep_out)) + w_region · p_t^T(φ(x; 1 − R)),

where keep_out is the inner player: MASK's own objective (its settings of configs/eval_adv2.yaml:
class probability at temperature T, area and TV weights, Adam) optimised for ``--inner`` iterations
with the deletion forbidden on R, re-solved every ``--every`` steps (the worst deletion outside R).
With ``--select-every N`` it also keeps, per image, the iterate whose MASK map (the evaluated
150-iteration map) is nearest the benign map in L1, the attack's own objective, every N steps. R is
the benign map's pixels above ``--region-threshold``. It prints PGD's row (60 steps, as the config's)
and the probe's (attack success; on successful images IoU and L1 with the benign map), then how the
game ended: p_t with R deleted, with the inner player's last deletion and with MASK's own region
deleted, and where MASK's map lies (its share inside R, the share of R it covers):

    python scripts/mask_minmax.py runs/classifier/checkpoints/last.ckpt                      (2 min)
    python scripts/mask_minmax.py runs/classifier/checkpoints/last.ckpt --steps 300 --select-every 30
    python scripts/mask_minmax.py runs/classifier/checkpoints/last.ckpt --steps 300 --select-every 15 \
        --w-region 100 [--target-seed 1]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from aid.attacks.pgd import PGD  # noqa: E402
from aid.attacks.targets import random_target_classes  # noqa: E402
from aid.interpreters import build_interpreter  # noqa: E402
from aid.interpreters.mask import MaskInterpreter  # noqa: E402
from aid.metrics import map_iou, map_l1  # noqa: E402
from aid.model_state import frozen_eval  # noqa: E402
from scripts.mask_unrolled import eval_mask_kwargs  # noqa: E402
from scripts.shapes_images import correct_validation_images  # noqa: E402


def target_probability(classifier: nn.Module, x: Tensor, target: Tensor, temperature: float = 1.0) -> Tensor:
    """p_target(x) (B,) of softmax(logits / temperature)."""
    return (classifier(x).float() / temperature).softmax(1).gather(1, target[:, None]).squeeze(1)


def worst_deletion_outside(mask: MaskInterpreter, x: Tensor, target: Tensor, region: Tensor,
                           iterations: int = 40) -> Tensor:
    """The inner player: keep mask (B, 1, H, W) of MASK's optimisation of x for ``target`` (its loss,
    Adam, start and clamping) with every pixel of ``region`` (B, 1, H, W) in {0, 1} kept."""
    x, region = x.detach(), region.detach()
    param = mask.init_mask(x).detach().requires_grad_(True)
    with frozen_eval(mask.classifier), torch.enable_grad():
        ref = mask.reference(x)
        opt = torch.optim.Adam([param], lr=mask.lr)
        for _ in range(int(iterations)):
            loss = mask.mask_loss(x, target, param, ref, kept=region)
            opt.zero_grad()
            loss.sum().backward()
            opt.step()
            with torch.no_grad():
                param.clamp_(0, 1)
    return (1 - (1 - mask.keep_mask(param.detach(), x.shape[-2:])) * (1 - region)).detach()


def minmax_attack(mask: MaskInterpreter, x: Tensor, target: Tensor, benign: Tensor, eps: float = 12 / 255,
                  steps: int = 150, warm_steps: int = 30, every: int = 10, inner: int = 40,
                  w_survive: float = 3.0, w_region: float = 30.0, region_threshold: float = 0.05,
                  select_every: int = 0) -> Tensor:
    """x_adv (B, C, H, W) in the L∞ ``eps``-ball of x and [0, 1] (see the module docstring). Per-sample
    and deterministic: no random numbers are drawn."""
    clf, alpha = mask.classifier, 1 / 255
    region = (benign > region_threshold).float()
    x_adv = PGD(clf, eps=eps, alpha=alpha, steps=warm_steps)(x, target).x_adv.detach()
    best, best_score = x_adv.clone(), torch.full((x.shape[0],), float("inf"), device=x.device)

    def select(z: Tensor) -> None:
        nonlocal best, best_score
        with torch.no_grad():
            ok = clf(z).argmax(1) == target
        score = torch.where(ok, map_l1(mask.attribute(z, target), benign), torch.full_like(best_score, float("inf")))
        better = score < best_score
        best = torch.where(better[:, None, None, None], z, best)
        best_score = torch.minimum(best_score, score)

    with frozen_eval(clf):
        ref = mask.reference(x)
        for step in range(int(steps)):
            if step % int(every) == 0:
                keep_out = worst_deletion_outside(mask, x_adv, target, region, inner)
            if select_every and step and step % int(select_every) == 0:
                select(x_adv)
            z = x_adv.clone().requires_grad_(True)
            with torch.enable_grad():
                log_p = F.log_softmax(clf(z).float(), 1).gather(1, target[:, None]).squeeze(1)
                log_p_out = F.log_softmax(clf(mask.phi(z, keep_out, reference=ref)).float(), 1)
                log_p_out = log_p_out.gather(1, target[:, None]).squeeze(1)
                p_region = target_probability(clf, mask.phi(z, 1 - region, reference=ref), target, mask.temperature)
                loss = -log_p - w_survive * log_p_out + w_region * p_region
                (grad,) = torch.autograd.grad(loss.sum(), z)
            x_adv = torch.minimum(torch.maximum(z.detach() - alpha * grad.sign(), x - eps), x + eps).clamp(0, 1)
    if select_every:
        select(x_adv)
        return best
    return x_adv


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("classifier_ckpt")
    p.add_argument("--images", type=int, default=64)
    p.add_argument("--steps", type=int, default=150, help="signed steps after the 30 PGD steps")
    p.add_argument("--every", type=int, default=10, help="steps between re-solves of the inner player")
    p.add_argument("--inner", type=int, default=40, help="MASK iterations of the inner player")
    p.add_argument("--w-survive", type=float, default=3.0)
    p.add_argument("--w-region", type=float, default=30.0)
    p.add_argument("--region-threshold", type=float, default=0.05)
    p.add_argument("--select-every", type=int, default=0, help="keep the best iterate every N steps (0: last)")
    p.add_argument("--target-seed", type=int, default=0, help="seed of the random target classes")
    args = p.parse_args()
    clf, x, y, _ = correct_validation_images(args.classifier_ckpt, 32, args.images)
    t = random_target_classes(y, clf.num_classes, args.target_seed)
    mask = build_interpreter("mask", clf, **eval_mask_kwargs())
    benign = mask.attribute(x, y)
    eps = 12 / 255
    rows = {"PGD (60 steps)": PGD(clf, eps=eps, alpha=1 / 255, steps=60)(x, t).x_adv}
    rows["min-max"] = minmax_attack(mask, x, t, benign, eps, args.steps, 30, args.every, args.inner,
                                    args.w_survive, args.w_region, args.region_threshold, args.select_every)
    print(f"{len(x)} validation images, ε 12/255, {vars(args)}")
    region = (benign > args.region_threshold).float()
    for name, x_adv in rows.items():
        with torch.no_grad():
            ok = clf(x_adv).argmax(1) == t
        maps = mask.attribute(x_adv, t)
        print(f"{name:15s} asr {ok.float().mean():.3f}  IoU {map_iou(maps, benign)[ok].mean():.3f}  "
              f"L1 {map_l1(maps, benign)[ok].mean():.3f}", flush=True)
    ref = mask.reference(x_adv)
    on = (maps > args.region_threshold).float()
    with torch.no_grad():
        p_region = target_probability(clf, mask.phi(x_adv, 1 - region, reference=ref), t)
        p_out = target_probability(clf, mask.phi(x_adv, worst_deletion_outside(mask, x_adv, t, region, args.inner),
                                                  reference=ref), t)
        p_own = target_probability(clf, mask.phi(x_adv, 1 - maps, reference=ref), t)
    inside = (on * region).flatten(1).sum(1) / on.flatten(1).sum(1).clamp_min(1)
    cover = (on * region).flatten(1).sum(1) / region.flatten(1).sum(1).clamp_min(1)
    print(f"min-max, successful images: p_t with R deleted {p_region[ok].mean():.3f}, with the inner player's "
          f"deletion {p_out[ok].mean():.3f}, with MASK's own region deleted {p_own[ok].mean():.3f}; MASK's map "
          f"{inside[ok].mean():.2f} inside R, covering {cover[ok].mean():.2f} of R")


if __name__ == "__main__":
    main()
