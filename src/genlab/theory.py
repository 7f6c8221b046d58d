"""SPEC §12: GAN theory (Goodfellow et al. 2014, Proposition 1 and Theorem 1, and §3),
computed rather than asserted. ``python -m genlab.theory`` prints the numbers quoted in
docs/theory.md; tests/test_theory.py checks them against closed forms, scipy and autograd.

1. For fixed densities p_data, p_g, the discriminator maximising
   V(D) = E_pdata[log D(x)] + E_pg[log(1 - D(x))] (minimising the BCE loss) is
   D* = p_data / (p_data + p_g), and V(D*) = -log 4 + 2 JSD(p_data || p_g).
   Here both densities live on a grid, D is one logit per grid point, and D* is found by
   minimising the BCE loss numerically (Newton's method, autograd derivatives), not by the formula.
2. With h the discriminator's logit and D = sigmoid(h), the minimax generator gradient is
   d/dtheta E[log(1 - D(G(z)))] = -E[D(G(z)) dh(G(z))/dtheta], which tends to 0 as
   D(G(z)) -> 0; the non-saturating -E[log D(G(z))] has gradient -E[(1 - D(G(z))) dh/dtheta],
   which tends to -E[dh/dtheta].
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["grid_densities", "optimal_discriminator", "value", "jensen_shannon", "generator_gradients"]


def grid_densities(n: int = 801, lo: float = -6.0, hi: float = 7.0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Two 1-D densities discretised on a grid, as float64 probability vectors (n,) summing to 1:
    p_data from N(0, 1) and p_g from an equal mixture of N(2, 0.5^2) and N(-1, 1.5^2).

    Returns (x, p_data, p_g), x the grid (n,).
    """
    x = torch.linspace(lo, hi, n, dtype=torch.float64)

    def normal(mu: float, sd: float) -> torch.Tensor:
        return torch.exp(-0.5 * ((x - mu) / sd) ** 2) / (sd * math.sqrt(2 * math.pi))

    p_data, p_g = normal(0.0, 1.0), 0.5 * normal(2.0, 0.5) + 0.5 * normal(-1.0, 1.5)
    return x, p_data / p_data.sum(), p_g / p_g.sum()


