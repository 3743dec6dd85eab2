"""The follower of Algorithm 1 (§3.5, line 3–4; §3.6): a running MASK map estimate with its own Adam state.

Used by ADV² against MASK (:class:`~aid.attacks.adv2_mask.ADV2Mask`) and by ADV² on StAdv against MASK
(:class:`~aid.attacks.stadv.ADV2StAdv`).
"""

from __future__ import annotations

import torch
from torch import Tensor

from aid.attacks.strategies import map_mse
from aid.interpreters.base import Interpreter


class MaskFollower:
    """A running MASK estimate m for a batch, with its own Adam state (Algorithm 1's follower).

    * :meth:`reset` replaces m by a fresh MASK optimisation of the current input and restarts Adam
      (§3.6, periodical reset);
    * :meth:`update` runs ``n_step`` Adam steps on ℓ_map(m; x) with x fixed (line 3, multistep);
    * :meth:`lookahead` unrolls ``n_step`` virtual steps m_{j+1} = m_j − ξ ⊙ ∇_m ℓ_map(m_j; x) with the
      graph to x (``create_graph``) and returns the interpretation loss averaged over the look-ahead
      maps, ``(1/n) Σ_j ℓ_int(1 − m_j, m_t)`` (line 4, multistep look-ahead with the aggregated loss).

    Look-ahead step size: the virtual steps are normalised gradient steps with
    ξ_b = lr / RMS(∇_m ℓ_map(m_0)) per sample (detached), so that a virtual step moves the mask about as
    far as one Adam step of the follower; the real update of m uses Adam, the meta-learner of its step
    size (§3.6, adaptive learning rate). Adam's own rate lr/√v̂ is not used for ξ because cells whose
    gradient has been about 0 would take huge virtual steps that swamp the x-gradient. The map of each
    virtual m is clamped to [0, 1] in the forward pass only (straight-through), so mask cells saturated
    at 0 or 1 still pass gradient.

    Adam is element-wise and ℓ_map is a per-sample sum, so every sample is optimised independently.

    Args:
        interpreter: the MASK interpreter (``init_mask``, ``mask_loss``, ``optimize``, ``mask_to_map``,
            ``reference``; :class:`~aid.interpreters.mask.MaskInterpreter`).
        target: (B,) classes whose maps are estimated (the attack's target classes).
        n_step: inner and look-ahead steps per iteration (default 4, Table 10).
        lr: Adam learning rate on the mask (default None: the interpreter's ``lr``).
        reset_iterations: MASK iterations of a reset (default None: the interpreter's ``iterations``).

    Shapes: x (B, C, H, W); the mask parameter (B, 1, h, w); maps and target maps (B, 1, H, W).

    Example:
        >>> follower = MaskFollower(mask_interpreter, target, n_step=4)
        >>> follower.reset(x); follower.update(x); l_int = follower.lookahead(x.requires_grad_(), target_map)
    """

    def __init__(
        self,
        interpreter: Interpreter,
        target: Tensor,
        n_step: int = 4,
        lr: float | None = None,
        reset_iterations: int | None = None,
    ) -> None:
        self.interpreter = interpreter
        self.target = target
        self.n_step = int(n_step)
        self.lr = float(interpreter.lr if lr is None else lr)
        self.reset_iterations = reset_iterations
        self.betas = (0.9, 0.999)
        self.param: Tensor | None = None

    def reset(self, x: Tensor) -> Tensor:
        """m ← MASK(x) (a fresh optimisation), Adam state cleared; returns the map 1 − m (B, 1, H, W)."""
        self.param = self.interpreter.optimize(x.detach(), self.target, self.reset_iterations)
        self.exp_avg = torch.zeros_like(self.param)
        self.exp_avg_sq = torch.zeros_like(self.param)
        self.t = 0
        return self.map(x.shape[-2:])

    def map(self, size: tuple[int, int]) -> Tensor:
        """The current estimate's attribution map 1 − m (B, 1, H, W)."""
        return self.interpreter.mask_to_map(self.param, size)

    def _rate(self) -> Tensor:
        """Adam's per-element learning rate lr / (√v̂ + eps) (B, 1, h, w), from the running state."""
        v_hat = self.exp_avg_sq / (1 - self.betas[1] ** max(self.t, 1))
        return self.lr / (v_hat.sqrt() + 1e-8)

    def update(self, x: Tensor) -> None:
        """``n_step`` Adam steps on ℓ_map(m; x) with x fixed; m stays in [0, 1]."""
        x = x.detach()
        with torch.no_grad():
            ref = self.interpreter.reference(x)
        b1, b2 = self.betas
        for _ in range(self.n_step):
            param = self.param.detach().requires_grad_(True)
            loss = self.interpreter.mask_loss(x, self.target, param, ref)
            (grad,) = torch.autograd.grad(loss.sum(), param)
            self.t += 1
            self.exp_avg = b1 * self.exp_avg + (1 - b1) * grad
            self.exp_avg_sq = b2 * self.exp_avg_sq + (1 - b2) * grad * grad
            m_hat = self.exp_avg / (1 - b1**self.t)
            self.param = (self.param - self._rate() * m_hat).clamp(0, 1).detach()

    def lookahead(self, x: Tensor, target_map: Tensor) -> Tensor:
        """(1/n) Σ_j ℓ_int(1 − m_j(x), m_t) per sample (B,), differentiable with respect to x.

        x must require grad; the reference of φ is recomputed from x, so with the blur reference the
        gradient also flows through it.
        """
        m = self.param.detach().requires_grad_(True)
        total = x.new_zeros(x.shape[0], dtype=torch.float32)
        rate = None
        for _ in range(self.n_step):
            loss = self.interpreter.mask_loss(x, self.target, m)
            (grad,) = torch.autograd.grad(loss.sum(), m, create_graph=True)
            if rate is None:
                rms = grad.detach().flatten(1).pow(2).mean(dim=1).sqrt()
                rate = (self.lr / rms.clamp_min(1e-6)).view(-1, 1, 1, 1)
            m = m - rate * grad
            maps = self.interpreter.mask_to_map(straight_through_clamp(m), x.shape[-2:])
            total = total + map_mse(maps, target_map)
        return total / self.n_step


def straight_through_clamp(m: Tensor) -> Tensor:
    """m clamped to [0, 1] in the forward pass, identity in the backward pass (same shape as m)."""
    return m + (m.clamp(0, 1) - m).detach()
