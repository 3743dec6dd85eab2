"""How close can CAM or GRAD get to a random-patch target map at 32 px? (README, ADV² evaluation, Table 7.)

Prints (1) for CAM the L1 of the best 4×4 CAM grid fitted directly to the patches (Adam on the grid
cells, upsampled and min-max normalised as CAM is) and (2) the L1 that ADV² reaches with no ε bound
(ε = 1, 30 warm + ``--steps`` steps of 1/255, λ 10 and 1000 against CAM, 30 and 1000 against GRAD), on
the first 16 test images of the shapes data. GRAD's map is pooled by 4 as the configs' (``--pool 1``:
the per-pixel map):

    python experiments/patch_capacity.py                 (CAM, 90 steps)
    python experiments/patch_capacity.py --interpreter grad --steps 300
    python experiments/patch_capacity.py --interpreter grad --steps 300 --pool 1
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from aid.attacks.adv2 import ADV2  # noqa: E402
from aid.attacks.targets import random_patch_maps, random_target_classes  # noqa: E402
from aid.checkpoints import load_classifier  # noqa: E402
from aid.interpreters import build_interpreter  # noqa: E402
from aid.interpreters.cam import upsample_normalize  # noqa: E402
from aid.metrics import map_l1  # noqa: E402
from datamodules import ShapesDataModule  # noqa: E402
from experiments.shapes_images import embedded_classifier  # noqa: E402


def best_grid_l1(patch: torch.Tensor, side: int = 4, steps: int = 2000) -> float:
    """Mean L1 (per pixel) of the best side×side CAM-like map to each patch (B, 1, H, W)."""
    grid = torch.nn.functional.adaptive_avg_pool2d(patch, side).clone().requires_grad_(True)
    opt = torch.optim.Adam([grid], lr=0.05)
    for _ in range(steps):
        loss = (upsample_normalize(grid, patch.shape[-2:]) - patch).abs().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return map_l1(upsample_normalize(grid.detach(), patch.shape[-2:]), patch).mean().item()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("classifier_ckpt", nargs="?", default=None,
                   help="classifier checkpoint (default: the main job's, found in ./runs)")
    p.add_argument("--images", type=int, default=16)
    p.add_argument("--interpreter", choices=["cam", "grad"], default="cam")
    p.add_argument("--steps", type=int, default=90, help="ADV² steps after the 30 warm-start steps")
    p.add_argument("--pool", type=int, default=4, help="GRAD's map pooling (the configs' 4; 1: per pixel)")
    args = p.parse_args()
    clf = load_classifier(args.classifier_ckpt or embedded_classifier()).eval()
    data = ShapesDataModule(image_size=32, num_classes=clf.num_classes, val_size=1000, test_size=1000, seed=0)
    data.setup("test")
    x, y = next(iter(data.test_dataloader()))[:2]
    x, y = x[: args.images], y[: args.images]
    patch = random_patch_maps(len(x), 32, generator=1)
    interp = build_interpreter(args.interpreter, clf, **({"pool": args.pool} if args.interpreter == "grad" else {}))
    benign = interp.attribute(x, y)
    print(f"L1 benign {args.interpreter.upper()} -> patch: {map_l1(benign, patch).mean():.3f}")
    if args.interpreter == "cam":
        print(f"L1 best 4x4 grid -> patch: {best_grid_l1(patch):.3f}")
    target = random_target_classes(y, clf.num_classes, 0)
    for lam in (10.0, 1000.0) if args.interpreter == "cam" else (30.0, 1000.0):
        res = ADV2(clf, interp, eps=1.0, alpha=1 / 255, warm_steps=30, steps=args.steps, lam=lam)(x, target, patch)
        print(f"ADV² (eps 1, lam {lam:g}): asr {res.success.float().mean():.2f}, "
              f"L1 -> patch {map_l1(res.maps, patch).mean():.3f}, L1 -> benign {map_l1(res.maps, benign).mean():.3f}")


if __name__ == "__main__":
    main()
