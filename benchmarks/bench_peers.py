"""Our PGD and interpreters against the libraries people use: torchattacks, captum, pytorch-grad-cam.

(a) One targeted L∞ PGD step: ``aid.attacks.PGD(clf, eps=8/255, alpha=2/255, steps=S)`` against
    ``torchattacks.PGD(clf, eps=8/255, alpha=2/255, steps=S, random_start=False)`` in targeted-by-label
    mode (labels passed = target classes). Both run S steps from the same [0, 1] batch; the time per
    call is divided by S. Ours includes its input check, freezing the model and the final evaluation
    (one extra forward pass that fills ``success`` / ``confidence``); torchattacks returns only the
    images. Those come once per call, so the ratio per step depends on S: S = 60 by default, the PGD
    that the main job evaluates (``pgd: {steps: 60}``), where the evaluation adds one forward pass per 60
    steps (one per 10 at S = 10). A breakdown row times our loop alone (``perturb``), the check and the
    evaluation.
(b) Interpreters, each producing the same (B, 1, H, W) min-max-normalised map unless said otherwise:
    GRAD: ours vs captum ``Saliency(abs=True)`` (+ channel max + per-image min-max = our map; the raw
    (B, C, H, W) saliency is timed too); Grad-CAM: ours vs captum ``LayerGradCam(relu_attributions=True)``
    on the feature layer (+ bilinear upsampling + min-max) vs pytorch-grad-cam ``GradCAM`` with
    ``ClassifierOutputTarget`` (numpy output, its own min-max and cv2 resize, hooks registered per call,
    untimed); IG: ours (trapezoid, ``steps = n − 1`` intervals) vs captum ``IntegratedGradients(n_steps=n,
    method="riemann_trapezoid")`` (+ |·|, channel sum, min-max): both evaluate n gradients on the same
    path points; ours by default in passes of max(B, 2^19 / pixels) path images on a CPU (``default_pass``), captum
    all B·n at once (its default) and, for reference, with the same ``internal_batch_size``.

Peers get the model in eval mode with its parameters' ``requires_grad`` as a user leaves them (True);
ours freeze the parameters inside their call. Acceptance (batch 32): PGD ratio ours/torchattacks ≤ 1.05;
GRAD, Grad-CAM and IG ≤ 1.02× captum; Grad-CAM faster than pytorch-grad-cam.

    python benchmarks/bench_peers.py                # acceptance settings (batch 32, S = 60, 5 PGD rounds,
                                                    # 10 IG rounds, 30 for the cheap GRAD and Grad-CAM calls)
    python benchmarks/bench_peers.py --profile      # + torch.profiler top ops of both PGDs
"""

from __future__ import annotations

import contextlib

import common
import torch
import torch.nn.functional as F
from captum.attr import IntegratedGradients as CaptumIG
from captum.attr import LayerGradCam, Saliency
from pytorch_grad_cam import GradCAM as PGCGradCAM
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from torchattacks import PGD as TAPGD

from aid.attacks.pgd import PGD
from aid.interpreters import build_interpreter
from aid.interpreters.integrated_gradients import default_pass
from aid.models import check_images

EPS, ALPHA = 8 / 255, 2 / 255
PAIRED = "paired = median over rounds of time / captum's time in the same round (the checks use it)."


def minmax(m: torch.Tensor) -> torch.Tensor:
    """Per-image min-max of maps (B, 1, H, W), as every map of ours is normalised."""
    flat = m.flatten(1)
    lo, hi = flat.min(1, keepdim=True).values, flat.max(1, keepdim=True).values
    return ((flat - lo) / (hi - lo).clamp_min(1e-8)).view_as(m)


