"""Does MASK point at the benign region when the perturbation can only be there? A probe of why ADV²
does not steer MASK on the embedded data (README, "ADV² evaluation").

MASK's map of an adversarial input marks the cheapest deletion that removes the adversarial class. If
the perturbation lives only inside the benign map's region (or the object), the deletions that remove
the perturbation lie there too (others may still remove the class by deleting what it also leans on),
so this is a favourable case for an attacker who wants MASK to show the benign map. The probe runs
targeted PGD (ε, 60 steps of 1/255, random target classes, no random start) whose perturbation is
confined to a support: the whole image, the benign MASK map's non-zero pixels, those
dilated by 1, 2 or 3 pixels, or the object's ground-truth mask. It prints, per support, its share of the
image, the attack success rate and, on the successful images, IoU (top 25 %) and L1 of MASK's map of
the result with the benign map, and the share of non-zero pixels of both maps. MASK's settings are
configs/eval_adv2.yaml's.

    python experiments/mask_support.py     (64 images, 1 min)
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
from aid.metrics import map_iou, map_l1  # noqa: E402
from experiments.mask_unrolled import eval_mask_kwargs  # noqa: E402
from experiments.shapes_images import correct_validation_images  # noqa: E402


class SupportClassifier(nn.Module):
    """``classifier(x0 + (x − x0) · support)``: a classifier that sees a change of ``x0`` only where
    ``support`` (B, 1, H, W) in {0, 1} is 1, so gradient attacks through it leave the rest of x0 as is."""

    def __init__(self, classifier: nn.Module, x0: Tensor, support: Tensor) -> None:
        super().__init__()
        self.classifier, self.x0, self.support = classifier, x0.detach(), support.detach()
        self.in_chans, self.num_classes = classifier.in_chans, classifier.num_classes  # what attacks check

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.x0 + (x - self.x0) * self.support)


def supports(benign: Tensor, objects: Tensor) -> dict[str, Tensor]:
    """The probe's supports (B, 1, H, W) in {0, 1}: whole image, the benign map's non-zero pixels, them
    dilated by 1 / 2 / 3 pixels (a square structuring element), the object mask."""
    region = (benign > 0).float()
    out = {"image": torch.ones_like(region), "benign map": region}
    for r in (1, 2, 3):
        out[f"benign map + {r} px"] = F.max_pool2d(region, 2 * r + 1, stride=1, padding=r)
    out["object"] = (objects > 0.5).float().reshape(region.shape)
    return out


def confined_pgd(classifier: nn.Module, x: Tensor, target: Tensor, support: Tensor, eps: float,
                 steps: int = 60) -> Tensor:
    """Targeted PGD (L∞ ``eps``, steps of 1/255) whose perturbation of x is zero outside ``support``."""
    wrapped = SupportClassifier(classifier, x, support)
    x_adv = PGD(wrapped, eps=eps, alpha=1 / 255, steps=steps)(x, target).x_adv
    return x + (x_adv - x) * support


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("classifier_ckpt", nargs="?", default=None,
                   help="classifier checkpoint (default: the main job's, found in ./runs)")
    p.add_argument("--images", type=int, default=64)
    p.add_argument("--eps", type=float, default=12 / 255)
    args = p.parse_args()
    clf, x, y, objects = correct_validation_images(args.classifier_ckpt, 32, args.images)
    t = random_target_classes(y, clf.num_classes, 0)
    mask = build_interpreter("mask", clf, **eval_mask_kwargs())
    benign = mask.attribute(x, y)
    print(f"{len(x)} validation images, ε {args.eps * 255:.0f}/255; benign MASK maps: non-zero pixels "
          f"{(benign > 0).float().mean():.3f}")
    for name, support in supports(benign, objects).items():
        x_adv = confined_pgd(clf, x, t, support, args.eps)
        with torch.no_grad():
            ok = clf(x_adv).argmax(1) == t
        line = f"{name:18s} support {support.mean():.2f}  asr {ok.float().mean():.3f}"
        if ok.any():
            maps = mask.attribute(x_adv[ok], t[ok])
            line += (f"  IoU {map_iou(maps, benign[ok]).mean():.3f}  L1 {map_l1(maps, benign[ok]).mean():.3f}"
                     f"  non-zero {(maps > 0).float().mean():.3f} (benign {(benign[ok] > 0).float().mean():.3f})")
        print(line, flush=True)


if __name__ == "__main__":
    main()
