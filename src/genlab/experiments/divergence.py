"""SPEC §11: forward vs reverse Kullback-Leibler divergence.

Part 1, two uniforms. For P = U[0, 1] and Q = U[-2, 2],

    KL(P‖Q) = ∫_0^1 1 · log(1 / (1/4)) dx = log 4,
    KL(Q‖P) = ∫ q log(q / p) = ∞, since Q puts mass 3/4 where p = 0.

Both are computed, three ways: ``torch.distributions.kl_divergence`` (which registers the
Uniform-Uniform pair), numerical integration (``scipy.integrate.quad``; for KL(Q‖P) with p
floored at eps, which grows like (3/4) log(1/eps) without bound), and Monte Carlo with
``log_prob`` (a sample of Q outside [0, 1] has log p = -∞).

Part 2, a Gaussian fitted to a bimodal P (a Gaussian mixture) by stochastic gradient descent:

- forward KL(P‖Q) = -H(P) - E_P[log q]: minimised on samples of P (maximum likelihood). Its
  optimum matches moments: mean E_P[x] = Σ w_i m_i, variance Σ w_i (s_i² + m_i²) - mean².
  It covers both modes ("mean seeking").
- reverse KL(Q‖P) = E_Q[log q - log p]: minimised with reparameterised samples
  x = mean + std · eps, eps ~ N(0, 1) (Kingma and Welling 2014). It sits on one mode
  ("mode seeking"); its optimum is checked against L-BFGS on the quadrature objective.

It reads no data and has no epochs; ``--max-steps`` caps ``--steps``.

    genlab run divergence
    genlab run divergence --modes -3 1 4 --mode-stds 0.5 1 0.3 --weights 0.3 0.3 0.4
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from scipy import integrate, optimize
from torch.distributions import Categorical, MixtureSameFamily, Normal, Uniform, kl_divergence

from genlab.engine import RunConfig, seed_everything
from genlab.errors import ConfigError
from genlab.experiments import one_shot
from genlab.record import Record
from genlab.reports import divergence as report
from genlab.tables import write_csv


@dataclass
class DivergenceConfig(RunConfig):
    """SPEC §11 defaults: P = ½ N(-2, 0.5²) + ½ N(2, 0.5²)."""

    modes: tuple[float, ...] = (-2.0, 2.0)
    """Means of P's Gaussian components."""
    mode_stds: tuple[float, ...] = (0.5, 0.5)
    """Standard deviations of P's components."""
    weights: tuple[float, ...] = (0.5, 0.5)
    """Mixture weights of P's components (normalised to sum 1)."""
    steps: int = 2000
    """Adam steps of each fit (capped by --max-steps)."""
    batch_size: int = 512
    """Samples per step: of P (forward KL) or of eps (reverse KL)."""
    lr: float = 0.03
    """Peak Adam learning rate of both fits, on (mean, log std) (cosine decay to lr/100)."""
    p_samples: int = 20000
    """Fixed sample of P the forward fit learns from (a data set)."""
    init_mean: float = 0.5
    """Starting mean of Q (off-centre, so that the reverse fit's mode is decided by the start)."""
    init_std: float = 1.0
    """Starting standard deviation of Q."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if not len(self.modes) == len(self.mode_stds) == len(self.weights) or not self.modes:
            raise ConfigError("--modes, --mode-stds and --weights need the same number (>= 1) of values")
        if min(self.mode_stds) <= 0 or min(self.weights) < 0 or sum(self.weights) <= 0:
            raise ConfigError("--mode-stds must be > 0 and --weights >= 0 with a positive sum")
        self.require(1, "steps")
        self.require(2, "batch_size", "p_samples")
        self.require(0, "lr", "init_std", above=True)


def uniform_kl(p_low: float = 0.0, p_high: float = 1.0, q_low: float = -2.0, q_high: float = 2.0,
               mc_samples: int = 100_000, seed: int = 0) -> dict:
    """KL(P‖Q) and KL(Q‖P) for P = U[p_low, p_high] ⊂ Q = U[q_low, q_high], three ways.

    Returns (floats in nats, ∞ as float("inf")):
        torch_pq, torch_qp: ``torch.distributions.kl_divergence`` (registered for Uniform pairs);
        quad_pq: ∫ p log(p/q) over P's support (scipy quad);
        quad_qp_floor: {eps: ∫ q log(q / max(p, eps))} for eps = 1e-1 .. 1e-300, which grows
            like Q(p = 0) · log(1/eps); floor_slope: that growth per unit of log(1/eps), by
            least squares; q_mass_outside: Q(p = 0), the predicted slope;
        mc_pq, mc_qp: Monte-Carlo means of log p - log q under P and of log q - log p under Q.
    """
    P = Uniform(*torch.tensor([p_low, p_high], dtype=torch.float64), validate_args=False)
    Q = Uniform(*torch.tensor([q_low, q_high], dtype=torch.float64), validate_args=False)
    p_density, q_density = 1 / (p_high - p_low), 1 / (q_high - q_low)

    def p_pdf(x: float) -> float:
        return p_density if p_low <= x < p_high else 0.0

    quad_pq, _ = integrate.quad(lambda x: p_pdf(x) * math.log(p_pdf(x) / q_density), p_low, p_high)

    def floored(eps: float) -> float:
        pieces = [(q_low, p_low), (p_low, p_high), (p_high, q_high)]
        return sum(integrate.quad(lambda x: q_density * math.log(q_density / max(p_pdf(x), eps)), a, b)[0]
                   for a, b in pieces if b > a)

    epsilons = [10.0 ** -e for e in range(1, 301, 3)]
    quad_qp = {eps: floored(eps) for eps in epsilons}
    slope = float(np.polyfit(np.log(1 / np.array(epsilons)), np.array(list(quad_qp.values())), 1)[0])
    generator = torch.Generator().manual_seed(seed)
    xp = p_low + (p_high - p_low) * torch.rand(mc_samples, dtype=torch.float64, generator=generator)
    xq = q_low + (q_high - q_low) * torch.rand(mc_samples, dtype=torch.float64, generator=generator)
    return {
        "torch_pq": kl_divergence(P, Q).item(), "torch_qp": kl_divergence(Q, P).item(),
        "quad_pq": quad_pq, "quad_qp_floor": quad_qp, "floor_slope": slope,
        "q_mass_outside": ((p_low - q_low) + (q_high - p_high)) / (q_high - q_low),
        "mc_pq": (P.log_prob(xp) - Q.log_prob(xp)).mean().item(),
        "mc_qp": (Q.log_prob(xq) - P.log_prob(xq)).mean().item(),
        "log4": math.log(4),
    }


def mixture(config: DivergenceConfig) -> MixtureSameFamily:
    """P: the Gaussian mixture of the config (float64)."""
    w = torch.tensor(config.weights, dtype=torch.float64)
    return MixtureSameFamily(Categorical(probs=w / w.sum()),
                             Normal(torch.tensor(config.modes, dtype=torch.float64),
                                    torch.tensor(config.mode_stds, dtype=torch.float64)))


def moment_matching(config: DivergenceConfig) -> tuple[float, float]:
    """The forward-KL optimum in closed form: (mean, std) of P."""
    w = np.array(config.weights) / sum(config.weights)
    m, s = np.array(config.modes), np.array(config.mode_stds)
    mean = float((w * m).sum())
    return mean, float(math.sqrt((w * (s**2 + m**2)).sum() - mean**2))


def forward_kl_loss(mean: torch.Tensor, log_std: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """-E_P[log q(x)] over samples x (B,) of P, nats: KL(P‖Q) up to the constant -H(P)."""
    return -Normal(mean, log_std.exp()).log_prob(x).mean()


def reverse_kl_loss(mean: torch.Tensor, log_std: torch.Tensor, p: MixtureSameFamily, eps: torch.Tensor) -> torch.Tensor:
    """E_Q[log q(x) - log p(x)] with x = mean + std · eps, eps (B,) ~ N(0, 1): KL(Q‖P), nats."""
    q = Normal(mean, log_std.exp())
    x = mean + log_std.exp() * eps  # reparameterised: gradients flow to mean and log_std
    return (q.log_prob(x) - p.log_prob(x)).mean()


def kl_quadrature(p: MixtureSameFamily, mean: float, std: float, reverse: bool = False) -> float:
    """KL(P‖Q), or KL(Q‖P) with ``reverse``, for Q = N(mean, std²) by scipy quad on a wide interval, nats."""
    q = Normal(torch.tensor(mean, dtype=torch.float64), torch.tensor(std, dtype=torch.float64))
    comps = p.component_distribution
    lo = min(comps.mean.min().item() - 12 * comps.stddev.max().item(), mean - 12 * std)
    hi = max(comps.mean.max().item() + 12 * comps.stddev.max().item(), mean + 12 * std)

    def integrand(x: float) -> float:  # p log(p/q), or q log(q/p) with ``reverse``
        t = torch.tensor(x, dtype=torch.float64)
        lp, lq = p.log_prob(t).item(), q.log_prob(t).item()
        return math.exp(lq) * (lq - lp) if reverse else math.exp(lp) * (lp - lq)

    return integrate.quad(integrand, lo, hi, points=[*comps.mean.tolist(), mean], limit=200)[0]


def reverse_kl_reference(p: MixtureSameFamily, init_mean: float, init_std: float) -> tuple[float, float]:
    """The reverse-KL optimum from the same start by L-BFGS-B on the quadrature objective."""
    result = optimize.minimize(lambda v: kl_quadrature(p, v[0], math.exp(v[1]), reverse=True),
                               x0=[init_mean, math.log(init_std)], method="L-BFGS-B")
    return float(result.x[0]), float(math.exp(result.x[1]))


def fit(kind: str, config: DivergenceConfig, p: MixtureSameFamily, data: torch.Tensor, steps: int,
        generator: torch.Generator) -> list[dict]:
    """Fit N(mean, std²) by Adam on (mean, log std), learning rate cosine-decayed from ``config.lr``
    to lr/100 over ``steps``; ``kind`` is forward or reverse.

    Returns one row per step (0 = the start): step, mean, std, loss (the minibatch objective).
    """
    mean = torch.tensor(config.init_mean, dtype=torch.float64, requires_grad=True)
    log_std = torch.tensor(math.log(config.init_std), dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.Adam([mean, log_std], lr=config.lr)
    # cosine decay to lr/100, so that the minibatch noise settles by the end
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps, eta_min=config.lr / 100)
    rows = [{"fit": kind, "step": 0, "mean": mean.item(), "std": log_std.exp().item(), "loss": float("nan")}]
    for step in range(1, steps + 1):
        if kind == "forward":  # (1) minimise -E_P[log q] on a minibatch of P's samples
            batch = data[torch.randint(len(data), (config.batch_size,), generator=generator)]
            loss = forward_kl_loss(mean, log_std, batch)
        else:  # (2) minimise E_Q[log q - log p] with reparameterised samples of Q
            eps = torch.randn(config.batch_size, dtype=torch.float64, generator=generator)
            loss = reverse_kl_loss(mean, log_std, p, eps)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        rows.append({"fit": kind, "step": step, "mean": mean.item(), "std": log_std.exp().item(), "loss": loss.item()})
    return rows


def compute(config: DivergenceConfig, out: Path) -> Record:
    """Both parts, their table (the fits per step) and figures under ``out``; returns the record
    (see the module docstring)."""
    seed_everything(config.seed)
    steps = min(config.steps, config.max_steps or config.steps)
    uniform = uniform_kl(seed=config.seed)

    p = mixture(config)
    generator = torch.Generator().manual_seed(config.seed)
    data = p.sample((config.p_samples,))  # (N,) float64, via the global seeded RNG
    rows = fit("forward", config, p, data, steps, generator) + fit("reverse", config, p, data, steps, generator)
    write_csv(out / "metrics" / "fits.csv", rows)
    final = {row["fit"]: (row["mean"], row["std"]) for row in rows}  # the last row of each fit
    moments = moment_matching(config)
    reference = reverse_kl_reference(p, config.init_mean, config.init_std)

    def entry(mean: float, std: float) -> dict:
        return {"mean": mean, "std": std, "kl_pq": kl_quadrature(p, mean, std),
                "kl_qp": kl_quadrature(p, mean, std, reverse=True)}

    nearest = int(np.argmin(np.abs(np.array(config.modes) - final["reverse"][0])))
    gaussian = {
        "forward": entry(*final["forward"]),
        "moment_matching": entry(*moments),
        "sample_moments": {"mean": data.mean().item(), "std": data.std(correction=0).item()},
        "reverse": {**entry(*final["reverse"]), "nearest_mode": config.modes[nearest],
                    "nearest_mode_std": config.mode_stds[nearest]},
        "reverse_reference": entry(*reference),
    }
    figures = out / "figures"
    report.plot_uniform(uniform, figures / "uniform_kl.png")
    report.plot_fits(p, data, {"forward KL fit": final["forward"], "reverse KL fit": final["reverse"]},
                     figures / "fits.png")
    report.plot_training(rows, {"forward": moments, "reverse": reference}, figures / "training.png")
    return report.make_record(config, uniform, gaussian, steps)


EXPERIMENT = one_shot("divergence", "SPEC §11: KL(U[0,1]‖U[-2,2]) = log 4 and the reverse = ∞; forward vs reverse "
                      "KL Gaussian fits", DivergenceConfig, compute, report.CAPTIONS)
