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
With ``--noise`` it adds uniform noise of the same budget (±12/255, seeded) instead and prints, on the
images that keep their class, the IoU and L1 of MASK's map of the noisy image (true class) with the
benign map: how much MASK's map moves when the class does not change.
``aid/interpreters/mask.py`` and README quote it (the configs' MASK is ``temperature=10,area_weight=1``;
``default`` is the interpreter's defaults, T = 1 and area weight 0.25):

    python experiments/mask_quality.py temperature=10,area_weight=1 \
        default perturbation=blur,area_weight=0.5 --pgd
    python experiments/mask_quality.py default temperature=10,area_weight=1 \
        temperature=10,area_weight=0.5 temperature=10,area_weight=2 perturbation=blur,area_weight=0.5
    python experiments/mask_quality.py <64 px classifier> default temperature=10,area_weight=1 --size 64
    python experiments/mask_quality.py temperature=10,area_weight=1 --noise
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
from aid.interpreters.mask import MaskInterpreter  # noqa: E402
from aid.metrics import localization, map_iou, map_l1  # noqa: E402
from aid.models import NormalizedClassifier  # noqa: E402
from experiments.shapes_images import correct_validation_images  # noqa: E402


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


def quality(mask: MaskInterpreter, clf: NormalizedClassifier, x, y, objects, maps=None) -> dict[str, float]:
    """The statistics of one setting (see the module docstring) as a dict of floats; ``maps``: MASK's
    maps of (x, y) when already computed."""
    maps = mask.attribute(x, y) if maps is None else maps
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


def adversarial_deletions(mask: MaskInterpreter, clf: NormalizedClassifier, x_adv, t, benign) -> dict[str, float]:
    """p(t) on x_adv with MASK's region of x_adv (for t) deleted and with the benign maps' region deleted,
    and the IoU of MASK's adversarial and benign maps."""
    adv = mask.attribute(x_adv, t)
    return {
        "p_own": deletion_probability(mask, clf, x_adv, t, adv).mean().item(),
        "p_benign": deletion_probability(mask, clf, x_adv, t, benign).mean().item(),
        "iou": map_iou(adv, benign).mean().item(),
    }


def uniform_noise(x: torch.Tensor, eps: float, seed: int = 0) -> torch.Tensor:
    """x (B, C, H, W) plus seeded uniform noise in [−eps, eps], clamped to [0, 1]."""
    gen = torch.Generator().manual_seed(seed)
    noise = (torch.rand(x.shape, generator=gen) * 2 - 1) * eps
    return (x + noise.to(x.device)).clamp(0, 1)


def noise_stability(mask: MaskInterpreter, clf: NormalizedClassifier, x, y, benign, eps: float) -> dict[str, float]:
    """Share of images whose class survives ``uniform_noise(x, eps)`` and, on those, the mean IoU and
    L1 of MASK's map of the noisy image (class y) with the benign maps."""
    noisy = uniform_noise(x, eps)
    with torch.no_grad():
        kept = clf(noisy).argmax(1) == y
    maps = mask.attribute(noisy[kept], y[kept])
    return {
        "kept": kept.float().mean().item(),
        "iou": map_iou(maps, benign[kept]).mean().item(),
        "l1": map_l1(maps, benign[kept]).mean().item(),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("classifier_ckpt", nargs="?", default=None,
                   help="classifier checkpoint (default: the main job's, found in ./runs)")
    p.add_argument("settings", nargs="*", default=["default"], help="key=value,... or 'default'")
    p.add_argument("--images", type=int, default=64)
    p.add_argument("--size", type=int, default=32, help="image side the classifier was trained at")
    p.add_argument("--iterations", type=int, default=150, help="MASK iterations (eval_adv2.yaml: 150)")
    p.add_argument("--pgd", action="store_true", help="also delete regions of PGD examples (see above)")
    p.add_argument("--noise", action="store_true", help="also compare maps of noisy images (see above)")
    args = p.parse_args()
    clf, x, y, objects = correct_validation_images(args.classifier_ckpt, args.size, args.images)
    if args.pgd:
        t = random_target_classes(y, clf.num_classes, 0)
        pgd = PGD(clf, eps=12 / 255, alpha=1 / 255, steps=60)(x, t)
    print(f"{len(x)} validation images, MASK with {args.iterations} iterations")
    print("| setting | empty maps | non-zero pixels | largest value | p(class) image → region deleted "
          "| localisation IoU | energy |")
    print("|---|---|---|---|---|---|---|")
    adversarial_rows, noise_rows = [], []
    for text in args.settings:
        mask = MaskInterpreter(clf, iterations=args.iterations, **parse_setting(text))
        benign = mask.attribute(x, y)
        q = quality(mask, clf, x, y, objects, benign)
        print(f"| {text} | {q['empty']:.2f} | {q['nonzero']:.3f} | {q['largest']:.2f} | "
              f"{q['p_image']:.3f} → {q['p_deleted']:.3f} | {q['loc_iou']:.3f} | {q['energy']:.3f} |", flush=True)
        if args.pgd:
            d = adversarial_deletions(mask, clf, pgd.x_adv, t, benign)
            adversarial_rows.append(f"| {text} | {pgd.confidence.mean():.3f} → {d['p_own']:.3f} / "
                                    f"{d['p_benign']:.3f} | {d['iou']:.3f} |")
        if args.noise:
            n = noise_stability(mask, clf, x, y, benign, 12 / 255)
            noise_rows.append(f"| {text} | {n['kept']:.2f} | {n['iou']:.3f} | {n['l1']:.3f} |")
    if adversarial_rows:
        print("\nPGD examples, target class t: | setting | p(t) adversarial → MASK's region deleted / benign "
              "region deleted | IoU(MASK map, benign map) |")
        print("|---|---|---|")
        print("\n".join(adversarial_rows))
    if noise_rows:
        print("\nUniform noise ±12/255, true class: | setting | images that keep their class | IoU(MASK map, "
              "benign map) | L1 |")
        print("|---|---|---|---|")
        print("\n".join(noise_rows))


if __name__ == "__main__":
    main()
