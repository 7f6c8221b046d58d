"""SPEC §6 figures and record of :mod:`genlab.experiments.optimizers`: the final test-accuracy
table (optimiser x learning rate, mean ± std over seeds, diverged runs named), training-loss
and test-accuracy curves, metrics.json and summary.md, all read back from the run directory's
metrics CSVs (so ``genlab eval RUN_DIR`` works on a run stopped part-way).
"""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Callable
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
from torch import nn

from genlab import plots
from genlab.engine import read_csv
from genlab.record import Metric, Record, Table, mean_std, run_figures


def final_table(runs: list[dict]) -> dict[str, dict[str, dict]]:
    """optimiser -> lr (as written in the CSV) -> final-epoch statistics over the seeds.

    Each entry: ``mean`` and ``std`` (sample std, ddof=1; 0 for one run) of the test
    accuracy of the runs that did not diverge (None if all did), ``n`` runs, ``diverged``
    runs, their ``last_finite_loss`` and ``diverged_at_step``, and ``accuracies`` per seed.
    """
    last_epoch = max((int(r["epoch"]) for r in runs), default=0)
    table: dict[str, dict[str, dict]] = {}
    for r in runs:
        if int(r["epoch"]) != last_epoch:
            continue
        entry = table.setdefault(r["optimizer"], {}).setdefault(f"{float(r['lr']):g}", {
            "accuracies": {}, "n": 0, "diverged": 0, "last_finite_loss": {}, "diverged_at_step": {}})
        entry["n"] += 1
        if int(r["diverged"]):
            entry["diverged"] += 1
            entry["last_finite_loss"][r["seed"]] = float(r["last_finite_loss"])
            entry["diverged_at_step"][r["seed"]] = int(r["diverged_at_step"])
        else:
            entry["accuracies"][r["seed"]] = float(r["test_accuracy"])
    for entry in (entry for per_lr in table.values() for entry in per_lr.values()):
        entry["mean"], entry["std"] = mean_std(list(entry["accuracies"].values()))
    return table


def format_cell(entry: dict) -> str:
    """'97.12 ± 0.08' (%), with the diverged runs named."""
    if entry["mean"] is None:
        losses = ", ".join(f"{v:.3g}" for v in entry["last_finite_loss"].values())
        return f"diverged ({entry['diverged']}/{entry['n']}; last finite loss {losses})"
    text = f"{100 * entry['mean']:.2f} ± {100 * entry['std']:.2f}"
    if entry["diverged"]:
        text += f" ({entry['diverged']}/{entry['n']} diverged)"
    return text


def accuracy_table(table: dict, lrs: list[str], repeats: int) -> Table:
    """:func:`final_table` as the record's table: one row per optimiser, one column per learning rate."""
    return Table("final test accuracy", ["optimiser", *(f"lr {lr}" for lr in lrs)],
                 [[name, *(format_cell(per_lr[lr]) if lr in per_lr else None for lr in lrs)]
                  for name, per_lr in table.items()],
                 f"Test accuracy (%) after the last epoch, mean ± std over {repeats} seeds (sample std).")


def accuracy_metrics(table: dict) -> list[Metric]:
    """One metric per (optimiser, lr) cell whose runs did not all diverge: the mean test accuracy
    in %, its standard error over the finished seeds; the best cell is the headline (SPEC §6 gives
    no reference numbers)."""
    cells = [(name, lr, e) for name, per_lr in table.items() for lr, e in per_lr.items() if e["mean"] is not None]
    best = max(cells, key=lambda c: c[2]["mean"], default=None)
    out = []
    for name, lr, e in cells:
        n = len(e["accuracies"])
        out.append(Metric(f"test_accuracy_{name}_lr{lr}", 100 * e["mean"], "%",
                          stderr=100 * e["std"] / math.sqrt(n) if n > 1 else None, n_seeds=n, lower_is_better=False,
                          headline=(name, lr) == best[:2],
                          description=f"{name} at learning rate {lr}: final test accuracy"
                                      + (f" ({e['diverged']} of {e['n']} runs diverged)" if e["diverged"] else "")))
    return out


