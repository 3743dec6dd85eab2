"""Cost of one ADV² step per interpreter family, relative to one PGD step (same model, batch, device).

One step is timed through the attacks' own pieces, as their loops run them (models frozen as
``Attack.__call__`` freezes them):

- PGD: ``PGD(steps=1).perturb(x, target, x_adv)`` (forward, cross-entropy, input gradient, signed step);
- ADV² (grad, cam, rts, and grad_fused / ig / gradcam with ``--families``; grad_fused is GRAD with
  ``fused=True``, h(z) as compiled kernels, compiled during the warm-up rounds): the body of ``ADV2.descend``'s loop:
  ``ADV2.losses(x_adv, target, target_map, step)``, the target confidence and ``BestIterate.update``,
  ``torch.autograd.grad`` of the summed loss, ``signed_step``;
- ADV² against MASK (Algorithm 1, ``ADV2Mask``): one outer iteration without its reset:
  ``MaskFollower.update`` (``n_step`` Adam steps on the map), ``prediction_step`` and
  ``interpretation_step`` (``n_step`` look-ahead steps with a double backward, ``n_bs`` bisection
  forwards). The periodical reset (a MASK run of ``reset_iterations``) is timed apart and shown
  amortised over ``n_reset`` iterations.

``--check-call`` cross-checks with whole attacks: per-step cost = (T(S steps) − T(1 step)) / (S − 1) of
``attack(x, target, target_map)`` with no warm start (fixed costs such as the final evaluation cancel).

Two bare steps give the floor of any GRAD attack at this size: a bare PGD step (forward, cross-entropy,
input gradient, signed step) and a bare double-backward step (the same, but the input gradient is taken
with ``create_graph`` and a second gradient is taken through it); informative, the same through the smooth
ReLU h(z), and on a CPU once more through PyTorch ops instead of the C++ kernels
(:mod:`aid.interpreters.smooth_relu_native`). Targets at batch 32: GRAD (and
grad_fused) ≤ max(2.8, 1.1 × bare double-backward / bare PGD), CAM ≤ 1.5×, RTS ≤ 2.5× one PGD step (all
from the same run).
``--profile FAMILY`` prints torch.profiler's top operators of that family's step (and of the PGD step)
to show where the floor is.

    python benchmarks/bench_adv2_cost.py
    python benchmarks/bench_adv2_cost.py --profile cam
"""

from __future__ import annotations

import os

import common
import torch
import torch.nn.functional as F

from aid.attacks.adv2 import make_adv2
from aid.attacks.mask_follower import MaskFollower
from aid.attacks.pgd import PGD, signed_step
from aid.attacks.schedules import BestIterate
from aid.attacks.strategies import unique_modules
from aid.attacks.targets import benign_target_maps
from aid.interpreters import build_interpreter, smooth_relu_native
from aid.interpreters.rts import RTSInterpreter, RTSMasker
from aid.interpreters.smooth_relu import smooth_relu

EPS, ALPHA = 0.031, 1 / 255
TARGETS = {"grad": 2.8, "cam": 1.5, "rts": 2.5}   # grad: at least; see grad_target
#: What one step runs, for reading the ratios (f = the classifier).
WORK = {
    "pgd": "f fwd + bwd",
    "bare pgd": "f fwd, CE, input grad, signed_step (no checks, no bookkeeping)",
    "bare double bwd": "f fwd, CE, input grad with create_graph, grad of CE + |grad| (the GRAD floor)",
    "bare double bwd, h(z)": "bare double bwd with the smooth ReLU backward h(z), as ADV2 against GRAD needs",
    "bare double bwd, h(z), ops": "the same with h(z) through PyTorch ops (AID_NATIVE_SMOOTH_RELU=0), not C++",
    "grad": "one f fwd (logits and map), bwd with graph, double bwd through h(z)",
    "grad_fused": "grad, with h(z) and its derivatives as compiled kernels (fused=True)",
    "cam": "one backbone fwd (logits and CAM from the same features) + bwd",
    "gradcam": "f fwd + bwd (l_prd); f fwd, head bwd with graph, double bwd (map)",
    "ig": "f fwd + bwd (l_prd); (n+1)-image path fwd, bwd with graph, double bwd (map)",
    "rts": "one masker fwd + bwd (encoder = exact copy of f: its logits serve l_prd and l_enc; decoder: mask)",
    "mask": "n_step x (f fwd+bwd) update; f fwd+bwd pred; n_step x look-ahead double bwd; n_bs x f fwd",
}


