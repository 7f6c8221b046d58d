"""SPEC §8 figures and record of :mod:`genlab.experiments.reinforce`: accuracy, objective and
gradient-variance curves per method (band over seeds), the methods table, metrics.json and
summary.md, from the trainings' curves.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import numpy as np

from genlab import plots
from genlab.engine import DataConfig, RunDir
from genlab.record import Metric, Record, Reference, Table

# SPEC §8 reference: "about 75 % test accuracy after the final iteration with the plain estimator".
REFERENCE_FINAL_ACCURACY = {"reinforce-plain": 0.75}

def steps_to_reach(curve: list[dict], target: float) -> int | None:
    """First evaluated step whose test accuracy is >= target (None if never)."""
    return next((row["step"] for row in curve if row["test_accuracy"] >= target), None)


def summarise(results: list[dict], target: float) -> dict[str, dict]:
    """Per method: final accuracy (mean, std over seeds, per seed), steps to reach ``target``,
    and the gradient-estimate variance averaged over the measurements of training."""
    out = {}
    for method in dict.fromkeys(r["method"] for r in results):
        runs = [r for r in results if r["method"] == method]
        final = [r["curve"][-1]["test_accuracy"] for r in runs]
        reach = [steps_to_reach(r["curve"], target) for r in runs]
        reached = [s for s in reach if s is not None]

        def over_seeds(key: str, pick: Callable = np.mean) -> float | None:
            """Mean over seeds of ``pick`` (default: the mean) of the measurements of ``key``."""
            values = [[row[key] for row in r["curve"] if key in row] for r in runs]
            return float(np.mean([pick(v) for v in values])) if all(values) else None

        out[method] = {
            "seeds": [r["seed"] for r in runs],
            "final_accuracy": final, "final_accuracy_mean": float(np.mean(final)),
            "final_accuracy_std": float(np.std(final, ddof=1)) if len(final) > 1 else 0.0,
            "steps_to_target": reach, "steps_to_target_mean": float(np.mean(reached)) if reached else None,
            "grad_var_mean": over_seeds("grad_var"), "grad_var_start": over_seeds("grad_var", lambda v: v[0]),
            "grad_var_end": over_seeds("grad_var", lambda v: v[-1]),
            "grad_var_labels_mean": over_seeds("grad_var_labels"), "grad_sq_norm_mean": over_seeds("grad_sq_norm"),
            "seconds_mean": float(np.mean([r["seconds"] for r in runs])),
        }
    return out


COLORS = {"reinforce-plain": "tab:red", "reinforce-baseline": "tab:blue", "supervised": "tab:green"}
FIGURES = {  # file name: (curve key, y label, caption (also the title), log scale); {objective_size}: see finish
    "accuracy": ("test_accuracy", "test accuracy", "test accuracy per method (band: min-max over seeds)", False),
    "objective": ("train_objective", "E[0-1 loss] = mean 1 - p(t | x)",
                  "expected 0-1 loss of the policy on {objective_size:,} training inputs", True),
    "grad_variance": ("grad_var", "tr Cov(g) (squared gradient units)",
                      "variance of the minibatch gradient estimate (dashed: labels only)", True),
}


def plot_bands(results: list[dict], key: str, path: Path, ylabel: str, title: str, logy: bool = False,
               hlines: dict[str, float] | None = None, reference: dict[str, float] | None = None) -> Path:
    """Mean over seeds (line), min-max over seeds (band) and each seed (thin lines) of ``key``
    against the step, one colour per method; ``reference``: method -> value at the last step.
    For ``grad_var`` the labels-only part (``grad_var_labels``, mean over seeds) is drawn dashed."""
    fig, ax = plots.plt.subplots(figsize=(7.0, 4.2))
    for method in dict.fromkeys(r["method"] for r in results):
        rows = [[row for row in r["curve"] if not math.isnan(row.get(key, math.nan))]
                for r in results if r["method"] == method]  # per seed
        if not rows[0]:
            continue
        steps = np.array([row["step"] for row in rows[0]])
        values = np.array([[row[key] for row in seed_rows] for seed_rows in rows])  # (seeds, points)
        color = COLORS.get(method)
        plots.seed_band(ax, steps, values, f"{method} (mean of {len(rows)} seeds)", spread="range", seed_lines=True,
                        alpha=0.15, color=color, lw=1.8)
        if key == "grad_var":
            dashed = np.array([[row["grad_var_labels"] for row in seed_rows] for seed_rows in rows]).mean(0)
            if dashed.any():
                ax.plot(steps, dashed, color=color, lw=1.2, ls="--", label=f"{method}, labels only")
        if reference and method in reference:
            ax.scatter([steps[-1]], [reference[method]], marker="x", s=60, color=color, zorder=3,
                       label=f"{method}: SPEC reference")
    for label, y in (hlines or {}).items():
        plots.hline(ax, y, label, ls=":", lw=0.9)
    ax.set_yscale("log" if logy else "linear")
    plots.decorate(ax, "optimiser step", ylabel, title, title_size=10, fontsize=7)
    return plots.save(fig, path)


def methods_table(summary: dict[str, dict], target: float) -> Table:
    """Per method: final accuracy, steps to ``target``, gradient-estimate variance."""
    rows = [[method, f"{100 * s['final_accuracy_mean']:.2f} ± {100 * s['final_accuracy_std']:.2f} %",
             ", ".join(f"{100 * a:.2f}" for a in s["final_accuracy"]),
             ("n/a" if s["steps_to_target_mean"] is None else f"{s['steps_to_target_mean']:.0f}") + "; "
             + ", ".join("never" if v is None else str(v) for v in s["steps_to_target"]),
             s["grad_var_mean"], s["grad_var_start"], s["grad_var_end"], s["grad_var_labels_mean"],
             s["grad_sq_norm_mean"]] for method, s in summary.items()]
    return Table("methods", ["method", "final test accuracy (mean ± std)", "per seed",
                             f"steps to {round(100 * target)} % (mean; per seed)", "tr Cov(g), mean over training",
                             "at step 0", "at the end", "labels only, mean", "‖E g‖², mean"], rows)


def finish(run_dir: RunDir, config: DataConfig, majority_accuracy: float, results: list[dict], elapsed: float,
           objective_size: int) -> dict:
    """Figures, metrics.json and summary.md.

    ``config`` is the run's :class:`genlab.experiments.reinforce.ReinforceConfig`;
    ``majority_accuracy``: test accuracy of always answering the training set's majority label;
    ``results``: one {"method", "seed", "curve", "seconds"} per training, in training order;
    ``elapsed``: training seconds; ``objective_size``: training inputs on which the curves'
    ``train_objective`` was measured.
    """
    label = {"mnist-gt5": "MNIST, digit > 5", "threshold": "x ~ U[0, 10], x > 5"}[config.task]
    reference = REFERENCE_FINAL_ACCURACY if config.task == "mnist-gt5" else {}
    hlines = {f"{round(100 * config.target_accuracy)} %": config.target_accuracy,
              "majority label": majority_accuracy}
    captions = {name: caption.format(objective_size=objective_size) for name, (_, _, caption, _) in FIGURES.items()}
    for name, (key, ylabel, _, logy) in FIGURES.items():
        if key != "grad_var" or config.variance_every:
            plot_bands(results, key, run_dir.path / "figures" / f"{name}.png", ylabel, f"{label}: {captions[name]}",
                       logy, hlines=hlines if key == "test_accuracy" else None,
                       reference=reference if key == "test_accuracy" else None)
    summary = summarise(results, config.target_accuracy)
    metrics = {"task": config.task, "methods": summary, "majority_accuracy": majority_accuracy,
               "steps": results[0]["curve"][-1]["step"], "reference": {"final_accuracy": reference or None}}
    out = []
    for method, m in summary.items():
        n, ref = len(m["final_accuracy"]), reference.get(method)
        out.append(Metric(f"final_accuracy_{method}", 100 * m["final_accuracy_mean"], "%",
                          stderr=100 * m["final_accuracy_std"] / math.sqrt(n) if n > 1 else None, n_seeds=n,
                          lower_is_better=False, headline=method == next(iter(summary)),
                          reference=Reference(100 * ref, section="§8", note="about 75 % with the plain estimator")
                          if ref else None,
                          description=f"{label}: test accuracy after the final step ({metrics['steps']})"))
    notes = [f"{len(results)} trainings ({', '.join(config.methods)} × seeds "
             f"{', '.join(str(config.seed + s) for s in range(config.seeds))}), {metrics['steps']} steps each, "
             f"batch {config.batch_size}, {config.samples_per_input} label(s) per input, {config.optimizer} "
             f"lr {config.lr}, hidden {config.hidden}.",
             f"Always answering the majority label scores {100 * majority_accuracy:.2f} % on the test set."]
    run_dir.write_record(Record("reinforce", f"REINFORCE vs supervised, {label}", "§8", metrics=out,
                                tables=[methods_table(summary, config.target_accuracy)],
                                figures=run_dir.figures(captions), train_seconds=elapsed, notes=notes,
                                extra=metrics))
    return metrics