def plot_losses(steps: list[dict], figures: Path, n_classes: int) -> list[Path]:
    """figures/loss_lr{lr}.png: training loss against epoch, one line per optimiser (mean over
    seeds, min-max band), a cross where a run diverged; chance (ln ``n_classes``) dotted."""
    out = []
    for lr in dict.fromkeys(f"{float(r['lr']):g}" for r in steps):
        fig, ax = plt.subplots(figsize=(6.4, 4.0))
        for name in dict.fromkeys(r["optimizer"] for r in steps):
            rows = [r for r in steps if r["optimizer"] == name and f"{float(r['lr']):g}" == lr]
            seeds = list(dict.fromkeys(r["seed"] for r in rows))
            x = np.array([float(r["epoch"]) for r in rows if r["seed"] == seeds[0]])
            y = np.array([[float(r["train_loss"]) for r in rows if r["seed"] == seed] for seed in seeds])  # (S, T)
            line = plots.seed_band(ax, x, y, name)
            for series in y:  # mark each diverged run at its last finite point
                finite = np.isfinite(series)
                if finite.any() and not finite.all():
                    last = np.flatnonzero(finite)[-1]
                    ax.scatter(x[last], series[last], marker="x", color=line.get_color(), zorder=3)
        ax.set_yscale("log")
        plots.hline(ax, math.log(n_classes), f"chance: ln {n_classes}", x=x[0])
        out.append(plots.save_axes(fig, ax, figures / f"loss_lr{lr}.png", "epoch",
                                   "training loss (cross-entropy, nats)",
                                   f"MNIST MLP, learning rate {lr}: mean over seeds, min-max band, x = diverged", 9))
    return out


def plot_accuracy(runs: list[dict], figures: Path) -> Path:
    """figures/test_accuracy.png: test accuracy against epoch, one panel per learning rate."""
    lrs = list(dict.fromkeys(f"{float(r['lr']):g}" for r in runs))
    fig, axes = plt.subplots(1, len(lrs), figsize=(4.2 * len(lrs), 3.6), squeeze=False, sharey=True)
    for ax, lr in zip(axes[0], lrs):
        for name in dict.fromkeys(r["optimizer"] for r in runs):
            rows = [r for r in runs if r["optimizer"] == name and f"{float(r['lr']):g}" == lr]
            epochs = sorted({int(r["epoch"]) for r in rows})
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)  # all seeds diverged: nanmean of nothing
                mean = [np.nanmean([float(r["test_accuracy"]) for r in rows if int(r["epoch"]) == e]) for e in epochs]
            ax.plot(epochs, 100 * np.array(mean), marker=".", label=name)
        plots.decorate(ax, "epoch", "test accuracy (%), mean over seeds" if ax is axes[0][0] else "",
                       f"learning rate {lr}", title_size=9, legend=ax is axes[0][-1])
    return plots.save(fig, figures / "test_accuracy.png")


def summarise(path: Path, make_classifier: Callable[[tuple[int, ...]], nn.Sequential]) -> dict:
    """Write metrics.json, the figures and summary.md of the run directory ``path`` from its
    metrics CSVs (also ``genlab eval RUN_DIR``, for a run stopped part-way). Returns metrics.

    ``make_classifier(hidden)`` builds the run's classifier for the hidden widths in config.json;
    the record names its layer widths and parameter count."""
    path = Path(path)
    config = json.loads((path / "config.json").read_text())
    runs, steps, epochs = (read_csv(path / "metrics" / f"{name}.csv") for name in ("runs", "steps", "epochs"))
    table = final_table(runs)
    lrs = [f"{float(lr):g}" for lr in config["lrs"]]
    classifier = make_classifier(tuple(config["hidden"]))
    n_params = sum(p.numel() for p in classifier.parameters())
    linears = [layer for layer in classifier if isinstance(layer, nn.Linear)]
    widths = [linears[0].in_features, *(layer.out_features for layer in linears)]  # input, *hidden, classes
    done = max((int(r["epoch"]) for r in runs), default=0)
    metrics = {"epochs_done": done, "epochs": config["epochs"],
               "seconds": float(epochs[-1]["seconds"]) if epochs else None,
               "runs": len({(r["optimizer"], r["lr"], r["seed"]) for r in runs}),
               "classifier": f"MLP {'-'.join(map(str, widths))}, {n_params} parameters",
               "final_test_accuracy": table}
    figures = path / "figures"
    figures.mkdir(exist_ok=True)
    if steps:
        plot_losses(steps, figures, widths[-1])
    if runs:
        plot_accuracy(runs, figures)
    captions = {"loss_lr": "training loss per epoch at one learning rate: mean over seeds, min-max band, "
                           "x = diverged",
                "test_accuracy": "test accuracy per epoch, one panel per learning rate"}
    Record("optimizers", "Optimisers on MNIST", "§6", metrics=accuracy_metrics(table),
           tables=[accuracy_table(table, lrs, config["repeats"])], figures=run_figures(path, captions),
           train_seconds=metrics["seconds"], config=config, environment=json.loads((path / "env.json").read_text()),
           notes=[f"{metrics['classifier']}; batch {config['batch_size']}; {done} of {config['epochs']} epochs."],
           extra=metrics).write(path)
    return metrics

