"""Spatially transformed adversarial examples (StAdv, Xiao et al. 2018) and ADV² on StAdv (Appendix A1).

A per-pixel flow r = (Δu, Δv) (B, 2, H, W), in pixels, moves every output pixel's sampling point:
x̃_i = Σ_j x_j max(0, 1 − |ũ_i + Δu_i − u_j|) max(0, 1 − |ṽ_i + Δv_i − v_j|) (bilinear sampling).
The perturbation is measured by the flow's total variation ℓ_flow (Eqn 14), not by an L∞ ball.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from aid.attacks.base import ATTACKS, Attack, AttackResult
from aid.attacks.mask_follower import MaskFollower
from aid.attacks.schedules import BestIterate, check_schedule, linear_schedule, smoothed_cross_entropy
from aid.attacks.strategies import build_interpretation_loss, map_mse, unique_modules
from aid.attacks.targets import benign_target_maps
from aid.interpreters.base import Interpreter
from aid.models import Classifier


def apply_flow(x: Tensor, flow: Tensor) -> Tensor:
    """Warp images x (B, C, H, W) by a flow (B, 2, H, W) in pixels (channel 0: Δu along W, 1: Δv along H).

    Output pixel (v, u) samples x at (v + Δv, u + Δu) with bilinear interpolation
    (``grid_sample``, ``align_corners=True`` so that pixel centres sit on integer coordinates, and
    ``border`` padding so that flows pointing outside repeat the edge). A zero flow returns x (up to
    float rounding of the grid).
    Differentiable with respect to both x and the flow.
    """
    _, _, h, w = x.shape
    ys = torch.arange(h, device=x.device, dtype=flow.dtype)
    xs = torch.arange(w, device=x.device, dtype=flow.dtype)
    u = xs.view(1, 1, w) + flow[:, 0]
    v = ys.view(1, h, 1) + flow[:, 1]
    grid = torch.stack((2 * u / max(w - 1, 1) - 1, 2 * v / max(h - 1, 1) - 1), dim=-1)
    out = F.grid_sample(x, grid.to(x.dtype), mode="bilinear", padding_mode="border", align_corners=True)
    return out.clamp(0, 1)


def flow_loss(flow: Tensor, eps: float = 1e-8) -> Tensor:
    """ℓ_flow of Eqn 14 per sample (B,): Σ_i Σ_{j∈N(i)} sqrt(‖Δu_i − Δu_j‖² + ‖Δv_i − Δv_j‖² + eps).

    N(i) is the 4-neighbourhood inside the image; every neighbouring pair appears twice in the sum
    (once from each side), as in the equation. ``eps`` keeps the gradient finite at zero flow.
    """
    f = flow.float()
    dx = f[:, :, :, 1:] - f[:, :, :, :-1]
    dy = f[:, :, 1:, :] - f[:, :, :-1, :]
    tv = (dx.pow(2).sum(1) + eps).sqrt().flatten(1).sum(1) + (dy.pow(2).sum(1) + eps).sqrt().flatten(1).sum(1)
    return 2 * tv


def margin_loss(logits: Tensor, target: Tensor, confidence: float = 0.0) -> Tensor:
    """Targeted Carlini–Wagner margin per sample (B,): max(max_{c≠t} z_c − z_t, −confidence)."""
    z = logits.float()
    z_t = z.gather(1, target[:, None]).squeeze(1)
    others = z.scatter(1, target[:, None], float("-inf")).amax(dim=1)
    return (others - z_t).clamp_min(-confidence)


def prediction_loss(logits: Tensor, target: Tensor, kind: str) -> Tensor:
    """``ce`` (cross-entropy to the target) or ``cw`` (margin) per sample (B,)."""
    if kind == "cw":
        return margin_loss(logits, target)
    return F.cross_entropy(logits.float(), target, reduction="none")


class FlowOptimizer:
    """Adam over a batch of flows (B, 2, H, W) with a uniform start.

    Adam is element-wise, so each sample's flow evolves independently of the rest of the batch.

    Args:
        noise: uniform noise in [0, 1) (B, 2, H, W) of the start (its device is the flow's).
        lr: Adam learning rate (paper: 0.01).
        amsgrad: AMSGrad variant (the authors' setting).
        init_range: flows start uniform in ±init_range pixels (authors: 0.1); 0 starts from zero.
    """

    def __init__(self, noise: Tensor, lr: float, amsgrad: bool, init_range: float) -> None:
        self.flow = ((2 * noise - 1) * init_range).requires_grad_(True)
        self.opt = torch.optim.Adam([self.flow], lr=lr, betas=(0.9, 0.999), amsgrad=amsgrad)

    def step(self, grad: Tensor) -> None:
        """One Adam step along ``grad`` (B, 2, H, W), the gradient of the summed loss."""
        self.flow.grad = grad.detach().to(self.flow.dtype)
        self.opt.step()
        self.flow.grad = None


def _check_flow_args(lr: float, tau: float, loss: str, init_range: float) -> None:
    if not lr > 0:
        raise ValueError(f"lr must be > 0, got {lr}")
    if tau < 0:
        raise ValueError(f"tau must be >= 0, got {tau}")
    if loss not in ("ce", "cw"):
        raise ValueError(f"loss must be 'ce' or 'cw', got {loss!r}")
    if init_range < 0:
        raise ValueError(f"init_range must be >= 0, got {init_range}")


@ATTACKS.register("stadv")
class StAdv(Attack):
    r"""Targeted StAdv: min_r ℓ_prd(f(x ⊕ r), c_t) + τ·ℓ_flow(r) with Adam over the flow r (Xiao et al.).

    Distance measure: the flow's smoothness ℓ_flow (Eqn 14), *not* L∞: ``eps`` does not bound the
    result (the attribute is ``inf``; only the [0, 1] box holds, by construction of bilinear
    sampling). The optimiser is Adam (lr 0.01, amsgrad, as the authors), the flow starts uniform in
    ±0.1 pixel from the attack's seeded generator. Every sample runs all ``steps``. The result is the
    last iterate (``select="last"``, as the authors' StAdv baseline and as :class:`~aid.attacks.pgd.PGD`),
    or per sample the successful iterate (argmax = target) with the smallest ℓ_flow, the last one when
    none succeeded (``select="min_flow"``, the least distorted example in the sense of Xiao et al.).
    The authors run 300 iterations for their StAdv baseline and 200 before ADV² on ImageNet; the
    default here is scaled to 32 px images.

    Args:
        classifier: target classifier ``f``.
        steps: Adam iterations (default 100).
        lr: Adam learning rate (default 0.01, Appendix B2).
        tau: flow-loss weight τ (default 0.0005, Table 11).
        loss: ``"ce"`` (cross-entropy to the target, default) or ``"cw"`` (the margin of Xiao et al.).
        init_range: the uniform start in ±init_range pixels (default 0.1). Without per-sample
            ``seeds`` in the call the start is one draw for the whole batch, so a sample's result then
            depends on its position in the batch (unless init_range is 0).
        amsgrad: Adam's AMSGrad variant (default True, the authors' setting).
        seed: seed of the random start.
        progress: show a progress bar.
        select: ``"last"`` (default) or ``"min_flow"``, which iterate is returned (see above).

    Shapes: x (B, C, H, W) in [0, 1]; target (B,) long or an int. Returns an
    :class:`~aid.attacks.base.AttackResult` (``maps`` is None; ``iterations`` is the first successful
    step for ``last``, the selected step for ``min_flow``).

    Example:
        >>> attack = StAdv(classifier, steps=100)
        >>> result = attack(images, target_classes)
    """

    name = "stadv"

    def __init__(
        self,
        classifier: Classifier,
        steps: int = 100,
        lr: float = 0.01,
        tau: float = 0.0005,
        loss: str = "ce",
        init_range: float = 0.1,
        amsgrad: bool = True,
        seed: int | None = 0,
        progress: bool = False,
        select: str = "last",
    ) -> None:
        _check_flow_args(lr, tau, loss, init_range)  # before the base class reads lr as its alpha
        super().__init__(classifier, eps=1.0, alpha=lr, steps=steps, seed=seed, progress=progress)
        if select not in ("last", "min_flow"):
            raise ValueError(f"select must be 'last' or 'min_flow', got {select!r}")
        self.select = select
        self.eps = math.inf  # a spatial attack: no L∞ budget
        self.lr = float(lr)
        self.tau = float(tau)
        self.loss = loss
        self.init_range = float(init_range)
        self.amsgrad = bool(amsgrad)

    def flow_optimizer(self, x: Tensor) -> FlowOptimizer:
        """Adam over a fresh, seeded flow for images x (the start: :meth:`~aid.attacks.base.Attack.uniform`)."""
        noise = self.uniform(x, (2, *x.shape[-2:]), dtype=torch.float32)
        return FlowOptimizer(noise, self.lr, self.amsgrad, self.init_range)

    def perturb(
        self, x: Tensor, target: Tensor, opt: FlowOptimizer | None = None, best: BestIterate | None = None
    ) -> FlowOptimizer:
        """Run ``steps`` StAdv iterations on ``opt`` (default a fresh one); returns the optimiser.

        When ``best`` is given, every iterate (the start, each step and the last) is offered to it with
        "confidence" 1 for a success (argmax = target), 0 otherwise (use κ = 1), and loss ℓ_flow
        (``select="min_flow"``) or the step number (``"last"``: ``best`` then finds the first success).
        Models must already be frozen (``__call__`` does that); ADV² on StAdv calls this for its warm
        start.
        """
        opt = self.flow_optimizer(x) if opt is None else opt
        for i in tqdm(range(self.steps + 1), desc="stadv", disable=not self.progress, leave=False):
            if i == self.steps and best is None:
                break
            x_adv = apply_flow(x, opt.flow)
            logits = self.classifier(x_adv)
            smooth = flow_loss(opt.flow)
            if best is not None:
                rank = smooth if self.select == "min_flow" else torch.full_like(smooth, float(i))
                best.update(x_adv, rank, (logits.detach().argmax(dim=1) == target).float(), step=i)
            if i == self.steps:
                break
            loss = prediction_loss(logits, target, self.loss) + self.tau * smooth
            # A sum, not a mean: each sample's gradient is then independent of the batch size.
            (grad,) = torch.autograd.grad(loss.sum(), opt.flow)
            opt.step(grad)
        return opt

    def _run(self, x: Tensor, target: Tensor, target_map: Tensor | None) -> AttackResult:
        best = BestIterate(x, kappa=1.0)
        opt = self.perturb(x, target, best=best)
        x_last = apply_flow(x, opt.flow.detach())
        x_sel, step = best.result(x_last, self.steps)
        if self.select == "last":
            x_sel = x_last
        success, confidence = self.evaluate(x_sel, target)
        return AttackResult(x_adv=x_sel, success=success, confidence=confidence, iterations=step)


def _is_mask(interpreter: Interpreter) -> bool:
    """Whether ℓ_int needs Algorithm 1's follower (an optimisation interpreter such as MASK)."""
    return not getattr(interpreter, "differentiable", True) and hasattr(interpreter, "mask_loss")


@ATTACKS.register("adv2_stadv")
class ADV2StAdv(StAdv):
    r"""ADV² on StAdv (Appendix A1, Eqn 14): min_r ℓ_prd(f(x⊕r), c_t) + λ·ℓ_int(g(x⊕r), m_t) + τ·ℓ_flow(r).

    1. Warm start: ``warm_steps`` plain StAdv iterations (:class:`StAdv`) on the same flow and Adam.
    2. ``steps`` Adam iterations (lr 0.01, amsgrad) on Eqn 14 with ℓ_prd the label-smoothed
       cross-entropy (ρ 0.05 → 0.01, §3.6) and ℓ_int the family's strategy
       (:mod:`aid.attacks.strategies`; RTS adds λ_enc·ℓ_enc). For MASK, whose map is an optimisation,
       ℓ_int is Algorithm 1's look-ahead loss of a running map estimate
       (:class:`~aid.attacks.mask_follower.MaskFollower`: ``n_step`` inner Adam steps per iteration,
       reset by a fresh MASK run every ``n_reset`` iterations).
    3. Best iterate, per sample: the lowest ℓ_int among iterates whose target probability is ≥ κ
       (every ``select_every`` steps; for MASK at each reset, where the fresh map gives the true
       ℓ_int); a sample with none keeps its last iterate.

    Distance measure: ℓ_flow, not L∞ (``eps`` is ``inf``); images stay in [0, 1]. ``result.maps`` is
    the interpretation of the returned x_adv for the target class by the ordinary interpreter.

    Paper scale (Table 11, ImageNet, ResNet / DenseNet; Adam (0.01, 0.9, 0.999)): GRAD n_total 800,
    λ 0.023, τ 0.0005; CAM 600, λ 0.653, τ 0.0005; MASK 1000, n_step 4, n_reset 50, λ 500,
    τ 0.004 (DenseNet 0.005); RTS 600, λ 0.0408 (DenseNet 0.0612), ℓ_prd weight 0.1, τ 0.0005. The
    authors' scripts: 200 StAdv warm-start then 600 ADV² iterations, τ 0.0005, flow start ±0.1 px.
    Our ℓ_int is a per-pixel mean (:func:`~aid.attacks.strategies.map_mse`), so λ is on another scale
    than Table 11's; defaults are for the embedded 32 px setting.

    Args:
        classifier: target classifier ``f``.
        interpreter: the attacked interpreter ``g``.
        steps: ADV² iterations after the warm start (default 100).
        warm_steps: StAdv warm-start iterations (default 50; 0 = none).
        lr: Adam learning rate of the flow (default 0.01).
        tau: τ, the flow-loss weight (default 0.0005).
        lam: λ, a number or (start, end) ramped linearly (default None: the strategy's
            ``default_lam``; 10 for MASK).
        lam_enc: weight of the family's extra term (RTS: ℓ_enc; default 0.1).
        smoothing: label-smoothing ρ, a number or (start, end) (default (0.05, 0.01)).
        kappa: κ of the best-iterate selection (default 0.8).
        select_every: offer an iterate to the selection every this many steps (default 1).
        loss: ℓ_prd of the warm start, ``"ce"`` or ``"cw"`` (default ``"ce"``).
        init_range: flow start uniform in ±init_range pixels (default 0.1; see :class:`StAdv`).
        amsgrad: AMSGrad variant of Adam (default True).
        n_step, n_reset, reset_iterations: Algorithm 1's follower for MASK (defaults 4, 20, 100).
        seed: seed of the flow's random start.
        progress: show a tqdm progress bar.
        strategy_kwargs: constructor arguments of the ℓ_int strategy.

    Shapes: x (B, C, H, W) in [0, 1]; target (B,) long or an int; target_map (B, 1, H, W) or None
    (the benign map). Returns an :class:`~aid.attacks.base.AttackResult` with ``maps``.

    Example:
        >>> attack = ADV2StAdv(classifier, build_interpreter("cam", classifier))
        >>> result = attack(images, target_classes)
    """

    name = "adv2_stadv"

    def __init__(
        self,
        classifier: Classifier,
        interpreter: Interpreter,
        steps: int = 100,
        warm_steps: int = 50,
        lr: float = 0.01,
        tau: float = 0.0005,
        lam: float | tuple[float, float] | None = None,
        lam_enc: float = 0.1,
        smoothing: float | tuple[float, float] = (0.05, 0.01),
        kappa: float = 0.8,
        select_every: int = 1,
        loss: str = "ce",
        init_range: float = 0.1,
        amsgrad: bool = True,
        n_step: int = 4,
        n_reset: int = 20,
        reset_iterations: int = 100,
        seed: int | None = 0,
        progress: bool = False,
        strategy_kwargs: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(classifier, steps, lr, tau, loss, init_range, amsgrad, seed, progress)
        if int(warm_steps) < 0:
            raise ValueError(f"warm_steps must be >= 0, got {warm_steps}")
        if lam_enc < 0:
            raise ValueError(f"lam_enc must be >= 0, got {lam_enc}")
        if lam is not None:
            check_schedule("lam", lam, 0.0, float("inf"))
        check_schedule("smoothing", smoothing, 0.0, 0.999)
        if not 0 <= kappa <= 1:
            raise ValueError(f"kappa must lie in [0, 1], got {kappa}")
        for key, value in (("select_every", select_every), ("n_step", n_step), ("n_reset", n_reset),
                           ("reset_iterations", reset_iterations)):
            if int(value) < 1:
                raise ValueError(f"{key} must be >= 1, got {value}")
        self.interpreter = interpreter
        self.mask = _is_mask(interpreter)
        kw = strategy_kwargs or {}
        self.strategy = None if self.mask else build_interpretation_loss(interpreter, **kw)
        self.lam = (10.0 if self.mask else self.strategy.default_lam) if lam is None else lam
        self.lam_enc = float(lam_enc)
        self.smoothing = smoothing
        self.kappa = float(kappa)
        self.select_every = int(select_every)
        self.warm_steps = int(warm_steps)
        self.n_step, self.n_reset, self.reset_iterations = int(n_step), int(n_reset), int(reset_iterations)
        self.warm = StAdv(classifier, max(self.warm_steps, 1), lr, tau, loss, init_range, amsgrad, seed)

    def models(self) -> list[nn.Module]:
        """The classifier and the interpreter's modules, frozen during the attack."""
        extra = [self.interpreter.classifier] if self.mask else self.strategy.modules()
        return unique_modules([self.classifier, *extra])

    def _run(self, x: Tensor, target: Tensor, target_map: Tensor | None) -> AttackResult:
        if target_map is None:
            target_map = benign_target_maps(self.interpreter, self.classifier, x)
        target_map = target_map.detach().to(x.dtype)
        opt = self.flow_optimizer(x)  # the warm start's settings are the attack's own
        if self.warm_steps > 0:
            self.warm.perturb(x, target, opt)
        follower = None
        if self.mask:
            follower = MaskFollower(self.interpreter, target, self.n_step, None, self.reset_iterations)
        best = BestIterate(x, self.kappa)
        for i in tqdm(range(self.steps + 1), desc="adv2_stadv", disable=not self.progress, leave=False):
            x_adv = apply_flow(x, opt.flow)
            step = self.warm_steps + i
            if follower is not None:
                logits = self.classifier(x_adv)
                conf = logits.detach().float().softmax(dim=1).gather(1, target[:, None]).squeeze(1)
                if i % self.n_reset == 0 or i == self.steps:
                    best.update(x_adv, map_mse(follower.reset(x_adv), target_map), conf, step=step)
                if i == self.steps:
                    break
                follower.update(x_adv)
                l_int, extra = follower.lookahead(x_adv, target_map), 0.0
            else:
                logits, l_int, extra = self.strategy.logits_and_losses(x_adv, target, target_map, self.classifier)
                conf = logits.detach().float().softmax(dim=1).gather(1, target[:, None]).squeeze(1)
                if i % self.select_every == 0 or i == self.steps:
                    best.update(x_adv, l_int, conf, step=step)
                if i == self.steps:
                    break
            j = min(i, self.steps - 1)
            prd = smoothed_cross_entropy(logits, target, linear_schedule(self.smoothing, j, self.steps))
            lam = linear_schedule(self.lam, j, self.steps)
            loss = prd + lam * l_int + self.lam_enc * extra + self.tau * flow_loss(opt.flow)
            # A sum, not a mean: each sample's gradient is then independent of the batch size.
            (grad,) = torch.autograd.grad(loss.sum(), opt.flow)
            opt.step(grad)
        x_sel, step = best.result(x_adv.detach(), self.warm_steps + self.steps)
        success, confidence = self.evaluate(x_sel, target)
        maps = self.interpreter.attribute(x_sel, target).detach()
        return AttackResult(x_adv=x_sel, success=success, confidence=confidence, iterations=step, maps=maps)
