"""SPEC §11 report: the figures and record of :mod:`genlab.experiments.divergence`.

The two uniforms' densities and KL(Q‖P) with p floored at eps, the Gaussian fits against the
bimodal P and over training, and the record: KL(P‖Q) of the uniforms against log 4 and the KL
each fit reaches against its optimum.

``config`` is the run's :class:`genlab.experiments.divergence.DivergenceConfig`, annotated with
its base class: a report does not import its experiment.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from torch.distributions import MixtureSameFamily, Normal

from genlab import plots
from genlab.engine import RunConfig
from genlab.record import Metric, Record, Reference, Table
from genlab.tables import fmt

CAPTIONS = {"uniform_kl": "KL between the uniforms: closed form, quadrature with a floor, Monte Carlo",
            "fits": "the forward- and reverse-KL Gaussian fits against the bimodal P",
            "training": "the fits' mean, std and KL during training, with their optima"}
"""The figures' captions, by file-name prefix."""


def plot_uniform(u: dict, path: Path) -> Path:
    """Left: the densities of P = U[0, 1] and Q = U[-2, 2]; right: KL(Q‖P) with p floored at
    eps against log10(1/eps), by quadrature and in closed form."""
    fig, axes = plots.plt.subplots(1, 2, figsize=(10.0, 3.8))
    x = np.linspace(-2.5, 2.5, 1001)
    axes[0].plot(x, np.where((x >= 0) & (x < 1), 1.0, 0.0), lw=1.6, label="P = U[0, 1]")
    axes[0].plot(x, np.where((x >= -2) & (x < 2), 0.25, 0.0), lw=1.6, label="Q = U[-2, 2]")
    plots.decorate(axes[0], "x", "density", f"KL(P‖Q) = {u['torch_pq']:.6f} (log 4 = {u['log4']:.6f});  "
                   f"KL(Q‖P) = {fmt(u['torch_qp'])}", title_size=9)
    eps = np.array(list(u["quad_qp_floor"]))
    kl = np.array(list(u["quad_qp_floor"].values()))
    axes[1].plot(np.log10(1 / eps), kl, ".-", ms=3, label="∫ q log(q / max(p, eps)) (scipy quad)")
    axes[1].plot(np.log10(1 / eps), -0.25 * math.log(4) + u["q_mass_outside"] * np.log(0.25 / eps), "--", lw=1,
                 label="(3/4) log(1/(4 eps)) - (1/4) log 4 (closed form)")
    plots.hline(axes[1], u["log4"], "KL(P‖Q) = log 4", x=0, ls=":", lw=1)
    plots.decorate(axes[1], "log10(1 / eps)", "KL(Q‖P) with p floored at eps (nats)",
                   f"grows without bound: slope {u['floor_slope']:.4f} per nat of log(1/eps)", title_size=9,
                   fontsize=7)
    return plots.save(fig, path)


def plot_fits(p: MixtureSameFamily, data: torch.Tensor, fits: dict[str, tuple[float, float]], path: Path) -> Path:
    """The density of P, a histogram of its sample and the fitted Gaussians N(mean, std²) of ``fits``."""
    comps = p.component_distribution
    lo = min(comps.mean.min().item() - 4 * comps.stddev.max().item(), *(m - 4 * s for m, s in fits.values()))
    hi = max(comps.mean.max().item() + 4 * comps.stddev.max().item(), *(m + 4 * s for m, s in fits.values()))
    x = torch.linspace(lo, hi, 1000, dtype=torch.float64)
    fig, ax = plots.plt.subplots(figsize=(7.0, 4.2))
    ax.hist(data.numpy(), bins=120, density=True, color="lightgray", label="samples of P")
    ax.plot(x, p.log_prob(x).exp(), "k", lw=2, label="P (mixture)")
    for (name, (m, s)), style in zip(fits.items(), ("-", "--", ":", "-.")):
        ax.plot(x, Normal(m, s).log_prob(x).exp(), style, lw=1.8, label=f"{name}: N({m:.3f}, {s:.3f}²)")
    plots.decorate(ax, "x", "density", "A Gaussian fitted to a bimodal P: forward KL covers, reverse KL picks a mode",
                   title_size=9)
    return plots.save(fig, path)