def build_family(name: str, clf, args, mask_iterations: int | None = None):
    """The interpreter of a family, built as the attacks would use it."""
    if name == "rts":
        torch.manual_seed(args.seed)
        return RTSInterpreter(clf, masker=RTSMasker.from_classifier(clf).to(args.device_obj))
    if name == "mask":
        return build_interpreter("mask", clf, iterations=mask_iterations or args.mask_iterations)
    if name == "ig":
        return build_interpreter("ig", clf, steps=args.ig_steps)
    if name == "grad_fused":
        return build_interpreter("grad", clf, fused=True)
    return build_interpreter(name, clf)


def make_attack(clf, interp, args, steps: int, reset_iterations: int | None = None):
    kw = dict(eps=EPS, alpha=ALPHA, steps=steps, warm_steps=0)
    if interp.name == "mask":
        kw.update(reset_iterations=reset_iterations or args.reset_iterations)
    return make_adv2(clf, interp, **kw)


def start_point(x: torch.Tensor, seed: int) -> torch.Tensor:
    """A point inside the ε-ball around x (where the steps are taken)."""
    g = torch.Generator().manual_seed(seed + 1)
    u = torch.rand(x.shape, generator=g).to(x.device, x.dtype)
    return (x + (2 * u - 1) * EPS).clamp(0, 1)


def target_map_for(interp, clf, x, target, seed: int) -> torch.Tensor:
    """The benign map as the attack's default (a seeded random map for MASK: its value costs nothing)."""
    if interp.name == "mask":
        g = torch.Generator().manual_seed(seed + 2)
        return torch.rand(x.shape[0], 1, *x.shape[-2:], generator=g).to(x.device)
    return benign_target_maps(interp, clf, x)


def step_fn(attack, x, x_adv0, target, target_map, step: int):
    """A callable running one step of ``attack`` from x_adv0 (models must be frozen around it)."""
    if attack.name == "adv2_mask":
        follower = MaskFollower(attack.interpreter, target, attack.n_step, attack.mask_lr, attack.reset_iterations)
        follower.reset(x_adv0)

        def mask_step():
            follower.update(x_adv0)
            x1 = attack.prediction_step(x_adv0, x, target, step)
            return attack.interpretation_step(x1, x, target, target_map, follower)

        return mask_step, follower
    best = BestIterate(x_adv0, attack.kappa)

    def adv2_step():
        # The body of ADV2.descend's loop.
        x_adv = x_adv0.detach().requires_grad_(True)
        loss, l_int, logits = attack.losses(x_adv, target, target_map, step)
        conf = logits.detach().float().softmax(dim=1).gather(1, target[:, None]).squeeze(1)
        best.update(x_adv, l_int, conf, step=step)
        (grad,) = torch.autograd.grad(loss.sum(), x_adv)
        return signed_step(x_adv, x, grad, attack.alpha, attack.eps)

    return adv2_step, None


