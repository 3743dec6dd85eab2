"""Does MASK explain the classifier? Empty maps, deletion strength and localisation per MASK setting.

For each setting (``key=value,...`` of :class:`~aid.interpreters.mask.MaskInterpreter`; ``default``
for its defaults) on the first N validation images of the shapes data that the classifier gets right,
it prints: the share of all-zero maps (MASK found nothing worth deleting), the share of non-zero
pixels, the mean largest map value, the true class's probability on the image and with MASK's region
deleted (φ(x; 1 − map): what the map claims to remove), and the localisation against the object masks
(IoU at the object's area and the map's energy inside the object, as ``localization/<i>``).
With ``--pgd`` it also attacks the images with targeted PGD (ε 12/255, 60 steps of 1/255, random
target classes, as ``configs/eval_adv2.yaml``) and prints, for the target class, its probability on
the adversarial images, with MASK's own region of them deleted and with the benign map's region
deleted, and the IoU of the two maps: how many different deletions remove the adversarial class.
``aid/interpreters/mask.py`` and README quote it:

    python scripts/mask_quality.py runs/classifier/checkpoints/last.ckpt default perturbation=blur --pgd
    python scripts/mask_quality.py runs/classifier/checkpoints/last.ckpt default \
        perturbation=blur,area_weight=0.5 perturbation=grey,area_weight=0.5 perturbation=grey,area_weight=0.1
"""

from __future__ import annotations

import argparse
import ast
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from aid.attacks.pgd import PGD  # noqa: E402
from aid.attacks.targets import random_target_classes  # noqa: E402
from aid.checkpoints import load_classifier  # noqa: E402
from aid.interpreters.mask import MaskInterpreter  # noqa: E402
from aid.metrics import localization, map_iou  # noqa: E402
from aid.models import NormalizedClassifier  # noqa: E402
from datamodules import ShapesDataModule  # noqa: E402


def parse_setting(text: str) -> dict[str, object]:
    """``"a=1,b=blur"`` -> ``{"a": 1, "b": "blur"}`` (Python literals where they parse); ``default`` -> {}."""
    if text == "default":
        return {}
    out: dict[str, object] = {}
    for item in text.split(","):
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise SystemExit(f"bad setting {item!r}: use key=value[,key=value...] or 'default'")
        try:
            out[key.strip()] = ast.literal_eval(value.strip())
        except (ValueError, SyntaxError):
            out[key.strip()] = value.strip()
    return out


@torch.no_grad()
def deletion_probability(mask: MaskInterpreter, clf: NormalizedClassifier, x, y, maps) -> torch.Tensor:
    """p(y) (B,) on φ(x; 1 − maps): the images with MASK's region replaced by its reference."""
    perturbed = mask.phi(x, 1 - maps, reference=mask.reference(x))
    return clf(perturbed).softmax(1).gather(1, y[:, None]).squeeze(1)


def adversarial_deletions(mask: MaskInterpreter, clf: NormalizedClassifier, x, y, x_adv, t) -> dict[str, float]:
    """p(t) on x_adv, with MASK's region of x_adv (for t) deleted, with the benign region deleted; IoU."""
    benign, adv = mask.attribute(x, y), mask.attribute(x_adv, t)
    with torch.no_grad():
        p_adv = clf(x_adv).softmax(1).gather(1, t[:, None]).squeeze(1)
    return {
        "p_adv": p_adv.mean().item(),
        "p_own": deletion_probability(mask, clf, x_adv, t, adv).mean().item(),
        "p_benign": deletion_probability(mask, clf, x_adv, t, benign).mean().item(),
        "iou": map_iou(adv, benign).mean().item(),
    }


def quality(mask: MaskInterpreter, clf: NormalizedClassifier, x, y, objects) -> dict[str, float]:
    """The statistics of one setting (see the module docstring) as a dict of floats."""
    maps = mask.attribute(x, y)
    with torch.no_grad():
        p_image = clf(x).softmax(1).gather(1, y[:, None]).squeeze(1)
    loc_iou, energy = localization(maps, objects)
    return {
        "empty": (maps.flatten(1).amax(1) == 0).float().mean().item(),
        "nonzero": (maps > 0).float().mean().item(),
        "largest": maps.amax((1, 2, 3)).mean().item(),
        "p_image": p_image.mean().item(),
        "p_deleted": deletion_probability(mask, clf, x, y, maps).mean().item(),
        "loc_iou": loc_iou.mean().item(),
        "energy": energy.mean().item(),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("classifier_ckpt")
    p.add_argument("settings", nargs="*", default=["default"], help="key=value,... or 'default'")
    p.add_argument("--images", type=int, default=64)
    p.add_argument("--size", type=int, default=32, help="image side the classifier was trained at")
    p.add_argument("--iterations", type=int, default=150, help="MASK iterations (eval_adv2.yaml: 150)")
    p.add_argument("--pgd", action="store_true", help="also delete regions of PGD examples (see above)")
    args = p.parse_args()
    clf = load_classifier(args.classifier_ckpt).eval().requires_grad_(False)
    data = ShapesDataModule(image_size=args.size, num_classes=clf.num_classes, val_size=1000, test_size=1000, seed=0)
    data.setup("fit")
    x, y, objects = next(iter(data.val_dataloader()))[:3]
    with torch.no_grad():
        right = clf(x).argmax(1) == y
    x, y, objects = x[right][: args.images], y[right][: args.images], objects[right][: args.images]
    print(f"{len(x)} validation images, MASK with {args.iterations} iterations")
    print("| setting | empty maps | non-zero pixels | largest value | p(class) image → region deleted "
          "| localisation IoU | energy |")
    print("|---|---|---|---|---|---|---|")
    for text in args.settings:
        kwargs = {"iterations": args.iterations, **parse_setting(text)}
        q = quality(MaskInterpreter(clf, **kwargs), clf, x, y, objects)
        print(f"| {text} | {q['empty']:.2f} | {q['nonzero']:.3f} | {q['largest']:.2f} | "
              f"{q['p_image']:.3f} → {q['p_deleted']:.3f} | {q['loc_iou']:.3f} | {q['energy']:.3f} |", flush=True)
    if not args.pgd:
        return
    t = random_target_classes(y, clf.num_classes, 0)
    x_adv = PGD(clf, eps=12 / 255, alpha=1 / 255, steps=60)(x, t).x_adv
    print("\nPGD examples, target class t: | setting | p(t) adversarial → MASK's region deleted / benign "
          "region deleted | IoU(MASK map, benign map) |")
    print("|---|---|---|")
    for text in args.settings:
        kwargs = {"iterations": args.iterations, **parse_setting(text)}
        d = adversarial_deletions(MaskInterpreter(clf, **kwargs), clf, x, y, x_adv, t)
        print(f"| {text} | {d['p_adv']:.3f} → {d['p_own']:.3f} / {d['p_benign']:.3f} | {d['iou']:.3f} |", flush=True)


if __name__ == "__main__":
    main()
