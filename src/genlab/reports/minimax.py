"""SPEC §5 report: the figures and record of :mod:`genlab.experiments.minimax`.

Per function, the iterates of every method over the contours of f, their distance to the
target stationary point against the closed-form (or linearised) rate, and the step-size sweep's
observed against predicted behaviour; the record compares each observed rate with its closed
form and tabulates the stationary points, the methods and the sweep's diagonal.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from genlab import plots
from genlab.record import Metric, Record, Reference, Table
from genlab.tables import fmt


def plot_trajectories(f: Callable, title: str, paths: dict[str, np.ndarray], point: dict, path: Path) -> Path:
    """The iterates of every method (``paths``: method -> (K+1, 2)) over the contours of f,
    around the target ``point`` (a :func:`genlab.experiments.minimax.stationary_points` entry)."""
    start = next(iter(paths.values()))[0]
    half = 1.6 * max(abs(start[0] - point["x"]), abs(start[1] - point["y"]), 0.5)
    xs = np.linspace(point["x"] - half, point["x"] + half, 200)
    ys = np.linspace(point["y"] - half, point["y"] + half, 200)
    gx, gy = np.meshgrid(xs, ys)
    with torch.no_grad():
        values = f(torch.from_numpy(gx), torch.from_numpy(gy)).numpy()
    fig, ax = plots.plt.subplots(figsize=(6.4, 5.6))
    contour = ax.contourf(gx, gy, values, levels=30, cmap="coolwarm", alpha=0.75)
    ax.contour(gx, gy, values, levels=15, colors="k", linewidths=0.3, alpha=0.5)
    fig.colorbar(contour, ax=ax, label="f(x, y)")
    for name, zs in paths.items():
        ax.plot(zs[:, 0], zs[:, 1], ".-", ms=2.5, lw=0.9, label=name)
    ax.plot(*start, "ko", ms=6, label="start")
    ax.plot(point["x"], point["y"], "k*", ms=12, label=f"{point['type']} ({point['x']:.3g}, {point['y']:.3g})")
    ax.set_xlim(xs[0], xs[-1])
    ax.set_ylim(ys[0], ys[-1])
    plots.decorate(ax, "x (minimising)", "y (maximising)", title, title_size=10, grid=None, fontsize=7,
                   loc="upper left")
    return plots.save(fig, path)


def plot_distances(title: str, distances: dict[str, np.ndarray], rates: dict[str, float], path: Path) -> Path:
    """The distance to the target per iteration (log scale) of every method, beside d_0 rate^k
    dashed (``rates``: method -> the closed-form or linearised rate)."""
    fig, ax = plots.plt.subplots(figsize=(6.4, 4.2))
    k = np.arange(len(next(iter(distances.values()))))
    lo, hi = np.inf, 0.0
    for name, d in distances.items():
        (line,) = ax.semilogy(k, d, lw=1.4, label=f"{name} (observed)")
        with np.errstate(divide="ignore", over="ignore"):
            analytic = d[0] * rates[name] ** k.astype(np.float64)
        ax.semilogy(k, analytic, "--", lw=1.0, color=line.get_color(), label=f"rate {rates[name]:.4g}^k")
        finite = d[np.isfinite(d) & (d > 0)]
        if finite.size:
            lo, hi = min(lo, finite.min()), max(hi, finite.max())
    ax.set_ylim(max(lo / 3, 1e-17), min(hi * 3, 1e17))
    plots.decorate(ax, "iteration k", "distance to the stationary point", title, title_size=10, grid="both",
                   fontsize=7, ncol=2)
    return plots.save(fig, path)


def plot_sweep(title: str, result: dict[str, torch.Tensor], name: str, differs: torch.Tensor, path: Path) -> Path:
    """The observed rate over the step-size grid of :func:`genlab.experiments.minimax.sweep` (green
    converges, red diverges), the linearised rate = 1 contour, f1's analytic region, and crosses
    where the observed and predicted behaviours differ (``differs``: bool (n, n), indexed as
    ``result``)."""
    from matplotlib.colors import TwoSlopeNorm
    from matplotlib.patches import Rectangle

    ex, ey = result["eta_x"].numpy(), result["eta_y"].numpy()
    observed = np.clip(result["observed"].numpy(), 0, 2)
    fig, ax = plots.plt.subplots(figsize=(6.0, 5.0))
    mesh = ax.pcolormesh(ex, ey, observed, cmap="RdYlGn_r", norm=TwoSlopeNorm(vmin=0, vcenter=1, vmax=2),
                         shading="nearest")
    fig.colorbar(mesh, ax=ax, label="observed rate per step (< 1 converges)")
    predicted = result["predicted"].numpy()
    if predicted.min() < 1 < predicted.max():
        ax.contour(ex, ey, predicted, levels=[1.0], colors="k", linestyles="--", linewidths=1.0)
        ax.plot([], [], "k--", label="linearised rate = 1 (autograd)")
    if name == "f1":
        ax.add_patch(Rectangle((0, 0), 0.25, 0.25, fill=False, ec="blue", lw=2.0,
                               label="analytic region 0 < eta_x, eta_y < 1/4"))
    wrong = differs.numpy()
    if wrong.any():
        ax.plot(ex[wrong], ey[wrong], "kx", ms=5, label="observed ≠ predicted behaviour")
    ax.set_xlim(0, ex.max() + ex[0, 0])
    ax.set_ylim(0, ey.max() + ey[0, 0])
    plots.decorate(ax, "eta_x", "eta_y", title, title_size=10, grid=None,
                   legend=bool(ax.get_legend_handles_labels()[0]), fontsize=7, loc="upper right")
    return plots.save(fig, path)


def make_record(results: dict, behaviour_name: Callable[[float, float], str]) -> Record:
    """The run's record: per function and method the observed contraction rate of the distance
    to the target point, against the closed-form rate of SPEC §5 where there is one (the rates
    of simultaneous GDA are the headline); the step-size sweep's agreement; per function the
    stationary points, the methods and the sweep's diagonal as tables.

    ``behaviour_name(rate, marginal)`` names a rate's behaviour (converges, marginal, diverges;
    :func:`genlab.experiments.minimax.behaviour_name`)."""
    metrics, tables, notes = [], [], []
    for label, r in results.items():
        for m, v in r["methods"].items():
            closed = v["closed_form_rate"]
            metrics.append(Metric(
                f"rate_{label}_{m}", v["observed_rate"], lower_is_better=None, headline=m == "simultaneous",
                reference=Reference(closed, section="§5", note="closed form") if closed is not None else None,
                tolerance=1e-6 * max(1.0, abs(closed)) if closed is not None else None,
                description=f"{label}, {m}: observed per-step factor of the distance to "
                            f"({fmt(r['target']['x'])}, {fmt(r['target']['y'])}), eta_x = {r['eta_x']:g}, "
                            f"eta_y = {r['eta_y']:g} ({v['observed']}; linearised {v['linearised_rate']:.6g})"))
        tables.append(Table(f"{label}: stationary points", ["x", "y", "|grad f|", "Hessian eigenvalues", "type"],
                            [[p["x"], p["y"], p["gradient_norm"], ", ".join(fmt(v) for v in p["hessian_eigenvalues"]),
                              p["type"]] for p in r["stationary_points"]],
                            f"f(x, y) = {r['expression']}; gradient and Hessian by autograd."))
        tables.append(Table(f"{label}: methods", ["method", "observed rate", "closed-form rate",
                                                  "linearised rate (autograd)", "final distance", "observed",
                                                  "predicted"],
                            [[m, v["observed_rate"], v["closed_form_rate"], v["linearised_rate"], v["final_distance"],
                              v["observed"], v["predicted"]] for m, v in r["methods"].items()],
                            f"Start {tuple(r['start'])}, {r['iterations']} iterations."))
        s = r.get("sweep")
        if s:
            metrics.append(Metric(f"sweep_agreement_{label}", s["agree"] / s["points"], lower_is_better=False,
                                  description=f"{label}: share of the {s['points']} sweep points where the observed "
                                              f"behaviour is the linearised one"))
            counts = "; ".join(f"{k} {seen} observed / {s['predicted'][k]} predicted"
                               for k, seen in s["observed"].items())
            notes.append(f"{label}: step-size sweep ({s['method']}, {s['grid'][0]}x{s['grid'][1]} grid up to "
                         f"{s['eta_max']:g}, {s['iterations']} iterations, rates within {r['marginal']:g} of 1 "
                         f"marginal): {counts}. Observed and linearised behaviour agree on {s['agree']} / "
                         f"{s['points']} points"
                         + (f", observed and closed form on {s['agree_with_closed_form']} / {s['points']}"
                            if s["agree_with_closed_form"] is not None else "")
                         + (f"; analytic convergence region {s['closed_form_region']}"
                            if s["closed_form_region"] else "") + ".")
            diag = s["diagonal"][:: max(1, len(s["diagonal"]) // 7)]
            tables.append(Table(f"{label}: sweep diagonal", ["eta_x = eta_y", "observed rate", "predicted rate",
                                                             "observed", "predicted"],
                                [[d["eta"], d["observed_rate"], d["linearised_rate"],
                                  behaviour_name(d["observed_rate"], r["marginal"]),
                                  behaviour_name(d["linearised_rate"], r["marginal"])] for d in diag]))
    return Record("minimax", "Gradient descent-ascent dynamics", "§5", metrics=metrics, tables=tables, notes=notes,
                  extra={"functions": results})


def captions(labels: list[str]) -> dict[str, str]:
    """The figures' captions, by file-name prefix (``f1_sweep``: f1's step-size sweep), for the
    functions' ``labels`` (:func:`genlab.experiments.minimax.labels`)."""
    return {f"{label}_{kind}": f"{label}: {text}" for label in labels for kind, text in (
        ("trajectories", "trajectories of every method over the contours of f"),
        ("distance", "distance to the target point per iteration (log scale), with the analytic rate"),
        ("sweep", "step-size sweep: observed against predicted convergence"))}
