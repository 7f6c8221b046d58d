"""Lipschitz control of a critic: spectral normalisation, spectral regularisation, weight
clipping and the gradient penalty (SPEC §3).

* Spectral normalisation (Miyato et al. 2018, Algorithm 1): the largest singular value of
  each weight matrix W is estimated by power iteration from a persistent vector u,
  v <- W^T u / ||W^T u||, u <- W v / ||W v||, sigma = u^T W v, and W is replaced by
  W / sigma. Here this is applied to the weights *in place* after each critic step
  (:class:`SpectralNormalizer`), rather than as a reparametrisation on every forward as
  ``torch.nn.utils.parametrizations.spectral_norm`` does; from the same W and u the two
  give the same normalised weight (tests/test_wgan.py).
* Spectral regularisation (Yoshida & Miyato 2017): the penalty (lambda / 2) sum_l sigma_l^2
  with sigma_l = u^T W_l v from the same power iteration (u, v held constant, so its
  gradient is lambda sigma_l u v^T).
* Weight clipping (Arjovsky et al. 2017, Algorithm 1): every parameter clamped to [-c, c].
* Gradient penalty (Gulrajani et al. 2017, eq. 3): lambda E[(||grad_x d(x_hat)||_2 - 1)^2] at
  x_hat = eps a + (1 - eps) h(w), eps ~ U[0, 1] per sample, with the norm taken per sample.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["power_iteration", "spectral_normalize_", "SpectralNormalizer", "clip_weights_", "gradient_penalty"]


@torch.no_grad()
def power_iteration(weight: torch.Tensor, u: torch.Tensor, n_iterations: int = 1,
                    eps: float = 1e-12) -> tuple[torch.Tensor, torch.Tensor]:
    """Estimate the largest singular value of ``weight`` by power iteration.

    Args:
        weight: (out, in) float tensor (higher-rank weights are flattened to (out, -1)).
        u: (out,) unit vector, the persistent left singular-vector estimate; updated in place.
        n_iterations: power-iteration steps (>= 1); Miyato et al. use 1 per training step.
        eps: added in the normalisations, as in torch's ``spectral_norm``.

    Returns:
        (sigma, v): the estimate u^T W v (0-dim tensor, same dtype as ``weight``; a lower
        bound on ||W||_2 that converges to it) and the right vector v (in,).

    Raises:
        ValueError: ``n_iterations`` < 1 or ``u`` of the wrong length.
    """
    if n_iterations < 1:
        raise ValueError(f"n_iterations must be >= 1, got {n_iterations}")
    w = weight.reshape(weight.shape[0], -1)  # (out, in)
    if u.shape != (w.shape[0],):
        raise ValueError(f"u must have shape ({w.shape[0]},), got {tuple(u.shape)}")
    for _ in range(n_iterations):
        v = F.normalize(w.mT @ u, dim=0, eps=eps)  # (in,)
        u.copy_(F.normalize(w @ v, dim=0, eps=eps))  # (out,)
    return torch.dot(u, w @ v), v


@torch.no_grad()
def spectral_normalize_(weight: torch.Tensor, u: torch.Tensor, n_iterations: int = 1,
                        eps: float = 1e-12) -> torch.Tensor:
    """W <- W / sigma(W) in place, sigma from :func:`power_iteration` (u updated in place).

    Returns sigma, the estimate before the division (0-dim tensor).
    """
    sigma, _ = power_iteration(weight, u, n_iterations, eps)
    weight.div_(sigma)
    return sigma


def _unit_vector(n: int, generator: torch.Generator | None, like: torch.Tensor) -> torch.Tensor:
    u = torch.randn(n, generator=generator, dtype=like.dtype).to(like.device)
    return F.normalize(u, dim=0, eps=1e-12)


class SpectralNormalizer:
    """In-place spectral normalisation of the weights of ``modules`` (nn.Linear), each with
    its own persistent u (Miyato et al. 2018).

    Args:
        modules: the layers whose ``weight`` (out, in) is normalised.
        n_iterations: power-iteration steps per call of :meth:`normalize_`.
        generator: RNG for the initial u (unit Gaussian direction).
    """

    def __init__(self, modules: Iterable[nn.Module], n_iterations: int = 1,
                 generator: torch.Generator | None = None):
        self.modules = list(modules)
        self.n_iterations = n_iterations
        self.u = [_unit_vector(m.weight.shape[0], generator, m.weight) for m in self.modules]

    @torch.no_grad()
    def normalize_(self) -> list[float]:
        """Divide every weight by its estimated largest singular value; returns the sigmas."""
        return [float(spectral_normalize_(m.weight, u, self.n_iterations)) for m, u in zip(self.modules, self.u)]

    def sigmas(self) -> list[torch.Tensor]:
        """Differentiable sigma_l = u^T W_l v (u, v from one power-iteration step, held
        constant): the terms of the spectral-regularisation penalty (Yoshida & Miyato 2017)."""
        out = []
        for m, u in zip(self.modules, self.u):
            _, v = power_iteration(m.weight, u, self.n_iterations)
            out.append(torch.dot(u, m.weight.reshape(m.weight.shape[0], -1) @ v))
        return out

    def state_dict(self) -> dict:
        return {"u": [u.clone() for u in self.u]}

    def load_state_dict(self, state: dict) -> None:
        for u, saved in zip(self.u, state["u"]):
            u.copy_(saved)


@torch.no_grad()
def clip_weights_(parameters: Iterable[torch.Tensor], clip: float) -> None:
    """Clamp every parameter to [-clip, clip] in place (Arjovsky et al. 2017, Algorithm 1).

    Raises:
        ValueError: ``clip`` <= 0.
    """
    if clip <= 0:
        raise ValueError(f"clip must be > 0, got {clip}")
    for p in parameters:
        p.clamp_(-clip, clip)


def gradient_penalty(critic: nn.Module, real: torch.Tensor, fake: torch.Tensor,
                     eps: torch.Tensor | None = None, target: float = 1.0) -> torch.Tensor:
    """E[(||grad_x d(x_hat)||_2 - target)^2], x_hat = eps real + (1 - eps) fake
    (Gulrajani et al. 2017, eq. 3, without the weight lambda).

    The critic must act on each sample independently (no batch norm), so that the gradient
    of sum_i d(x_hat_i) with respect to x_hat holds the per-sample gradients in its rows.

    Args:
        critic: maps (N, D) -> (N, 1).
        real, fake: (N, D) samples; ``fake`` is treated as a constant.
        eps: (N, 1) interpolation weights in [0, 1]; drawn from U[0, 1] when None.
        target: the gradient norm aimed at (1 for a 1-Lipschitz critic).

    Returns:
        A scalar with a graph to the critic's parameters (create_graph=True).
    """
    if eps is None:
        eps = torch.rand(real.shape[0], 1, device=real.device, dtype=real.dtype)
    x_hat = (eps * real + (1 - eps) * fake.detach()).requires_grad_(True)  # (N, D)
    (grad,) = torch.autograd.grad(critic(x_hat).sum(), x_hat, create_graph=True)  # (N, D)
    norms = torch.linalg.vector_norm(grad, dim=1)  # (N,), one norm per sample
    return ((norms - target) ** 2).mean()
