"""Images per second of whole ADV² attacks against batch size and image size, per interpreter family.

Each call is one complete ``make_adv2(clf, interpreter, warm_steps=W, steps=S)(x, target)``: the benign
target map, W PGD warm-start steps, S ADV² steps with the per-sample best iterate, the final evaluation
and map. Within one (image size, family) the batch sizes are timed side by side (rounds rotate the
order). Reported: median seconds per call, images per second (batch / median) and the per-image speed-up
over batch 1. Acceptance on CPU: batch 32 at least 4× as many images per second as batch 1 for cam and
rts (batching is the framework's contract; a Python loop over images would show ~1×).

Defaults: families cam, rts; batches 1, 8, 32 (plus 128 on GPU); sizes 32 and 64 on CPU, 64, 128 and 224
on GPU. Larger runs, e.g. paper-size images on a GPU, or everything on CPU (slow: minutes per cell)::

    python benchmarks/bench_batch_scaling.py --device cuda --sizes 64,128,224 --batches 1,8,32,128
    python benchmarks/bench_batch_scaling.py --families cam,rts,grad,mask --sizes 32,64,128,224

``mask`` runs Algorithm 1 scaled down (``--mask-steps`` outer iterations, MASK runs of
``--mask-iterations``); its absolute speed says little, its scaling with the batch is the point.
"""

from __future__ import annotations

import common
import torch

from aid.attacks.adv2 import make_adv2
from aid.interpreters import build_interpreter
from aid.interpreters.rts import RTSInterpreter, RTSMasker

SPEEDUP_TARGET = 4.0
CHECKED = ("cam", "rts")


def build_attack(name: str, clf, args):
    """A whole ADV² attack against the family ``name`` with the benchmark's step counts."""
    if name == "rts":
        torch.manual_seed(args.seed)
        interp = RTSInterpreter(clf, masker=RTSMasker.from_classifier(clf).to(args.device_obj))
    elif name == "mask":
        interp = build_interpreter("mask", clf, iterations=args.mask_iterations)
        return make_adv2(clf, interp, warm_steps=args.warm_steps, steps=args.mask_steps,
                         reset_iterations=args.mask_iterations, n_reset=max(args.mask_steps, 1))
    else:
        interp = build_interpreter(name, clf)
    return make_adv2(clf, interp, warm_steps=args.warm_steps, steps=args.steps)


def parse_ints(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v.strip()]


def main(argv: list[str] | None = None) -> dict:
    p = common.base_parser(__doc__.split("\n")[0])
    p.add_argument("--families", default="cam,rts", help="comma-separated: cam, rts, grad, mask, gradcam, ig")
    p.add_argument("--batches", default=None, help="default 1,8,32 (1,8,32,128 on GPU; 1,32 with --quick)")
    p.add_argument("--sizes", default=None, help="image sides; default 32,64 on CPU, 64,128,224 on GPU")
    p.add_argument("--warm-steps", type=int, default=None, help="PGD warm start W (default 5; 1 with --quick)")
    p.add_argument("--steps", type=int, default=None, help="ADV2 steps S (default 10; 2 with --quick)")
    p.add_argument("--mask-steps", type=int, default=None, help="ADV2Mask outer iterations (default 3; 1 quick)")
    p.add_argument("--mask-iterations", type=int, default=None, help="MASK iterations (default 20; 3 quick)")
    args = p.parse_args(argv)
    args = common.finish_args(args)
    gpu = args.device_obj.type == "cuda"
    q = args.quick
    batches = parse_ints(args.batches) if args.batches else ([1, 32] if q else [1, 8, 32] + ([128] if gpu else []))
    sizes = parse_ints(args.sizes) if args.sizes else ([32] if q else ([64, 128, 224] if gpu else [32, 64]))
    args.warm_steps = args.warm_steps if args.warm_steps is not None else (1 if q else 5)
    args.steps = args.steps or (2 if q else 10)
    args.mask_steps = args.mask_steps or (1 if q else 3)
    args.mask_iterations = args.mask_iterations or (3 if q else 20)
    families = [f.strip() for f in args.families.split(",") if f.strip()]
    clf = common.build_model(args)

    rows, checks, raw = [], [], {}
    for size in sizes:
        for fam in families:
            attack = build_attack(fam, clf, args)
            data = {b: common.random_batch(b, size, clf.num_classes, args.device_obj, args.seed) for b in batches}
            stats = common.compare(
                {f"b{b}": (lambda xt=data[b], a=attack: a(*xt)) for b in batches},
                args.device_obj, args.repeats, args.warmup,
            )
            raw[f"{fam}/{size}"] = common.asdict_stats(stats)
            ips = {b: b / stats[f"b{b}"].median for b in batches}
            for b in batches:
                s = stats[f"b{b}"]
                rows.append({
                    "family": fam, "size": size, "batch": b, "median_s": s.median, "iqr_s": s.iqr,
                    "images_per_s": ips[b], "speedup_per_image": ips[b] / ips[batches[0]], "extra_mb": s.extra_mb,
                })
            if fam in CHECKED and {1, 32} <= set(batches) and not gpu:
                sp = ips[32] / ips[1]
                checks.append(common.check(f"{fam} {size}px: images/s batch 32 / batch 1", sp,
                                           f">= {SPEEDUP_TARGET}", sp >= SPEEDUP_TARGET))
    steps = f"warm {args.warm_steps} + {args.steps} ADV2 steps (mask: {args.mask_steps} outer iterations)"
    t = common.table(
        f"ADV2 throughput, {steps}, {args.model} on {args.device_obj}",
        ["family", "size", "batch", "median_s", "iqr_s", "images_per_s", "speedup_per_image", "extra_mb"], rows,
        f"speedup_per_image = images/s at this batch / images/s at batch {batches[0]}.",
    )
    return common.report("bench_batch_scaling", args, [t], checks, {"raw": raw, "batches": batches, "sizes": sizes})


if __name__ == "__main__":
    main()
