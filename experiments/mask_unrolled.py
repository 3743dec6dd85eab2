"""Is ADV² against MASK limited by Algorithm 1's map estimate? An attack through the exact MASK map.

MASK's map is an optimisation from a fixed start (m = 0.5, Adam), so its first K iterations are a
differentiable function of x. This probe runs ADV² against MASK with ``estimate="unrolled"``
(:class:`~aid.attacks.adv2_mask_unrolled.ADV2MaskUnrolled`: sign steps through the K-step map unrolled with the graph,
ε = 12/255, 30 PGD warm-start steps, the per-sample best iterate) towards the benign map and scores
the interpreter's own 150-iteration map of the result as ``configs/eval_adv2.yaml`` does (its MASK:
T 10, area weight 1; IoU of the top 25 %, per-pixel L1). It also prints how well the K-step map
predicts the 150-iteration one on benign and PGD inputs, what the maps look like (share of non-zero
pixels, largest value, images whose PGD map shares no pixel with the benign one) and whether MASK's
deletion (its reference in place of the image) removes the class. README ("ADV² evaluation") quotes
it:

    python experiments/mask_unrolled.py --unroll 20 40
    python experiments/mask_unrolled.py <64 px classifier> --size 64 --unroll    (statistics only)

``--mask key=value,...`` changes MASK's settings (``min_mask_size=8``: an 8×8 mask at 32 px instead of
16×16) and ``--algorithm1`` also runs Algorithm 1 (ADV2Mask, the default estimate, 30 + 30 steps as the
config's row):

    python experiments/mask_unrolled.py --images 64 --unroll 20 \
        --mask min_mask_size=8 --algorithm1
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from aid.attacks.adv2_mask import ADV2Mask  # noqa: E402
from aid.attacks.adv2_mask_unrolled import ADV2MaskUnrolled  # noqa: E402
from aid.attacks.pgd import PGD  # noqa: E402
from aid.attacks.targets import random_target_classes  # noqa: E402
from aid.interpreters import build_interpreter  # noqa: E402
from aid.metrics import map_iou, map_l1  # noqa: E402
from experiments.mask_quality import parse_setting  # noqa: E402
from experiments.shapes_images import correct_validation_images  # noqa: E402

EVAL_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "eval_adv2.yaml"


def eval_mask_kwargs() -> dict:
    """The MASK settings (``interpreter_kwargs.mask``) of configs/eval_adv2.yaml's first callback."""
    config = yaml.safe_load(EVAL_CONFIG.read_text())
    return dict(config["trainer"]["callbacks"][0]["init_args"]["interpreter_kwargs"]["mask"])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("classifier_ckpt", nargs="?", default=None,
                   help="classifier checkpoint (default: the main job's, found in ./runs)")
    p.add_argument("--images", type=int, default=32)
    p.add_argument("--unroll", type=int, nargs="*", default=[20, 40], help="MASK iterations unrolled")
    p.add_argument("--size", type=int, default=32, help="image side the classifier was trained at")
    p.add_argument("--steps", type=int, default=30, help="ADV² steps after the warm start")
    p.add_argument("--lam", type=float, default=100.0)
    p.add_argument("--mask", default="default", help="MASK settings over the config's: key=value,...")
    p.add_argument("--algorithm1", action="store_true", help="also run ADV² with Algorithm 1")
    args = p.parse_args()
    torch.manual_seed(0)
    clf, x, y, _ = correct_validation_images(args.classifier_ckpt, args.size, args.images)
    t = random_target_classes(y, clf.num_classes, 0)
    mask = build_interpreter("mask", clf, **{**eval_mask_kwargs(), **parse_setting(args.mask)})
    eps, alpha = 12 / 255, 1 / 255
    benign = mask.attribute(x, y)
    x_pgd = PGD(clf, eps=eps, alpha=alpha, steps=60)(x, t).x_adv
    pgd_map = mask.attribute(x_pgd, t)
    pgd_iou = map_iou(pgd_map, benign)
    print(f"{len(x)} validation images; PGD: IoU {pgd_iou.mean():.3f} (0 on {int((pgd_iou == 0).sum())}), "
          f"L1 {map_l1(pgd_map, benign).mean():.3f}")
    for name, maps in (("benign", benign), ("PGD", pgd_map)):
        print(f"{name} maps: non-zero pixels {(maps > 0).float().mean():.3f}, "
              f"mean value {maps.mean():.3f}, mean largest value {maps.amax(dim=(1, 2, 3)).mean():.3f}")
    with torch.no_grad():  # does MASK's deletion remove the class?
        ref = mask.reference(x)
        deleted = mask.phi(x, 1 - benign, reference=ref)
        p_y = [clf(z).softmax(1).gather(1, y[:, None]).mean().item() for z in (x, ref, deleted)]
    print("benign class probability: image {:.3f}, whole image replaced by MASK's reference {:.3f}, "
          "MASK's region replaced {:.3f}"
          .format(*p_y))
    for k in args.unroll:
        with torch.no_grad():
            pred_b = mask.mask_to_map(mask.optimize(x, y, steps=k), x.shape[-2:])
            pred_p = mask.mask_to_map(mask.optimize(x_pgd, t, steps=k), x.shape[-2:])
        result = ADV2MaskUnrolled(clf, mask, eps=eps, alpha=alpha, warm_steps=30, steps=args.steps,
                                  unroll=k, lam=args.lam)(x, t, benign)
        asr, adv_map = result.success.float().mean(), result.maps
        print(f"unroll {k}: IoU(K-step, 150-step map) benign {map_iou(pred_b, benign).mean():.3f}, "
              f"PGD {map_iou(pred_p, pgd_map).mean():.3f}; ADV² through it: asr {asr:.3f}, "
              f"IoU {map_iou(adv_map, benign).mean():.3f}, L1 {map_l1(adv_map, benign).mean():.3f}")
    if args.algorithm1:
        result = ADV2Mask(clf, mask, eps=eps, alpha=alpha, warm_steps=30, steps=30)(x, t, benign)
        print(f"Algorithm 1: asr {result.success.float().mean():.3f}, IoU {map_iou(result.maps, benign).mean():.3f}, "
              f"L1 {map_l1(result.maps, benign).mean():.3f}")


if __name__ == "__main__":
    main()