def bare_steps(clf, x, x_adv0, target) -> dict:
    """The bare steps that bound a GRAD attack's cost: PGD's and one with a double backward (the floor),
    and, informative, that double backward through the smooth ReLU h(z) that ADV² against GRAD needs (with
    ReLU's own derivative the second gradient misses the map's dependence on x, §3.2)."""

    def bare_pgd():
        xa = x_adv0.detach().requires_grad_(True)
        (g,) = torch.autograd.grad(F.cross_entropy(clf(xa), target), xa)
        return signed_step(xa, x, g, ALPHA, EPS)

    def bare_double():
        xa = x_adv0.detach().requires_grad_(True)
        ce = F.cross_entropy(clf(xa), target)
        (g,) = torch.autograd.grad(ce, xa, create_graph=True)
        (g2,) = torch.autograd.grad(ce + g.abs().sum(), xa)
        return signed_step(xa, x, g2, ALPHA, EPS)

    def bare_double_h():
        with smooth_relu(clf):
            return bare_double()

    def bare_double_h_ops():
        old = os.environ.get(smooth_relu_native.ENV)
        os.environ[smooth_relu_native.ENV] = "0"
        try:
            return bare_double_h()
        finally:
            if old is None:
                del os.environ[smooth_relu_native.ENV]
            else:
                os.environ[smooth_relu_native.ENV] = old

    steps = {"bare pgd": bare_pgd, "bare double bwd": bare_double, "bare double bwd, h(z)": bare_double_h}
    if smooth_relu_native.applies(x):  # the same step through PyTorch ops instead of the C++ kernels
        steps["bare double bwd, h(z), ops"] = bare_double_h_ops
    return steps


def grad_target(stats) -> float:
    """GRAD's bound: max(2.8, 1.1 × the bare double-backward / bare PGD ratio of the same run (paired))."""
    floor = common.paired_ratio(stats["bare double bwd"], stats["bare pgd"])
    return max(TARGETS["grad"], 1.1 * floor)


