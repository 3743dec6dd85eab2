"""What a paper-scale ADV² evaluation costs on this device, from timed steps, beside its physical limit.

The paper's setting (Appendix B; ``configs/paper/imagenet_*_eval.yaml``): a ResNet-50 at 224 px and
ADV² against CAM with a PGD warm start of 400 steps and 1,200 ADV² steps, over 1,000 images. Timed here,
at batch 64, with random weights (speed does not depend on them), models frozen as in an
attack:

- one PGD step (``PGD.perturb``, one step: forward, cross-entropy, input gradient, signed step; float32);
- one ADV² step against CAM (the body of ``ADV2.descend``'s loop, as ``bench_adv2_cost.py`` times it; float32);
- the physical limit: one forward and one input-gradient backward of the classifier under bf16 autocast,
  nothing else (every attack step needs at least that; bf16 is the fastest arithmetic a GPU offers, which
  the paper's float32 attacks do not use), and the same in float32; the faster of the two is the limit
  (on a CPU without bf16 units that may be float32).

Estimate = ceil(images / batch) batches × (warm steps × PGD step + steps × ADV² step); limit = the same
batches × (warm + steps) × that forward + backward. On one device; with N GPUs under DDP divide by N.

    python benchmarks/bench_paper_scale.py --device cuda     # the acceptance run on a GPU
    python benchmarks/bench_paper_scale.py --device cpu      # the same on a CPU (minutes per round)
"""

from __future__ import annotations

import math

import bench_adv2_cost as adv2_cost
import common
import torch
import torch.nn.functional as F

from aid.attacks.pgd import PGD, signed_step


def main(argv: list[str] | None = None) -> dict:
    p = common.base_parser(__doc__.split("\n")[0], batch=64, image_size=224, repeats=3)
    p.set_defaults(model="resnet50", num_classes=1000)
    p.add_argument("--images", type=int, default=1000, help="images attacked (the paper's 1,000)")
    p.add_argument("--warm-steps", type=int, default=400, help="PGD warm-start steps (the paper's 400)")
    p.add_argument("--adv2-steps", type=int, default=1200, help="ADV² steps against CAM (the paper's 1,200)")
    args = p.parse_args(argv)
    if args.quick:  # tiny sizes: checks that the script runs
        args.image_size, args.model, args.num_classes = 64, "resnet18", 10
    args = common.finish_args(args)
    dev = args.device_obj
    clf = common.build_model(args)
    x, target = common.random_batch(args.batch, args.image_size, clf.num_classes, dev, args.seed)
    x_adv0 = adv2_cost.start_point(x, args.seed)

    pgd = PGD(clf, eps=adv2_cost.EPS, alpha=adv2_cost.ALPHA, steps=1)
    args.steps, args.mask_iterations = args.adv2_steps, 0  # what bench_adv2_cost's helpers read
    cam = adv2_cost.build_family("cam", clf, args)
    attack = adv2_cost.make_attack(clf, cam, args, steps=args.adv2_steps)
    tmap = adv2_cost.target_map_for(cam, clf, x, target, args.seed)

    def fwd_bwd(dtype: torch.dtype | None):
        def run():
            xa = x_adv0.detach().requires_grad_(True)
            with torch.autocast(dev.type, dtype=dtype or torch.bfloat16, enabled=dtype is not None):
                loss = F.cross_entropy(clf(xa).float(), target)
            (g,) = torch.autograd.grad(loss, xa)
            return signed_step(xa, x, g, adv2_cost.ALPHA, adv2_cost.EPS)

        return run

    with common.frozen(clf):
        step, _ = adv2_cost.step_fn(attack, x, x_adv0, target, tmap, step=args.adv2_steps // 2)
        stats = common.compare({
            "PGD step (float32)": lambda: pgd.perturb(x, target, x_adv0),
            "ADV2-CAM step (float32)": step,
            "forward + backward, bf16 autocast": fwd_bwd(torch.bfloat16),
            "forward + backward, float32": fwd_bwd(None),
        }, dev, args.repeats, args.warmup)
    batches = math.ceil(args.images / args.batch)
    t_pgd = stats["PGD step (float32)"].median
    t_adv2 = stats["ADV2-CAM step (float32)"].median
    # The card's fastest arithmetic: bf16 on a GPU; a CPU without bf16 units may be faster in float32.
    limits = ("forward + backward, bf16 autocast", "forward + backward, float32")
    limit_name = min(limits, key=lambda n: stats[n].median)
    t_limit = stats[limit_name].median
    ours_h = batches * (args.warm_steps * t_pgd + args.adv2_steps * t_adv2) / 3600
    limit_h = batches * (args.warm_steps + args.adv2_steps) * t_limit / 3600
    steps_table = common.table(
        f"Timed steps, {args.model}, {args.image_size} px, batch {args.batch}, on {dev}",
        ["contender", "median_ms", "iqr_ms", "ratio", "extra_mb"],
        [common.stats_row(s, ratio=s.median / t_limit) for s in stats.values()],
        f"ratio = step time / the limit ({limit_name}).",
    )
    estimate = common.table(
        f"ADV2-CAM, {args.warm_steps} + {args.adv2_steps} steps over {args.images} images "
        f"({batches} batches of {args.batch}), one {dev.type} device",
        ["what", "hours", "ratio"],
        [{"what": "our steps (PGD warm start, then ADV2 against CAM; float32)", "hours": ours_h,
          "ratio": ours_h / limit_h},
         {"what": f"the limit ({limit_name} per step)", "hours": limit_h, "ratio": 1.0}],
        "hours = batches x (warm steps x PGD step + ADV2 steps x ADV2 step) / 3600; the limit counts every step "
        "at the faster forward + backward (bf16 on a GPU). Not counted: the target maps and the final "
        "evaluation (a few forward passes per batch).",
    )
    return common.report("bench_paper_scale", args, [steps_table, estimate], [],
                         {"raw": common.asdict_stats(stats), "estimate_h": {"ours": ours_h, "limit": limit_h}})


if __name__ == "__main__":
    main()
