"""GPU-oriented switches measured where they would be turned on: channels-last weights and bf16 autocast.

Times one targeted PGD step (``PGD.perturb`` with ``--steps`` steps, per step) and one ADV² step
against CAM (the body of ``ADV2.descend``'s loop through ``ADV2.losses``) with the classifier as built
(NCHW, float32), with its weights in ``torch.channels_last`` (what :class:`callbacks.memory_format.ChannelsLast`
does to a run), and under ``torch.autocast(dtype=torch.bfloat16)`` (what ``trainer.precision: bf16-mixed``
does). A switch stays off in the configs where it does not help on the device that runs them.

``torch.compile`` is not among them: ADV² against GRAD differentiates a gradient (double backward),
which compiled graphs do not support, and the other attacks re-trace for every new batch shape.

    python benchmarks/bench_switches.py                 # CPU here; on a GPU machine add --device cuda
"""

from __future__ import annotations

import contextlib
import copy

import common
import torch

from aid.attacks.adv2 import make_adv2
from aid.attacks.pgd import PGD
from aid.attacks.targets import benign_target_maps
from aid.interpreters import build_interpreter


def variants(clf, device: torch.device) -> dict[str, tuple[torch.nn.Module, contextlib.AbstractContextManager]]:
    """name -> (classifier, context the step runs in)."""
    cl = copy.deepcopy(clf).to(memory_format=torch.channels_last)
    return {
        "float32, NCHW (default)": (clf, contextlib.nullcontext),
        "float32, channels_last": (cl, contextlib.nullcontext),
        "bf16 autocast, NCHW": (clf, lambda: torch.autocast(device.type, dtype=torch.bfloat16)),
    }


def main(argv: list[str] | None = None) -> dict:
    p = common.base_parser(__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=None, help="attack steps per timed call (default 10; 2 quick)")
    args = common.finish_args(p.parse_args(argv))
    args.steps = args.steps or (2 if args.quick else 10)
    dev = args.device_obj
    clf = common.build_model(args)
    x, target = common.random_batch(args.batch, args.image_size, clf.num_classes, dev, args.seed)
    contenders = {}
    for name, (model, ctx) in variants(clf, dev).items():
        pgd = PGD(model, eps=8 / 255, alpha=2 / 255, steps=args.steps)
        cam = build_interpreter("cam", model)
        adv2 = make_adv2(model, cam, eps=8 / 255, alpha=1 / 255, steps=args.steps, warm_steps=0)
        tmap = benign_target_maps(cam, model, x)

        def run_pgd(pgd=pgd, ctx=ctx, model=model):
            with common.frozen(model), ctx():
                pgd.perturb(x, target)

        def run_adv2(adv2=adv2, ctx=ctx, model=model, tmap=tmap):
            with common.frozen(model), ctx(), torch.enable_grad():
                x_adv = x.clone()
                for i in range(args.steps):
                    x_adv.requires_grad_(True)
                    loss = adv2.losses(x_adv, target, tmap, i)[0]
                    (g,) = torch.autograd.grad(loss.sum(), x_adv)
                    x_adv = (x_adv.detach() - adv2.alpha * g.sign()).clamp(0, 1)

        contenders[f"PGD step, {name}"] = run_pgd
        contenders[f"ADV2 cam step, {name}"] = run_adv2
    stats = common.compare(contenders, dev, args.repeats, args.warmup)
    rows = []
    for kind in ("PGD step", "ADV2 cam step"):
        ref = stats[f"{kind}, float32, NCHW (default)"].median
        for name in variants(clf, dev):
            s = stats[f"{kind}, {name}"]
            rows.append(common.stats_row(s, per=args.steps, ratio=s.median / ref))
    t = common.table(
        f"Switches, batch {args.batch}, {args.image_size} px, {args.model} on {dev}: time per attack step",
        ["contender", "median_ms", "iqr_ms", "ratio", "extra_mb"], rows,
        "ratio = time / the default (float32, NCHW) of the same kind of step; below 1 the switch helps.",
    )
    return common.report("bench_switches", args, [t], [], {"raw": common.asdict_stats(stats, per=args.steps)})


if __name__ == "__main__":
    main()