def bench_pgd(args, clf, x, target) -> tuple[dict, list, dict]:
    steps = args.steps
    ours = PGD(clf, eps=EPS, alpha=ALPHA, steps=steps)
    theirs = TAPGD(clf, eps=EPS, alpha=ALPHA, steps=steps, random_start=False)
    theirs.set_mode_targeted_by_label(quiet=True)
    agree = (ours(x, target).x_adv - theirs(x, target)).abs().max().item()

    def perturb():
        with common.frozen(clf):
            ours.perturb(x, target)

    stats = common.compare(
        {
            "ours PGD": lambda: ours(x, target),
            "torchattacks PGD": lambda: theirs(x, target),
            "ours PGD.perturb (loop only)": perturb,
            "ours check_images": lambda: check_images(x, clf),
            "ours evaluate (1 forward)": lambda: ours.evaluate(x, target),
        },
        args.device_obj, args.pgd_repeats, args.warmup,
    )
    ref = stats["torchattacks PGD"].median
    rows = []
    for name, s in stats.items():
        per = steps if "PGD" in name else 1
        pgd = "PGD" in name
        rows.append(common.stats_row(s, per=per, unit="per step" if per > 1 else "per call",
                                     ratio=s.median / ref if pgd else None,
                                     paired=common.paired_ratio(s, stats["torchattacks PGD"]) if pgd else None))
    rows[0]["max_abs_diff"] = agree
    ratio = common.paired_ratio(stats["ours PGD"], stats["torchattacks PGD"])
    loop = common.paired_ratio(stats["ours PGD.perturb (loop only)"], stats["torchattacks PGD"])
    checks = [
        common.check(f"PGD step ours/torchattacks (batch {args.batch}, {args.image_size} px)", ratio, "<= 1.05",
                     ratio <= 1.05),
        common.check("PGD step, our loop only/torchattacks (informative)", loop, "<= 1.05", loop <= 1.05),
    ]
    t = common.table(
        f"(a) targeted PGD, {steps} steps, batch {args.batch}, {args.image_size} px: time per step",
        ["contender", "unit", "median_ms", "iqr_ms", "ratio", "paired", "extra_mb", "max_abs_diff"], rows,
        "ratio = ours / torchattacks per step (medians); paired = median over rounds of the same ratio within a "
        "round (the checks use it); max_abs_diff = max |x_adv ours - x_adv torchattacks|. "
        "check_images and evaluate are part of 'ours PGD' once per call.",
    )
    return t, checks, common.asdict_stats(stats)