def value(p_data: torch.Tensor, p_g: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
    """V(G, D) = sum_x p_data(x) log D(x) + p_g(x) log(1 - D(x)), nats (the negative BCE loss)."""
    return (p_data * torch.log(d) + p_g * torch.log1p(-d)).sum()


def optimal_discriminator(p_data: torch.Tensor, p_g: torch.Tensor, steps: int = 100) -> torch.Tensor:
    """The discriminator (n,) minimising the BCE loss -V(G, D) over D in (0, 1)^n, found
    numerically: Newton's method on one logit per grid point, from D = 1/2, with the
    gradient and the (diagonal: the loss is a sum over points) Hessian from autograd, in
    float64. The closed form is not used. Each point's loss is convex in its logit, and
    Newton's iterates approach the minimiser monotonically (about one unit of logit per step
    while far from it, quadratically near it), so 100 steps reach machine precision here."""
    logits = torch.zeros_like(p_data, requires_grad=True)
    for _ in range(steps):
        loss = -(p_data * F.logsigmoid(logits) + p_g * F.logsigmoid(-logits)).sum()
        (grad,) = torch.autograd.grad(loss, logits, create_graph=True)
        (hess_diag,) = torch.autograd.grad(grad.sum(), logits)  # column sums of a diagonal Hessian
        logits = (logits - grad / hess_diag).detach().requires_grad_(True)
    return torch.sigmoid(logits.detach())


def jensen_shannon(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """JSD(p || q) = KL(p || m) / 2 + KL(q || m) / 2, m = (p + q) / 2, nats (0 log 0 = 0)."""
    m = 0.5 * (p + q)

    def kl(a: torch.Tensor) -> torch.Tensor:
        return torch.where(a > 0, a * torch.log(a / m), torch.zeros_like(a)).sum()

    return 0.5 * kl(p) + 0.5 * kl(q)


def generator_gradients(bias_shift: float, seed: int = 0, n: int = 256) -> dict[str, torch.Tensor | float]:
    """Generator gradients of the two losses for a small MLP generator G (8 -> 32 -> 2) and
    discriminator (2 -> 32 -> 1, logit h), with ``bias_shift`` added to h's output bias to
    push D(G(z)) towards 0 (negative shifts). float64.

    Returns a dict: ``d_fake`` (mean D(G(z))), ``minimax`` and ``non_saturating`` (autograd
    gradients of the losses, flattened), ``minimax_formula`` and ``non_saturating_formula``
    (-E[D dh/dtheta] and -E[(1 - D) dh/dtheta], autograd of the weighted logit), and
    ``mean_dh`` (E[dh/dtheta]).
    """
    gen = torch.Generator().manual_seed(seed)
    torch_state = torch.get_rng_state()
    torch.manual_seed(seed)
    generator = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 2)).double()
    discriminator = nn.Sequential(nn.Linear(2, 32), nn.Tanh(), nn.Linear(32, 1)).double()
    torch.set_rng_state(torch_state)
    with torch.no_grad():
        discriminator[2].bias += bias_shift
    discriminator.requires_grad_(False)
    params = list(generator.parameters())
    z = torch.randn(n, 8, generator=gen, dtype=torch.float64)

    def grad(loss: torch.Tensor) -> torch.Tensor:
        return torch.cat([g.flatten() for g in torch.autograd.grad(loss, params, retain_graph=True)])

    h = discriminator(generator(z))  # (n, 1) logits
    d = torch.sigmoid(h)
    return {
        "d_fake": float(d.detach().mean()),
        "minimax": grad(torch.log1p(-d).mean()),  # d/dtheta E[log(1 - D(G(z)))], literally
        "non_saturating": grad(-torch.log(d).mean()),
        "minimax_formula": grad(-(d.detach() * h).mean()),
        "non_saturating_formula": grad(-((1 - d.detach()) * h).mean()),
        "mean_dh": grad(h.mean()),
    }


def score_identity(mu: float = 0.3, sigma: float = 1.2, n: int = 401) -> dict[str, torch.Tensor]:
    """p ∇θ log p = ∇θ p for the Gaussian density p(x; θ) = N(x; μ, σ²), θ = (μ, σ), on n grid
    points of [-6, 6], both sides by autograd in float64 (SPEC §12; the log-derivative trick).

    Returns ``{"x": (n,), "lhs": (n, 2), "rhs": (n, 2)}``: p ∂θ log p and ∂θ p per point.
    """
    x = torch.linspace(-6.0, 6.0, n, dtype=torch.float64)
    theta = torch.tensor([mu, sigma], dtype=torch.float64, requires_grad=True)
    log_p = torch.distributions.Normal(theta[0], theta[1]).log_prob(x)  # (n,)
    lhs = torch.stack([log_p.exp()[i].detach() * torch.autograd.grad(log_p[i], theta, retain_graph=True)[0]
                       for i in range(n)])
    p = log_p.exp()
    rhs = torch.stack([torch.autograd.grad(p[i], theta, retain_graph=True)[0] for i in range(n)])
    return {"x": x, "lhs": lhs, "rhs": rhs}