def plot_training(rows: list[dict], targets: dict[str, tuple[float, float]], path: Path) -> Path:
    """The mean and std of each fit over its steps (``rows`` of
    :func:`genlab.experiments.divergence.fit`), the optimum (mean, std) of ``targets`` dashed."""
    fig, axes = plots.plt.subplots(1, 2, figsize=(10.0, 3.6))
    for kind in ("forward", "reverse"):
        r = [row for row in rows if row["fit"] == kind]
        steps = [row["step"] for row in r]
        (line,) = axes[0].plot(steps, [row["mean"] for row in r], label=f"{kind} KL: mean")
        axes[1].plot(steps, [row["std"] for row in r], color=line.get_color(), label=f"{kind} KL: std")
        for ax, target in zip(axes, targets.get(kind, ())):
            ax.axhline(target, ls="--", lw=0.8, color=line.get_color())
    for ax, label in zip(axes, ("mean of Q", "std of Q")):
        plots.decorate(ax, "Adam step", label)
    fig.suptitle("Fits over training; dashed: moment matching (forward) and L-BFGS on quadrature (reverse)",
                 fontsize=9)
    return plots.save(fig, path)


def make_record(config: RunConfig, uniform: dict, gaussian: dict, steps: int) -> Record:
    """The run's record: KL(P‖Q) of the uniforms against its closed form log 4 (SPEC §11), and
    the KL the two Gaussian fits reach against their optima computed in this run (moment matching
    for the forward KL, L-BFGS on quadrature for the reverse KL); both as tables.

    Args: ``uniform`` of :func:`genlab.experiments.divergence.uniform_kl`; ``gaussian``: fit name
    -> mean, std and their KLs; ``steps`` of each fit. All of it is the record's ``extra``.
    """
    w = np.array(config.weights) / sum(config.weights)
    description = " + ".join(f"{wi:g} N({m:g}, {s:g}²)" for wi, m, s in zip(w, config.modes, config.mode_stds))
    # JSON has no infinity: an infinite KL is written as the string "inf" (float("inf") reads it back)
    uniform_json = {k: "inf" if isinstance(v, float) and math.isinf(v) else v for k, v in uniform.items()}
    uniform_json["quad_qp_floor"] = {f"{k:.0e}": v for k, v in uniform["quad_qp_floor"].items()}
    m = {"uniform": uniform_json, "p": description, "gaussian_fit": gaussian, "steps": steps}
    u, g = m["uniform"], m["gaussian_fit"]
    log4 = Reference(u["log4"], section="§11", note="closed form")
    metrics = [
        Metric("kl_pq_uniform", u["torch_pq"], "nats", reference=log4, tolerance=1e-9, headline=True,
               description="KL(U[0, 1] ‖ U[-2, 2]) by torch.distributions"),
        Metric("kl_pq_uniform_monte_carlo", u["mc_pq"], "nats", reference=log4,
               description="the same KL, Monte-Carlo estimate"),
        Metric("forward_kl_fit", g["forward"]["kl_pq"], "nats", lower_is_better=True,
               reference=Reference(g["moment_matching"]["kl_pq"], note="moment matching (its optimum), this run"),
               description="KL(P ‖ Q) of the Gaussian fitted by minimising it (Adam on samples)"),
        Metric("reverse_kl_fit", g["reverse"]["kl_qp"], "nats", lower_is_better=True, headline=True,
               reference=Reference(g["reverse_reference"]["kl_qp"], note="L-BFGS on quadrature, this run"),
               description=f"KL(Q ‖ P) of the Gaussian fitted by minimising it (reparameterised Adam); it sits on "
                           f"the mode at {g['reverse']['nearest_mode']:g} (std {g['reverse']['nearest_mode_std']:g})"),
    ]
    floor = max(v for v in u["quad_qp_floor"].values() if isinstance(v, float))
    uniform = Table("P = U[0, 1], Q = U[-2, 2]", ["quantity", "closed form", "torch.distributions",
                                                 "quadrature (scipy)", "Monte Carlo"],
                    [["KL(P‖Q)", u["log4"], u["torch_pq"], u["quad_pq"], u["mc_pq"]],
                     ["KL(Q‖P)", "∞", str(u["torch_qp"]),
                      f"≥ {fmt(floor)} at eps = 1e-298, slope {u['floor_slope']:.4f} "
                      f"(closed form {u['q_mass_outside']:.4f})", str(u["mc_qp"])]], "Nats.")
    fits = Table(f"Gaussian Q fitted to P = {m['p']}", ["fit", "mean", "std", "KL(P‖Q) nats", "KL(Q‖P) nats"],
                 [[label, *(g[key].get(k) for k in ("mean", "std", "kl_pq", "kl_qp"))] for key, label in (
                     ("forward", "forward KL (Adam on samples)"), ("moment_matching", "moment matching (closed form)"),
                     ("sample_moments", "sample moments of the data"),  # no KL: None
                     ("reverse", "reverse KL (Adam, reparameterised)"),
                     ("reverse_reference", "reverse KL (L-BFGS on quadrature)"))])
    return Record("divergence", "Forward vs reverse KL", "§11", metrics=metrics, tables=[uniform, fits], extra=m)