def bench_interpreters(args, clf, x, target) -> tuple[list, list, dict]:
    dev, reps, warm = args.device_obj, args.repeats, args.warmup
    map_reps = args.map_repeats  # GRAD and Grad-CAM calls are cheap: more rounds resolve a 2 % difference
    size = x.shape[-2:]
    layer_name, layer = common.feature_layer(clf)
    tables, checks, raw = [], [], {}

    # GRAD
    grad = build_interpreter("grad", clf)
    sal = Saliency(clf)

    def captum_grad():
        return minmax(sal.attribute(x, target=target, abs=True).amax(dim=1, keepdim=True))

    diff = (grad(x, target) - captum_grad()).abs().max().item()
    s = common.compare(
        {
            "ours grad": lambda: grad(x, target),
            "captum Saliency + channel max + min-max": captum_grad,
            "captum Saliency (raw B×C×H×W)": lambda: sal.attribute(x, target=target, abs=True),
        },
        dev, map_reps, warm,
    )
    peer = s["captum Saliency + channel max + min-max"]
    rows = [common.stats_row(v, ratio=v.median / peer.median, paired=common.paired_ratio(v, peer)) for v in s.values()]
    rows[1]["max_abs_diff"] = diff
    tables.append(common.table(
        f"(b) GRAD map, batch {args.batch}",
        ["contender", "median_ms", "iqr_ms", "ratio", "paired", "extra_mb", "max_abs_diff"], rows,
        f"ratio = time / captum's (same map). {PAIRED}",
    ))
    r = common.paired_ratio(s["ours grad"], peer)
    checks.append(common.check(f"GRAD ours/captum ({args.image_size} px)", r, "<= 1.02", r <= 1.02))
    raw["grad"] = common.asdict_stats(s)

    # Grad-CAM
    gradcam = build_interpreter("gradcam", clf)
    cam = build_interpreter("cam", clf)
    lgc = LayerGradCam(clf, layer)

    def captum_gradcam():
        a = lgc.attribute(x, target=target, relu_attributions=True)
        return minmax(F.interpolate(a, size=size, mode="bilinear", align_corners=False))

    targets_list = [int(c) for c in target.tolist()]

    def pgc_run(c):
        return c(input_tensor=x, targets=[ClassifierOutputTarget(k) for k in targets_list])

    pgc = common.Contender(run=pgc_run, context=lambda: PGCGradCAM(model=clf, target_layers=[layer]))
    ours_map = gradcam(x, target)
    with PGCGradCAM(model=clf, target_layers=[layer]) as c:
        pgc_map = torch.as_tensor(pgc_run(c), device=ours_map.device)[:, None]
    diffs = {
        "captum LayerGradCam + upsample + min-max": (ours_map - captum_gradcam()).abs().max().item(),
        "pytorch-grad-cam GradCAM": (ours_map - pgc_map).abs().max().item(),
    }
    s = common.compare(
        {
            "ours gradcam": lambda: gradcam(x, target),
            "ours cam (Eqn 7, no backward)": lambda: cam(x, target),
            "captum LayerGradCam + upsample + min-max": captum_gradcam,
            "pytorch-grad-cam GradCAM": pgc,
        },
        dev, map_reps, warm,
    )
    peer = s["captum LayerGradCam + upsample + min-max"]
    rows = [common.stats_row(v, ratio=v.median / peer.median, paired=common.paired_ratio(v, peer),
                             max_abs_diff=diffs.get(k)) for k, v in s.items()]
    tables.append(common.table(
        f"(b) Grad-CAM on {layer_name}, batch {args.batch}",
        ["contender", "median_ms", "iqr_ms", "ratio", "paired", "extra_mb", "max_abs_diff"], rows,
        f"ratio = time / captum's. {PAIRED} pytorch-grad-cam returns numpy maps (min-max, then cv2 resize), so its "
        "max_abs_diff includes the different order of resize and normalisation.",
    ))
    r1 = common.paired_ratio(s["ours gradcam"], peer)
    r2 = common.paired_ratio(s["ours gradcam"], s["pytorch-grad-cam GradCAM"])
    checks.append(common.check(f"Grad-CAM ours/captum ({args.image_size} px)", r1, "<= 1.02", r1 <= 1.02))
    checks.append(common.check("Grad-CAM ours/pytorch-grad-cam", r2, "< 1.0", r2 < 1.0))
    raw["gradcam"] = common.asdict_stats(s)

    # Integrated Gradients
    n = args.ig_steps
    ig = build_interpreter("ig", clf, steps=n - 1)
    cig = CaptumIG(clf)

    def captum_ig(internal_batch_size=None):
        a = cig.attribute(x, baselines=0.0, target=target, n_steps=n, method="riemann_trapezoid",
                          internal_batch_size=internal_batch_size)
        return minmax(a.abs().sum(dim=1, keepdim=True))

    diff = (ig(x, target) - captum_ig()).abs().max().item()
    passes = default_pass(x)  # ours by default
    same_passes = f"captum IntegratedGradients, internal_batch_size={passes}"
    s = common.compare(
        {
            "ours ig": lambda: ig(x, target),
            "captum IntegratedGradients": captum_ig,
            same_passes: lambda: captum_ig(passes),
        },
        dev, reps, warm,
    )
    peer = s["captum IntegratedGradients"]
    rows = [common.stats_row(v, ratio=v.median / peer.median, paired=common.paired_ratio(v, peer)) for v in s.values()]
    rows[1]["max_abs_diff"] = diff
    tables.append(common.table(
        f"(b) Integrated Gradients, {n} gradient evaluations, batch {args.batch}",
        ["contender", "median_ms", "iqr_ms", "ratio", "paired", "extra_mb", "max_abs_diff"], rows,
        f"{PAIRED} ours: steps = n - 1 trapezoid intervals, by default {passes} path images per pass "
        "(internal_batch_size None: max(B, 2^19 / pixels) on a CPU, max(B, 2^22 / pixels) elsewhere); "
        "captum: n_steps = n, riemann_trapezoid (same points), by default all "
        "B·n path images in one pass; the last row gives captum our passes.",
    ))
    r = common.paired_ratio(s["ours ig"], peer)
    r_same = common.paired_ratio(s["ours ig"], s[same_passes])
    checks.append(common.check(f"IG ours/captum ({args.image_size} px)", r, "<= 1.02", r <= 1.02))
    checks.append(common.check(f"IG ours/captum with the same passes ({args.image_size} px, informative)", r_same,
                               "-", True))
    raw["ig"] = common.asdict_stats(s)
    return tables, checks, raw


