"""Is RTSA more noise-sensitive than RTS? The noise test of the main job on many images, with its error.

On 64 images (the main job's noise test before it took 1,024) only about 16 change class at the 30 %
levels, so a difference of a few percent between RTS and RTSA is within the draw. This script repeats
the test on N correctly classified validation images of a finished main-job run (its own seeded draw)
with the callback's calibration (`calibrate_sigma` on 256 validation images, the callback's seeds) and
prints per noise level:

- σ and the share of the N images the noise misclassifies;
- the mean L1 between clean and noisy maps (noisy map for the predicted class) of RTS and RTSA, and
  their paired difference RTSA − RTS with its standard error;
- the same split into images the noise misclassifies and images it does not;
- how many disjoint blocks of 64 images (the callback's sample size) have RTSA above RTS;
- RTSA's gate on the noisy images: its belief in the predicted and the true class where the noise
  misclassifies, in the (unchanged) class elsewhere.

``--gate-sharpness K`` evaluates RTSA's gate at sharpness K, sigmoid(K · margin), instead of the
checkpoint's own (``presence_sharpness``): what a sharper or softer gate does to the same trained RTSA.

    python experiments/noise_sample.py runs/rts_aid-<hash> --images 1024      (about 1 min at 32 px)
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from gate_diagnostics import correct_images, gate_belief, load_run  # noqa: E402

from aid.metrics import map_l1  # noqa: E402
from callbacks.noise import NOISES, calibrate_sigma, level_name, predict, unit_noise  # noqa: E402


@torch.no_grad()
def maps(masker, x: torch.Tensor, c: torch.Tensor, chunk: int = 256) -> torch.Tensor:
    """The masker's maps (N, 1, H, W) of images x for classes c, in chunks."""
    return torch.cat([masker(a, b)[0] for a, b in zip(x.split(chunk), c.split(chunk), strict=True)])


@torch.no_grad()
def beliefs(masker, x: torch.Tensor, c: torch.Tensor, chunk: int = 256) -> torch.Tensor:
    """The masker's gate belief (N,) in classes c of images x, in chunks."""
    return torch.cat([gate_belief(masker, a, b) for a, b in zip(x.split(chunk), c.split(chunk), strict=True)])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run_dir", type=Path)
    p.add_argument("--images", type=int, default=1024, help="correctly classified validation images")
    p.add_argument("--rates", type=float, nargs="+", default=[0.03, 0.30])
    p.add_argument("--seed", type=int, default=1, help="draw of the images and their noise")
    p.add_argument("--gate-sharpness", type=float, default=None, help="default: the checkpoint's")
    args = p.parse_args()
    if args.gate_sharpness is not None and not args.gate_sharpness > 0:
        p.error(f"--gate-sharpness must be > 0, got {args.gate_sharpness}")
    classifier, rts, rtsa, data, _ = load_run(args.run_dir)
    classifier.eval()
    if rtsa.presence is None:
        raise SystemExit(f"{args.run_dir}: RTSA has no presence gate")
    if args.gate_sharpness is not None:
        rtsa.presence.sharpness.fill_(args.gate_sharpness)
    data.setup("validate")
    dataset = data.val_dataloader().dataset
    # The callback's calibration: 256 validation images, correct or not, seed 0, noise seeded 1000 + k.
    order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(0))[:256]
    x_cal = torch.stack([dataset[int(i)][0] for i in order])
    x, y = correct_images(classifier, dataset, args.images, args.seed)
    print(f"{len(y)} correctly classified validation images; gate sharpness {rtsa.presence.sharpness.item():g}")
    clean_rts, clean_rtsa = maps(rts, x, y), maps(rtsa, x, y)
    print(f"benign L1 RTS vs RTSA {map_l1(clean_rts, clean_rtsa).mean():.4f}")
    print("| level | σ | misclassified | RTS | RTSA | RTSA − RTS | misclassified: RTS / RTSA "
          "| others: RTS / RTSA | 64-image blocks with RTSA > RTS | gate: misclassified (predicted / true), others |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    rates = torch.tensor(args.rates)
    for k, kind in enumerate(NOISES):
        cal_noise = unit_noise(x_cal, kind, torch.Generator().manual_seed(1000 + k))
        sigmas = calibrate_sigma(classifier, x_cal, cal_noise, rates)
        z = unit_noise(x, kind, torch.Generator().manual_seed(args.seed * 7919 + k))
        for rate, s in zip(args.rates, sigmas.tolist(), strict=True):
            x_noisy = (x + s * z).clamp(0, 1)
            pred = predict(classifier, x_noisy)
            wrong = pred != y
            l_rts = map_l1(maps(rts, x_noisy, pred), clean_rts)
            l_rtsa = map_l1(maps(rtsa, x_noisy, pred), clean_rtsa)
            d = l_rtsa - l_rts
            g_pred, g_true = beliefs(rtsa, x_noisy, pred), beliefs(rtsa, x_noisy, y)
            blocks = d[: len(d) // 64 * 64].view(-1, 64).mean(1)
            print(f"| {kind} {level_name(rate)} % | {s:.4f} | {wrong.float().mean():.3f} | {l_rts.mean():.4f} "
                  f"| {l_rtsa.mean():.4f} | {d.mean():+.4f} ± {d.std() / len(d) ** 0.5:.4f} "
                  f"| {l_rts[wrong].mean():.3f} / {l_rtsa[wrong].mean():.3f} "
                  f"| {l_rts[~wrong].mean():.4f} / {l_rtsa[~wrong].mean():.4f} "
                  f"| {int((blocks > 0).sum())} of {len(blocks)} "
                  f"| {g_pred[wrong].mean():.2f} / {g_true[wrong].mean():.2f}, {g_pred[~wrong].mean():.2f} |",
                  flush=True)


if __name__ == "__main__":
    main()
