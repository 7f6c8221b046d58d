"""SPEC §7 report: the figures and record of :mod:`genlab.experiments.bandit`.

The probability of the best arm over steps per variant (mean over seeds, and the shares of
seeds on the best arm or locked on a worse one), the logits and policy of the first seed, and
the record: the final P(best) per variant and the closed-form checks of the maths.

``config`` is the run's :class:`genlab.experiments.bandit.BanditConfig`, annotated with its base
class: a report does not import its experiment.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from genlab import plots
from genlab.engine import RunConfig
from genlab.record import Metric, Record, Table, seed_metric
from genlab.tables import fmt

CAPTIONS = {"p_best": "probability of the best arm over steps, per variant, several seeds",
            "theta": "the logits theta of the first seed over steps"}
"""The figures' captions, by file-name prefix."""


def steps_axes(ax, ylabel: str, steps: int) -> None:
    """The bandit figures' axes over steps 0..steps: linear up to step 10, logarithmic after."""
    ax.set_xscale("symlog", linthresh=10)
    ax.set_xlim(0, steps)
    plots.decorate(ax, "step", ylabel, fontsize=7, loc="upper left")


def plot_p_best(results: dict[str, dict], config: RunConfig,
                worse_arm_mass: Callable[[torch.Tensor, int], torch.Tensor], path: Path) -> Path:
    """Left: mean P(best arm) over seeds with a ±1 standard-error band. Right: share of seeds
    whose policy is on the best arm (P > 0.9, solid) or locked on a worse one (dashed: the
    largest probability on another arm, ``worse_arm_mass(pi, best)``, above 0.9;
    :func:`genlab.experiments.bandit.worse_arm_mass`)."""
    best = int(torch.argmax(torch.tensor(config.rewards)))
    fig, axes = plots.plt.subplots(1, 2, figsize=(11.0, 4.2))
    for variant, r in results.items():
        p = r["p_best"].numpy()  # (T+1, S)
        t = np.arange(len(p))
        line = plots.seed_band(axes[0], t, p.T, variant, spread="sem", lw=1.6)
        axes[1].plot(t, (p > 0.9).mean(1), lw=1.6, color=line.get_color(), label=f"{variant}: on the best arm")
        axes[1].plot(t, (worse_arm_mass(r["pi"], best) > 0.9).double().mean(1).numpy(), "--", lw=1.2,
                     color=line.get_color(), label=f"{variant}: locked on a worse arm")
    plots.hline(axes[0], 1 / len(config.rewards), "uniform policy", x=1, ls=":")
    for ax, ylabel in zip(axes, (f"P(best arm), mean ± s.e. over {config.seeds} seeds",
                                 "share of seeds with P > 0.9")):
        steps_axes(ax, ylabel, len(t) - 1)
        ax.set_ylim(-0.02, 1.02)
    fig.suptitle(f"REINFORCE on a {len(config.rewards)}-armed softmax bandit, rewards {tuple(config.rewards)}",
                 fontsize=10)
    return plots.save(fig, path)


def plot_theta(theta: torch.Tensor, config: RunConfig, variant: str, path: Path) -> Path:
    """Left: the logits theta (steps + 1, k) of one seed of ``variant``; right: its policy
    softmax(theta)."""
    eta = {"constant": f"eta = {config.lr:g}", "decaying": f"eta_t = {config.lr:g} / (1 + t / {config.decay_steps:g})",
           "baseline": f"eta = {config.lr:g} with baseline", "adam": f"Adam lr {config.adam_lr:g}"}[variant]
    fig, axes = plots.plt.subplots(1, 2, figsize=(10.0, 4.0))
    t, pi = np.arange(len(theta)), torch.softmax(theta, -1).numpy()
    for i, r in enumerate(config.rewards):
        axes[0].plot(t, theta[:, i].numpy(), lw=1.2, label=f"theta_{i + 1} (R = {r:g})")
        axes[1].plot(t, pi[:, i], lw=1.2, label=f"pi(a_{i + 1})")
    steps_axes(axes[0], "theta", len(t) - 1)
    steps_axes(axes[1], "pi", len(t) - 1)
    fig.suptitle(f"{variant} step {eta}, seed {config.seed}: parameters and policy", fontsize=10)
    return plots.save(fig, path)


def make_record(config: RunConfig, metrics: dict) -> Record:
    """The run's record: per variant the final probability of the best arm (mean and standard
    error over the seeds; SPEC §7 has no reference numbers), the closed-form checks as metrics,
    the variants table and P(best) at a few steps."""
    m, n = metrics["maths"], config.seeds
    out = [seed_metric(f"final_p_best_{variant}", v["final_p_best_mean"], v["final_p_best_std"], n,
                       lower_is_better=False, headline=True,
                       description=f"{variant}: probability of the best arm after {metrics['steps']} steps")
           for variant, v in metrics["variants"].items()]
    out += [Metric("update_vs_autograd_max_abs_error", m["update_vs_autograd_max_abs_error"], lower_is_better=True,
                   description="REINFORCE update eta R (e_i - pi) against autograd of eta R log pi(a_i)"),
            Metric("exact_gradient_vs_autograd_max_abs_error", m["exact_gradient_vs_autograd_max_abs_error"],
                   lower_is_better=True, description="exact gradient pi ⊙ (R - J) against autograd of J"),
            Metric("score_function_max_z", m["score_function_max_z"], "standard errors", lower_is_better=True,
                   description=f"largest deviation of the score-function estimate over "
                               f"{m['estimator_samples']:,} samples from the exact gradient")]
    variants = Table("variants", ["variant", "final P(best) mean ± std", "seeds with P(best) > 0.9",
                                  "seeds locked on a worse arm", f"final J (max {fmt(max(config.rewards))})",
                                  "mean J over the run"],
                     [[variant, f"{v['final_p_best_mean']:.3f} ± {v['final_p_best_std']:.3f}",
                       f"{v['seeds_converged_to_best']} / {n}", f"{v['seeds_locked_on_worse_arm']} / {n}",
                       v["final_expected_reward_mean"], v["mean_expected_reward"]]
                      for variant, v in metrics["variants"].items()],
                     f"rewards {tuple(config.rewards)}, reward noise {config.reward_noise:g}, {metrics['steps']} "
                     f"steps, {n} seeds, eta {config.lr:g} (decaying: eta / (1 + t / {config.decay_steps:g}); "
                     f"baseline momentum {config.baseline_momentum:g}; Adam lr {config.adam_lr:g}).")
    p_best = Table("P(best) during training", ["variant", *[f"t = {t}" for t in metrics["checkpoints"]]],
                   [[variant, *v["p_best_at"]] for variant, v in metrics["variants"].items()],
                   "Probability of the best arm, mean over seeds.")
    return Record("bandit", "REINFORCE on a softmax bandit", "§7", metrics=out, tables=[variants, p_best],
                  extra=metrics)