def bench_steps(args, clf, x, target, families):
    dev = args.device_obj
    x_adv0 = start_point(x, args.seed)
    pgd = PGD(clf, eps=EPS, alpha=ALPHA, steps=1)
    contenders = {"pgd": lambda: pgd.perturb(x, target, x_adv0)}
    interps, attacks, followers = {}, {}, {}
    for name in families:
        interps[name] = build_family(name, clf, args)
        attacks[name] = make_attack(clf, interps[name], args, steps=args.steps)
    models = unique_modules([clf] + [m for a in attacks.values() for m in a.models()])
    with common.frozen(*models):
        contenders.update(bare_steps(clf, x, x_adv0, target))
        for name, attack in attacks.items():
            tmap = target_map_for(interps[name], clf, x, target, args.seed)
            contenders[name], followers[name] = step_fn(attack, x, x_adv0, target, tmap, step=args.steps // 2)
        stats = common.compare(contenders, dev, args.repeats, args.warmup)
        reset = None
        if "mask" in attacks:
            f = followers["mask"]
            reset = common.time_one(lambda: f.reset(x_adv0), dev, args.reset_repeats, 1)
    ref = stats["pgd"].median
    targets = {**TARGETS, "grad": grad_target(stats), "grad_fused": grad_target(stats)}
    rows, checks = [], []
    for name, s in stats.items():
        paired = common.paired_ratio(s, stats["pgd"])
        row = common.stats_row(s, ratio=s.median / ref, paired=paired, target=targets.get(name),
                               work=WORK.get(name, ""))
        row["contender"] = name if name.startswith(("pgd", "bare")) else f"adv2 {name}"
        rows.append(row)
        if name in targets:
            r = paired
            checks.append(common.check(f"ADV2 {name} step / PGD step (batch {args.batch}, {args.image_size} px)",
                                       r, f"<= {targets[name]:.2f}", r <= targets[name]))
    floor = common.paired_ratio(stats["bare double bwd"], stats["bare pgd"])
    checks.append(common.check(f"bare double bwd / bare PGD (informative, {args.image_size} px)", floor,
                               "-", True))
    smooth = common.paired_ratio(stats["bare double bwd, h(z)"], stats["bare double bwd"])
    checks.append(common.check(f"bare double bwd through h(z) / bare double bwd (informative, {args.image_size} px)",
                               smooth, "-", True))
    if "bare double bwd, h(z), ops" in stats:
        ops = common.paired_ratio(stats["bare double bwd, h(z), ops"], stats["bare double bwd"])
        checks.append(common.check(f"the same, h(z) through PyTorch ops (informative, {args.image_size} px)",
                                   ops, "-", True))
    for name in ("grad", "grad_fused"):
        if name in stats:
            r = common.paired_ratio(stats[name], stats["bare double bwd, h(z)"])
            checks.append(common.check(f"ADV2 {name} step / bare double bwd through h(z) (informative, "
                                       f"{args.image_size} px)", r, "-", True))
    if reset is not None:
        a = attacks["mask"]
        amortised = stats["mask"].median + reset.median / a.n_reset
        rows.append({
            "contender": f"adv2 mask + reset/{a.n_reset}",
            "median_ms": 1e3 * amortised, "iqr_ms": None, "ratio": amortised / ref, "extra_mb": reset.extra_mb,
            "work": f"+ a {a.reset_iterations}-iteration MASK run every {a.n_reset} iterations "
                    f"(reset alone: {1e3 * reset.median:.1f} ms)",
        })
    t = common.table(
        f"ADV2 step cost vs one PGD step, batch {args.batch}, {args.image_size} px, {args.model}",
        ["contender", "median_ms", "iqr_ms", "ratio", "paired", "target", "extra_mb", "work"], rows,
        "ratio = step time / PGD step time (medians); paired = median over rounds of the same ratio within a "
        "round (the checks use it; the floor is bare double bwd / bare pgd, paired). "
        "extra_mb = memory a step adds (CPU: resident pages).",
    )
    raw = common.asdict_stats(stats)
    if reset is not None:
        raw["mask_reset"] = reset.summary()
    return t, checks, raw


def bench_calls(args, clf, x, target, families):
    """Per-step cost from whole attack calls: (T(S) − T(1)) / (S − 1)."""
    dev, s_long = args.device_obj, args.call_steps
    contenders = {}
    pgd_long = PGD(clf, eps=EPS, alpha=ALPHA, steps=s_long)
    pgd_short = PGD(clf, eps=EPS, alpha=ALPHA, steps=1)
    contenders["pgd/long"] = lambda: pgd_long(x, target)
    contenders["pgd/short"] = lambda: pgd_short(x, target)
    steps_of = {"pgd": s_long}
    for name in families:
        # MASK's own map (the attack's final evaluation) is a fixed cost that cancels; a short one keeps
        # it from drowning the difference in noise.
        # it from drowning the difference in noise; so do short resets (both runs make two).
        few = min(args.reset_iterations, 10)
        interp = build_family(name, clf, args, mask_iterations=few)
        tmap = target_map_for(interp, clf, x, target, args.seed)
        long_ = make_attack(clf, interp, args, steps=s_long, reset_iterations=few)
        if name == "mask":  # the long run must not pass a reset (they cancel only in equal numbers)
            long_ = make_attack(clf, interp, args, steps=min(s_long, long_.n_reset), reset_iterations=few)
        short = make_attack(clf, interp, args, steps=1, reset_iterations=few)
        steps_of[name] = long_.steps
        contenders[f"{name}/long"] = lambda a=long_, m=tmap: a(x, target, m)
        contenders[f"{name}/short"] = lambda a=short, m=tmap: a(x, target, m)
    stats = common.compare(contenders, dev, args.repeats, args.warmup)
    per = {n: (stats[f"{n}/long"].median - stats[f"{n}/short"].median) / (s - 1) for n, s in steps_of.items()}
    rows = [{"contender": n, "steps": steps_of[n], "per_step_ms": 1e3 * v, "ratio": v / per["pgd"],
             "target": TARGETS.get(n)} for n, v in per.items()]
    t = common.table(
        f"Cross-check from whole calls: (T({s_long} steps) - T(1 step)) / {s_long - 1}, batch {args.batch}",
        ["contender", "steps", "per_step_ms", "ratio", "target"], rows,
        "MASK: resets at the first and last iteration of both runs cancel; its row excludes resets. "
        "Each row is a difference of two noisy medians: trust the step table, use this one to confirm it.",
    )
    return t, common.asdict_stats(stats)


def profile_family(args, clf, x, target, family: str) -> None:
    """torch.profiler top operators of a few steps of one family and of PGD."""
    from torch.profiler import ProfilerActivity, profile

    cuda = args.device_obj.type == "cuda"
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    sort = "self_cuda_time_total" if cuda else "self_cpu_time_total"
    x_adv0 = start_point(x, args.seed)
    interp = build_family(family, clf, args)
    attack = make_attack(clf, interp, args, steps=args.steps)
    pgd = PGD(clf, eps=EPS, alpha=ALPHA, steps=1)
    with common.frozen(*unique_modules([clf, *attack.models()])):
        tmap = target_map_for(interp, clf, x, target, args.seed)
        fn, _ = step_fn(attack, x, x_adv0, target, tmap, step=args.steps // 2)
        for label, f in ((f"ADV2 {family}", fn), ("PGD", lambda: pgd.perturb(x, target, x_adv0))):
            f()
            with profile(activities=acts, record_shapes=False) as prof:
                for _ in range(args.profile_steps):
                    f()
                common.sync(args.device_obj)
            print(f"\n### torch.profiler: {args.profile_steps} steps of {label}, batch {args.batch}\n")
            print(prof.key_averages().table(sort_by=sort, row_limit=args.profile_rows))


def main(argv: list[str] | None = None) -> dict:
    p = common.base_parser(__doc__.split("\n")[0])
    p.add_argument("--families", default="grad,cam,rts,mask",
                   help="comma-separated: grad, cam, rts, mask, grad_fused, ig, gradcam")
    p.add_argument("--steps", type=int, default=150, help="ADV2 steps the attack is built with (schedules)")
    p.add_argument("--mask-iterations", type=int, default=300, help="MASK interpreter iterations")
    p.add_argument("--reset-iterations", type=int, default=None,
                   help="MASK iterations of an ADV2Mask reset (default 100; 5 with --quick)")
    p.add_argument("--reset-repeats", type=int, default=None, help="timed resets (default 3; 1 with --quick)")
    p.add_argument("--ig-steps", type=int, default=16, help="IG intervals (family ig only)")
    p.add_argument("--check-call", action="store_true", help="cross-check with whole attack calls")
    p.add_argument("--call-steps", type=int, default=None, help="S of --check-call (default 10; 3 with --quick)")
    p.add_argument("--profile", default=None, metavar="FAMILY", help="print torch.profiler top ops of a family")
    p.add_argument("--profile-steps", type=int, default=3)
    p.add_argument("--profile-rows", type=int, default=20)
    args = common.finish_args(p.parse_args(argv))
    args.reset_iterations = args.reset_iterations or (5 if args.quick else 100)
    args.reset_repeats = args.reset_repeats or (1 if args.quick else 3)
    args.call_steps = args.call_steps or (3 if args.quick else 10)
    families = [f.strip() for f in args.families.split(",") if f.strip()]
    clf = common.build_model(args)
    x, target = common.random_batch(args.batch, args.image_size, clf.num_classes, args.device_obj, args.seed)
    t, checks, raw = bench_steps(args, clf, x, target, families)
    tables = [t]
    if args.check_call:
        t2, raw2 = bench_calls(args, clf, x, target, families)
        tables.append(t2)
        raw["calls"] = raw2
    payload = common.report("bench_adv2_cost", args, tables, checks, {"raw": raw})
    if args.profile:
        profile_family(args, clf, x, target, args.profile)
    return payload


if __name__ == "__main__":
    main()