def profile_pgd(args, clf, x, target) -> None:
    """Print torch.profiler's top operators for one call of each PGD."""
    from torch.profiler import ProfilerActivity, profile

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if args.device_obj.type == "cuda" else [])
    sort = "self_cuda_time_total" if args.device_obj.type == "cuda" else "self_cpu_time_total"
    ours = PGD(clf, eps=EPS, alpha=ALPHA, steps=args.steps)
    theirs = TAPGD(clf, eps=EPS, alpha=ALPHA, steps=args.steps, random_start=False)
    theirs.set_mode_targeted_by_label(quiet=True)
    for name, fn in (("ours", lambda: ours(x, target)), ("torchattacks", lambda: theirs(x, target))):
        fn()
        with profile(activities=acts) as prof:
            fn()
        print(f"\n### torch.profiler, {name} PGD ({args.steps} steps)\n")
        print(prof.key_averages().table(sort_by=sort, row_limit=args.profile_rows))


def main(argv: list[str] | None = None) -> dict:
    p = common.base_parser(__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=None,
                   help="PGD steps S (default 60, the main job's evaluation PGD; 3 with --quick)")
    p.add_argument("--pgd-repeats", type=int, default=None,
                   help="timed rounds of the PGD table (default --repeats / 2, at least 3; 2 with --quick)")
    p.add_argument("--ig-steps", type=int, default=None, help="IG gradient evaluations n (default 32; 8 quick)")
    p.add_argument("--map-repeats", type=int, default=None,
                   help="timed rounds of the GRAD and Grad-CAM tables (default 3 x --repeats; 2 with --quick)")
    p.add_argument("--only", choices=["pgd", "interpreters"], default=None, help="run one part")
    p.add_argument("--profile", action="store_true", help="print torch.profiler top ops of both PGDs")
    p.add_argument("--profile-rows", type=int, default=15)
    args = common.finish_args(p.parse_args(argv))
    args.steps = args.steps or (3 if args.quick else 60)
    args.pgd_repeats = args.pgd_repeats or (2 if args.quick else max(3, args.repeats // 2))
    args.ig_steps = args.ig_steps or (8 if args.quick else 32)
    args.map_repeats = args.map_repeats or (2 if args.quick else 3 * args.repeats)
    clf = common.build_model(args)
    x, target = common.random_batch(args.batch, args.image_size, clf.num_classes, args.device_obj, args.seed)
    tables, checks, raw = [], [], {}
    if args.only in (None, "pgd"):
        t, c, r = bench_pgd(args, clf, x, target)
        tables.append(t)
        checks += c
        raw["pgd"] = r
    if args.only in (None, "interpreters"):
        t, c, r = bench_interpreters(args, clf, x, target)
        tables += t
        checks += c
        raw.update(r)
    payload = common.report("bench_peers", args, tables, checks, {"raw": raw})
    if args.profile:
        with contextlib.suppress(KeyboardInterrupt):
            profile_pgd(args, clf, x, target)
    return payload


if __name__ == "__main__":
    main()
