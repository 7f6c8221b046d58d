"""SPEC §6: first-order optimisers written from their update rules.

Every class is a :class:`torch.optim.Optimizer`: it validates its hyperparameters, keeps
its per-parameter state in ``self.state`` (created lazily at the first step, like
torch.optim), and round-trips through ``state_dict()`` / ``load_state_dict()``. All six
rules are elementwise, so a parameter that stacks several independent models along its
first dimension is updated exactly as each model would be on its own.

Notation (per parameter, at step t = 1, 2, ...): g the gradient, γ the learning rate
(``lr``), δ the stabiliser (``eps``), ⊙ the elementwise product; every operation on
vectors is elementwise.

==============  ======================================================  ====================================
class           rule                                                    same as
==============  ======================================================  ====================================
SGD             θ ← θ − γ g                                             torch.optim.SGD
Momentum        m ← ρ m + g;  θ ← θ − γ m                               SGD(momentum=ρ, dampening=0)
RMSProp         r ← τ r + (1 − τ) g⊙g;  θ ← θ − γ g / (δ + √r)          RMSprop(alpha=τ, eps=δ)
AMSGrad         Adam's moments, bias-corrected, max of the corrected    (differs from Adam(amsgrad=True))
                second moment: θ ← θ − γ m̂1 / (δ + √m2max)
Adam            θ ← θ − γ m̂1 / (δ + √m̂2)                              torch.optim.Adam
AdaGrad         G ← G + g⊙g;  θ ← θ − γ g / (δ + √G)                    Adagrad(lr_decay=0)
==============  ======================================================  ====================================

``tests/test_optim.py`` checks each "same as" step for step against torch.optim, AMSGrad
against an independent NumPy implementation of the SPEC rule, and every optimiser's
convergence on a quadratic and on the Rosenbrock function.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch.optim import Optimizer

__all__ = ["SGD", "Momentum", "RMSProp", "AMSGrad", "Adam", "AdaGrad", "OPTIMIZERS"]

Params = Iterable[torch.Tensor] | Iterable[dict[str, Any]]


def _check_lr(lr: float) -> None:
    if not 0.0 <= lr < float("inf"):
        raise ValueError(f"invalid learning rate lr={lr}: must be finite and >= 0")


def _check_eps(eps: float) -> None:
    if not 0.0 <= eps < float("inf"):
        raise ValueError(f"invalid eps={eps}: must be finite and >= 0")


def _check_unit(name: str, value: float) -> None:
    if not 0.0 <= value < 1.0:
        raise ValueError(f"invalid {name}={value}: must be in [0, 1)")


class _ElementwiseOptimizer(Optimizer):
    """The loop every rule below shares: closure, lazy state, step counter, dense grads only.

    A subclass defines :meth:`_init_state` (the state of a fresh parameter) and
    :meth:`_update` (one application of its rule to one parameter, in place).
    """

    def _init_state(self, p: torch.Tensor, state: dict[str, Any]) -> None:
        pass

    def _update(self, p: torch.Tensor, grad: torch.Tensor, state: dict[str, Any], group: dict[str, Any]) -> None:
        raise NotImplementedError

    @torch.no_grad()
    def step(self, closure: Callable[[], torch.Tensor] | None = None) -> torch.Tensor | None:
        """Apply the rule once to every parameter that has a gradient.

        Args:
            closure: re-evaluates the model and returns the loss (optional).
        Returns: the closure's loss, or None.
        Raises:
            RuntimeError: a parameter has a sparse gradient (not supported).
        """
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    raise RuntimeError(f"{type(self).__name__} does not support sparse gradients")
                state = self.state[p]
                if not state:
                    state["step"] = 0
                    self._init_state(p, state)
                state["step"] += 1
                self._update(p, p.grad, state, group)
        return loss


class SGD(_ElementwiseOptimizer):
    """Stochastic gradient descent (Robbins & Monro 1951).

    Rule::

        θ ← θ − γ g

    Identical to ``torch.optim.SGD(params, lr=γ)`` (no momentum, no weight decay).

    Args:
        params: tensors or parameter groups (dicts with ``params`` and optionally ``lr``).
        lr: step size γ (same units as θ per unit of gradient).
    Raises:
        ValueError: ``lr`` negative or not finite.
    """

    def __init__(self, params: Params, lr: float = 1e-2):
        _check_lr(lr)
        super().__init__(params, {"lr": lr})

    def _update(self, p, grad, state, group):
        p.add_(grad, alpha=-group["lr"])


class Momentum(_ElementwiseOptimizer):
    """SGD with heavy-ball momentum (Polyak 1964, "Some methods of speeding up the
    convergence of iteration methods"), in the form of SPEC §6.

    Rule (m starts at 0)::

        m ← ρ m + g
        θ ← θ − γ m

    Identical to ``torch.optim.SGD(params, lr=γ, momentum=ρ, dampening=0, nesterov=False)``:
    torch starts its buffer at g, which is ρ·0 + g.

    Args:
        params: tensors or parameter groups.
        lr: step size γ.
        momentum: ρ in [0, 1).
    Raises:
        ValueError: ``lr`` negative or not finite; ``momentum`` outside [0, 1).
    """

    def __init__(self, params: Params, lr: float = 1e-2, momentum: float = 0.9):
        _check_lr(lr)
        _check_unit("momentum", momentum)
        super().__init__(params, {"lr": lr, "momentum": momentum})

    def _init_state(self, p, state):
        state["momentum_buffer"] = torch.zeros_like(p, memory_format=torch.preserve_format)

    def _update(self, p, grad, state, group):
        m = state["momentum_buffer"]
        m.mul_(group["momentum"]).add_(grad)  # m ← ρ m + g
        p.add_(m, alpha=-group["lr"])  # θ ← θ − γ m


class RMSProp(_ElementwiseOptimizer):
    """RMSProp (Tieleman & Hinton 2012, Coursera "Neural Networks for Machine Learning",
    lecture 6.5), with δ outside the square root as in SPEC §6.

    Rule (r starts at 0)::

        r ← τ r + (1 − τ) g⊙g
        θ ← θ − γ g / (δ + √r)

    Identical to ``torch.optim.RMSprop(params, lr=γ, alpha=τ, eps=δ)`` (centered=False,
    momentum=0), whose ε is also added after the square root. optax's ``rmsprop`` with
    ``eps_in_sqrt=True`` is a different convention: √(r + δ).

    Args:
        params: tensors or parameter groups.
        lr: step size γ.
        decay: τ in [0, 1), the decay of the running mean of g⊙g (torch's ``alpha``).
        eps: δ >= 0, added to √r.
    Raises:
        ValueError: ``lr`` or ``eps`` negative or not finite; ``decay`` outside [0, 1).
    """

    def __init__(self, params: Params, lr: float = 1e-2, decay: float = 0.99, eps: float = 1e-8):
        _check_lr(lr)
        _check_unit("decay", decay)
        _check_eps(eps)
        super().__init__(params, {"lr": lr, "decay": decay, "eps": eps})

    def _init_state(self, p, state):
        state["square_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)

    def _update(self, p, grad, state, group):
        r = state["square_avg"]
        r.mul_(group["decay"]).addcmul_(grad, grad, value=1 - group["decay"])  # r ← τ r + (1 − τ) g⊙g
        p.addcdiv_(grad, r.sqrt().add_(group["eps"]), value=-group["lr"])  # θ ← θ − γ g / (δ + √r)


def _check_betas(betas: tuple[float, float]) -> None:
    if len(betas) != 2:
        raise ValueError(f"invalid betas={betas}: must be a pair (beta1, beta2)")
    _check_unit("beta1", betas[0])
    _check_unit("beta2", betas[1])


class Adam(_ElementwiseOptimizer):
    """Adam (Kingma & Ba 2015, "Adam: A Method for Stochastic Optimization", Algorithm 1).

    Rule (m1, m2 start at 0)::

        m1 ← β1 m1 + (1 − β1) g
        m2 ← β2 m2 + (1 − β2) g⊙g
        m̂1 = m1 / (1 − β1^t),   m̂2 = m2 / (1 − β2^t)
        θ ← θ − γ m̂1 / (δ + √m̂2)

    Identical to ``torch.optim.Adam(params, lr=γ, betas=(β1, β2), eps=δ)`` (amsgrad=False);
    torch computes the same quantity as γ/(1 − β1^t) · m1 / (√m2 / √(1 − β2^t) + δ).

    Args:
        params: tensors or parameter groups.
        lr: step size γ.
        betas: (β1, β2), each in [0, 1).
        eps: δ >= 0, added to √m̂2.
    Raises:
        ValueError: ``lr`` or ``eps`` negative or not finite; a beta outside [0, 1).
    """

    def __init__(self, params: Params, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8):
        _check_lr(lr)
        _check_betas(betas)
        _check_eps(eps)
        super().__init__(params, {"lr": lr, "betas": tuple(betas), "eps": eps})

    def _init_state(self, p, state):
        state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)

    def _moments(self, grad, state, group) -> tuple[torch.Tensor, torch.Tensor]:
        """Update m1, m2 in place; return the bias-corrected (m̂1, m̂2) as new tensors."""
        beta1, beta2 = group["betas"]
        t = state["step"]
        m1, m2 = state["exp_avg"], state["exp_avg_sq"]
        m1.mul_(beta1).add_(grad, alpha=1 - beta1)  # m1 ← β1 m1 + (1 − β1) g
        m2.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)  # m2 ← β2 m2 + (1 − β2) g⊙g
        return m1 / (1 - beta1 ** t), m2 / (1 - beta2 ** t)

    def _update(self, p, grad, state, group):
        m1_hat, m2_hat = self._moments(grad, state, group)
        p.addcdiv_(m1_hat, m2_hat.sqrt_().add_(group["eps"]), value=-group["lr"])  # θ ← θ − γ m̂1 / (δ + √m̂2)


class AMSGrad(Adam):
    """AMSGrad (Reddi, Kale & Kumar 2018, "On the Convergence of Adam and Beyond",
    Algorithm 2) in the bias-corrected form of SPEC §6.

    Rule (m1, m2, m2max start at 0)::

        m1 ← β1 m1 + (1 − β1) g
        m2 ← β2 m2 + (1 − β2) g⊙g
        m̂1 = m1 / (1 − β1^t),   m̂2 = m2 / (1 − β2^t)
        m2max ← max(m2max, m̂2)                      (the maximum of the *corrected* m̂2)
        θ ← θ − γ m̂1 / (δ + √m2max)

    How this differs from the others:

    * ``torch.optim.Adam(amsgrad=True)`` keeps the maximum *before* the bias correction,
      v_max ← max(v_max, m2), and divides by √(v_max / (1 − β2^t)). Because 1 − β2^t grows
      with t, an early large m2 is discounted there but kept at full size here: after
      g = 1 then g = 0, torch's second step is √(1 + β2) times larger than this one.
      When m̂2 never decreases the two agree (and equal Adam).
    * The paper's Algorithm 2 has no bias correction at all (and a decaying β1,t).

    Args:
        params: tensors or parameter groups.
        lr: step size γ.
        betas: (β1, β2), each in [0, 1).
        eps: δ >= 0, added to √m2max.
    Raises:
        ValueError: ``lr`` or ``eps`` negative or not finite; a beta outside [0, 1).
    """

    def _init_state(self, p, state):
        super()._init_state(p, state)
        state["max_exp_avg_sq_hat"] = torch.zeros_like(p, memory_format=torch.preserve_format)

    def _update(self, p, grad, state, group):
        m1_hat, m2_hat = self._moments(grad, state, group)
        m2max = state["max_exp_avg_sq_hat"]
        torch.maximum(m2max, m2_hat, out=m2max)  # m2max ← max(m2max, m̂2)
        p.addcdiv_(m1_hat, m2max.sqrt().add_(group["eps"]), value=-group["lr"])  # θ ← θ − γ m̂1 / (δ + √m2max)


class AdaGrad(_ElementwiseOptimizer):
    """AdaGrad, diagonal form (Duchi, Hazan & Singer 2011, "Adaptive Subgradient Methods
    for Online Learning and Stochastic Optimization", JMLR 12, eq. (1) with diagonal G).

    Rule (G starts at 0)::

        G ← G + g⊙g
        θ ← θ − γ g / (δ + √G)

    Identical to ``torch.optim.Adagrad(params, lr=γ, eps=δ)`` (lr_decay=0,
    initial_accumulator_value=0), whose default δ = 1e-10 this class also uses.

    Args:
        params: tensors or parameter groups.
        lr: step size γ.
        eps: δ >= 0, added to √G.
    Raises:
        ValueError: ``lr`` or ``eps`` negative or not finite.
    """

    def __init__(self, params: Params, lr: float = 1e-2, eps: float = 1e-10):
        _check_lr(lr)
        _check_eps(eps)
        super().__init__(params, {"lr": lr, "eps": eps})

    def _init_state(self, p, state):
        state["sum"] = torch.zeros_like(p, memory_format=torch.preserve_format)

    def _update(self, p, grad, state, group):
        G = state["sum"]
        G.addcmul_(grad, grad)  # G ← G + g⊙g
        p.addcdiv_(grad, G.sqrt().add_(group["eps"]), value=-group["lr"])  # θ ← θ − γ g / (δ + √G)


OPTIMIZERS: dict[str, type[Optimizer]] = {
    "sgd": SGD,
    "momentum": Momentum,
    "rmsprop": RMSProp,
    "amsgrad": AMSGrad,
    "adam": Adam,
    "adagrad": AdaGrad,
}
"""Command-line name -> class: the four rules of SPEC §6, then the extras Adam and AdaGrad."""
