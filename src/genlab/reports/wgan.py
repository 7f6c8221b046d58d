"""The wgan experiment's (SPEC §3) figures and record: the critic's contours and the generated
samples over training, the critic's estimate and the exact W1 over iterations, the comparison
table of the Lipschitz methods, metrics.json and summary.md (:mod:`genlab.experiments.wgan`
trains and evaluates; this module reports)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from genlab import plots
from genlab.engine import RunConfig, RunDir
from genlab.record import Figure, Metric, Record, Table


def plot_snapshots(done: dict, data: torch.Tensor, lim: float, path: Path) -> Path:
    """One row per method, one column per snapshot: critic contours, target (grey) and
    generated (red) samples."""
    methods = list(done)
    iters = sorted(done[methods[0]]["snapshots"])
    fig, axes = plots.plt.subplots(len(methods), len(iters), figsize=(2.3 * len(iters), 2.3 * len(methods)),
                                   squeeze=False)
    g = np.linspace(-lim, lim, 120)
    shown = data[:2000].numpy()
    for i, method in enumerate(methods):
        for j, k in enumerate(iters):
            ax, snap = axes[i, j], done[method]["snapshots"][k]
            ax.contourf(g, g, snap["critic"].cpu().numpy(), levels=20, cmap="coolwarm", alpha=0.8)
            ax.scatter(*shown.T, s=1, c="0.2", alpha=0.5, linewidths=0)
            ax.scatter(*snap["fake"].cpu().numpy().T, s=1.5, c="gold", alpha=0.8, linewidths=0)
            ax.set(xlim=(-lim, lim), ylim=(-lim, lim), xticks=[], yticks=[], aspect="equal")
            if i == 0:
                ax.set_title(f"iteration {k}", fontsize=9)
            if j == 0:
                ax.set_ylabel(method, fontsize=9)
    fig.suptitle("Critic d (colour: blue low, red high), target (dark) and generated (yellow) samples", fontsize=9)
    return plots.save(fig, path)


def plot_wasserstein(done: dict, config: RunConfig, floor: float, path: Path) -> Path:
    """Left: the critic's estimate E[d(a)] - E[d(h(w))] per iteration (moving average);
    right: the exact W1 to the target (ot.emd2) during training, log scale."""
    fig, (left, right) = plots.plt.subplots(1, 2, figsize=(11, 4))
    window = max(1, min(500, config.iterations // 20))
    kernel = np.ones(window) / window
    for method, state in done.items():
        smooth = np.convolve(state["estimates"].cpu().numpy(), kernel, mode="valid")
        (line,) = left.plot(np.arange(window, window + len(smooth)), smooth, lw=1, label=method)
        curve = np.array(state["w1_curve"])
        right.plot(curve[:, 0], curve[:, 1], marker="o", ms=3, lw=1, color=line.get_color(), label=method)
    plots.hline(right, floor, "target vs target (sampling floor)", x=0)
    right.set_yscale("log")
    plots.decorate(left, "critic iteration", "E[d(a)] - E[d(h(w))]",
                   f"Critic's Wasserstein estimate (moving average over {window})")
    plots.decorate(right, "critic iteration", "W1 (ot.emd2)",
                   f"Exact W1 to the target, {config.curve_samples} vs {config.curve_samples} samples")
    return plots.save(fig, path)


def finish(run_dir: RunDir, config: RunConfig, done: dict, data: torch.Tensor, lim: float, target_vs_target: dict,
           curve_floor: float, elapsed: float | None) -> dict:
    """Figures, the comparison table, metrics.json and summary.md.

    ``config``: the wgan run's config; ``done``: each method's training (estimates, snapshots,
    exact-W1 curve, final evaluation); ``data``: the empirical target (N, 2) on the CPU; ``lim``:
    the half-width of the plotted square; ``target_vs_target``, ``curve_floor``: the sampling floor
    (:func:`genlab.experiments.wgan.sampling_floor`).
    """
    figs = run_dir.path / "figures"
    plot_snapshots(done, data, lim, figs / "snapshots.png")
    plot_wasserstein(done, config, curve_floor, figs / "wasserstein.png")
    metrics = {"methods": [state["result"] for state in done.values()],
               "target_vs_target": target_vs_target,
               "eval_samples": config.eval_samples, "elapsed_s": elapsed}
    run_dir.write_record(make_record(config, metrics, run_dir.figures(FIGURE_CAPTIONS)))
    return metrics


FIGURE_CAPTIONS = {
    "snapshots": "target and generated samples with the critic's contours over training, one row per method",
    "wasserstein": "the critic's Wasserstein estimate and the exact W1 to the target over iterations",
}


def make_record(config: RunConfig, metrics: dict, figures: list[Figure]) -> Record:
    """The run's record: per Lipschitz method the exact W1 to held-out target samples, the modes
    covered and the high-quality share (SPEC §3 has no reference numbers), and the comparison table
    with the target-vs-target floor."""
    n, floor = metrics["eval_samples"], metrics["target_vs_target"]
    out = []
    for i, r in enumerate(metrics["methods"]):
        m = r["method"]
        out += [Metric(f"w1_{m}", r["w1"], lower_is_better=True, headline=i == 0,
                       description=f"exact Wasserstein-1 distance, {n:,} generated vs {n:,} held-out target "
                                   f"samples (ot.emd2); target vs target: {floor['w1']:.4f}"),
                Metric(f"modes_covered_{m}", r["modes_covered"], lower_is_better=False,
                       description=f"modes (of {r['modes']}) with at least {config.min_mode_samples} samples "
                                   f"within 3 std"),
                Metric(f"high_quality_share_{m}", r["high_quality_share"], lower_is_better=False,
                       description="share of samples within 3 std of a mode")]
    table = Table("Lipschitz methods", ["method", f"exact W1 ({n} vs {n}, ot.emd2)", "modes covered",
                                        "high-quality share (<= 3 std)", "critic's final estimate", "iterations/s"],
                  [[r["method"], r["w1"], f"{r['modes_covered']}/{r['modes']}", r["high_quality_share"],
                    r["final_estimate"], r["iterations_per_s"]] for r in metrics["methods"]]
                  + [["target vs target", floor["w1"], f"{floor['modes_covered']}/{floor['modes']}",
                      floor["high_quality_share"], None, None]],
                  f"Target: {config.target} ({floor['modes']} modes, std {config.std}); {config.iterations} critic "
                  f"iterations ({config.n_critic} per generator step), batch {config.batch_size}.")
    return Record("wgan", "WGAN on a 2-D mixture of Gaussians", "§3", metrics=out, tables=[table], figures=figures,
                  train_seconds=metrics["elapsed_s"], extra=metrics)