def score_function_estimates(theta: torch.Tensor, rewards: torch.Tensor, n: int, seed: int = 0
                             ) -> dict[str, torch.Tensor]:
    """The score-function (REINFORCE) estimator of ∇θ E_{a ~ softmax(θ)}[R_a] and its expectation.

    Williams (1992); SPEC §7, §8, §12. With π = softmax(θ) over k arms:

    - ``exact``: ∇θ Σ_a π_a R_a by autograd (k,);
    - ``expectation``: Σ_a π_a R_a ∇θ log π_a, the estimator's expectation computed by
      enumerating the arms: equal to ``exact`` (the estimator is unbiased) up to rounding;
    - ``mean``, ``stderr``: the Monte-Carlo mean of R_a ∇θ log π_a over n draws a ~ π, and its
      standard error per coordinate (k,), for a check within a few standard errors.

    ``theta``, ``rewards``: float64 (k,).
    """
    theta = theta.detach().clone().requires_grad_(True)
    pi = torch.softmax(theta, 0)
    exact = torch.autograd.grad((pi * rewards).sum(), theta, retain_graph=True)[0]
    log_pi = torch.log_softmax(theta, 0)
    scores = torch.stack([torch.autograd.grad(log_pi[a], theta, retain_graph=True)[0] for a in range(len(theta))])
    expectation = (pi.detach()[:, None] * rewards[:, None] * scores).sum(0)
    arms = torch.multinomial(pi.detach(), n, replacement=True, generator=torch.Generator().manual_seed(seed))
    draws = rewards[arms][:, None] * scores[arms]  # (n, k)
    return {"exact": exact, "expectation": expectation, "mean": draws.mean(0),
            "stderr": draws.std(0) / math.sqrt(n)}


def main() -> None:
    x, p_data, p_g = grid_densities()
    d_numeric = optimal_discriminator(p_data, p_g)
    d_star = p_data / (p_data + p_g)
    jsd = jensen_shannon(p_data, p_g)
    print("1. Optimal discriminator on a grid of", len(x), "points")
    print(f"   max |D_numeric - p_data/(p_data+p_g)| = {float((d_numeric - d_star).abs().max()):.2e}")
    print(f"   V(G, D_numeric) = {float(value(p_data, p_g, d_numeric)):.8f} nats")
    print(f"   -log 4 + 2 JSD  = {float(-math.log(4) + 2 * jsd):.8f} nats  (JSD = {float(jsd):.6f})")
    print(f"   V(G, D = 1/2)   = {float(value(p_data, p_g, torch.full_like(p_data, 0.5))):.8f} nats (= -log 4)")
    print("2. Generator gradient norms as D(G(z)) -> 0")
    print("   shift   mean D(G(z))   ||minimax||   ||non-saturating||   ||E[dh/dtheta]||   |minimax - formula|")
    for shift in (0.0, -2.0, -4.0, -8.0, -16.0):
        g = generator_gradients(shift)
        print(f"   {shift:5.0f}   {g['d_fake']:.3e}     {float(g['minimax'].norm()):.3e}     "
              f"{float(g['non_saturating'].norm()):.3e}            {float(g['mean_dh'].norm()):.3e}         "
              f"{float((g['minimax'] - g['minimax_formula']).abs().max()):.1e}")


    print("3. p ∇θ log p = ∇θ p for N(x; μ = 0.3, σ = 1.2), θ = (μ, σ), 401 points of [-6, 6]")
    ident = score_identity()
    print(f"   max |p ∇θ log p - ∇θ p| = {float((ident['lhs'] - ident['rhs']).abs().max()):.2e}"
          f"  (max |∇θ p| = {float(ident['rhs'].abs().max()):.3f})")
    print("4. The score-function estimator is unbiased: softmax over 4 arms, θ = (0.5, -1, 2, 0), R = (1, 3, -2, 0.5)")
    est = score_function_estimates(torch.tensor([0.5, -1.0, 2.0, 0.0], dtype=torch.float64),
                                   torch.tensor([1.0, 3.0, -2.0, 0.5], dtype=torch.float64), n=100_000)
    print(f"   ∇θ E[R] by autograd           = {[round(v, 6) for v in est['exact'].tolist()]}")
    print(f"   E[R ∇θ log π] by enumeration  = {[round(v, 6) for v in est['expectation'].tolist()]}"
          f"  (max difference {float((est['exact'] - est['expectation']).abs().max()):.1e})")
    print(f"   Monte-Carlo mean, 100,000 draws = {[round(v, 4) for v in est['mean'].tolist()]}")
    z = (est["mean"] - est["exact"]) / est["stderr"]
    print(f"   (mean - exact) / standard error = {[round(v, 2) for v in z.tolist()]}")


if __name__ == "__main__":
    main()
