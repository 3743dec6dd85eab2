"""How the min-max estimate of ADV² against MASK plays out: its row beside PGD's, then how the game ended.

MASK's map of an adversarial input marks the cheapest deletion that removes the adversarial class t
(README, "ADV² evaluation": after PGD many small deletions do, and MASK keeps whichever is cheapest).
For MASK to show the benign map's region R, deleting R must remove t and every cheaper deletion
elsewhere must not. ``ADV2MaskMinMax`` (aid/attacks/adv2_mask_minmax.py) attacks that min-max,
with signed steps of 1/255 in the ε-ball (12/255) from a 30-step PGD start, on the loss

    CE_ρ(f(x), t) − w_survive · log p_t(φ(x; keep_out)) + w_region · p_t^T(φ(x; 1 − R)),

where keep_out is the inner player: MASK's own objective (its settings of configs/eval_adv2.yaml)
optimised for ``--inner`` iterations with the deletion forbidden on R, re-solved every ``--every``
steps (the worst deletion outside R; ``--pool N``: the last N of them). Every ``--select-every``
steps each image keeps the iterate whose MASK map (the evaluated 150-iteration map) is nearest the
benign map in L1. R is the benign map's pixels above ``--region-threshold``. The script prints PGD's
row (60 steps, as the config's) and the attack's (attack success; on successful images IoU and L1
with the benign map), then how the game ended: p_t with R deleted, with the inner player's deletion
and with MASK's own region deleted, and where MASK's map lies (its share inside R, the share of R
it covers):

    python experiments/mask_minmax.py            (64 images, 5 min)
    python experiments/mask_minmax.py --w-region 30 --target-seed 1
    python experiments/mask_minmax.py --mask min_mask_size=8   (8×8 mask)
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from aid.attacks.adv2_mask_minmax import ADV2MaskMinMax  # noqa: E402
from aid.attacks.mask_game import target_region, worst_deletion_outside  # noqa: E402
from aid.attacks.pgd import PGD  # noqa: E402
from aid.attacks.targets import random_target_classes  # noqa: E402
from aid.interpreters import build_interpreter  # noqa: E402
from aid.metrics import map_iou, map_l1  # noqa: E402
from experiments.mask_quality import parse_setting  # noqa: E402
from experiments.mask_unrolled import eval_mask_kwargs  # noqa: E402
from experiments.shapes_images import correct_validation_images  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("classifier_ckpt", nargs="?", default=None,
                   help="classifier checkpoint (default: the main job's, found in ./runs)")
    p.add_argument("--images", type=int, default=64)
    p.add_argument("--steps", type=int, default=300, help="signed steps after the 30 PGD steps")
    p.add_argument("--every", type=int, default=10, help="steps between re-solves of the inner player")
    p.add_argument("--inner", type=int, default=40, help="MASK iterations of the inner player")
    p.add_argument("--pool", type=int, default=1, help="inner solutions the target class must survive (the last N)")
    p.add_argument("--w-survive", type=float, default=3.0)
    p.add_argument("--w-region", type=float, default=100.0)
    p.add_argument("--region-threshold", type=float, default=0.05)
    p.add_argument("--select-every", type=int, default=15, help="offer the iterate to the selection every N steps")
    p.add_argument("--target-seed", type=int, default=0, help="seed of the random target classes")
    p.add_argument("--mask", default="default", help="MASK settings over the config's: key=value,...")
    args = p.parse_args()
    clf, x, y, _ = correct_validation_images(args.classifier_ckpt, 32, args.images)
    t = random_target_classes(y, clf.num_classes, args.target_seed)
    mask = build_interpreter("mask", clf, **{**eval_mask_kwargs(), **parse_setting(args.mask)})
    benign = mask.attribute(x, y)
    eps, alpha = 12 / 255, 1 / 255
    attack = ADV2MaskMinMax(clf, mask, eps=eps, alpha=alpha, warm_steps=30, steps=args.steps,
                            lam=args.w_region, select_every=args.select_every,
                            inner={"every": args.every, "iterations": args.inner, "pool": args.pool},
                            survive_weight=args.w_survive, region_threshold=args.region_threshold, progress=True)
    rows = {"PGD (60 steps)": PGD(clf, eps=eps, alpha=alpha, steps=60)(x, t).x_adv, "min-max": attack(x, t).x_adv}
    print(f"{len(x)} validation images, ε 12/255, {vars(args)}")
    region = target_region(benign, args.region_threshold)
    for name, x_adv in rows.items():
        with torch.no_grad():
            ok = clf(x_adv).argmax(1) == t
        maps = mask.attribute(x_adv, t)
        print(f"{name:15s} asr {ok.float().mean():.3f}  IoU {map_iou(maps, benign)[ok].mean():.3f}  "
              f"L1 {map_l1(maps, benign)[ok].mean():.3f}", flush=True)
    ref = mask.reference(x_adv)
    on = (maps > args.region_threshold).float()
    inner = worst_deletion_outside(mask, x_adv, t, region, args.inner)
    p_region = attack.confidence(mask.phi(x_adv, 1 - region, reference=ref), t)
    p_out = attack.confidence(mask.phi(x_adv, inner, reference=ref), t)
    p_own = attack.confidence(mask.phi(x_adv, 1 - maps, reference=ref), t)
    inside = (on * region).flatten(1).sum(1) / on.flatten(1).sum(1).clamp_min(1)
    cover = (on * region).flatten(1).sum(1) / region.flatten(1).sum(1).clamp_min(1)
    print(f"min-max, successful images: p_t with R deleted {p_region[ok].mean():.3f}, with the inner player's "
          f"deletion {p_out[ok].mean():.3f}, with MASK's own region deleted {p_own[ok].mean():.3f}; MASK's map "
          f"{inside[ok].mean():.2f} inside R, covering {cover[ok].mean():.2f} of R")


if __name__ == "__main__":
    main()
