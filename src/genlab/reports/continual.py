"""Continual learning's figures and record (SPEC §9): per (model, method) the accuracy matrix as CSV
and heat map, task-1 accuracy over the steps, average accuracy along the sequence, the EWC λ sweep,
the summary table (metrics/summary.csv), the MLP-vs-CNN table, metrics.json and summary.md.

Everything is built from the results of the experiment's jobs (``genlab.experiments.continual``,
one dict per (model, method, λ, seed) as in metrics/results.jsonl): the accuracy matrix ``r``, the
task-1 probes, the steps and seconds, and the measures of ``r`` named by the experiment.
"""

from __future__ import annotations

from collections.abc import Collection
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np

from genlab import plots
from genlab.engine import EpochsConfig, RunDir
from genlab.record import Figure, Record, Reference, Table, mean_std, seed_metric
from genlab.tables import write_csv

# SPEC §9 anchor: EWC average accuracy after 10 permuted-MNIST tasks.
REFERENCE = {"ewc_average_accuracy_public_baseline": 0.83, "ewc_average_accuracy_paper": 0.94}


def write_outputs(run_dir: RunDir, results: list[dict], tasks: int, measures: Collection[str],
                  scored: str = "test") -> list[dict]:
    """Accuracy CSVs, heat maps, task-1 and λ-sweep figures, their accuracies labelled as measured on the
    ``scored`` split ("test" or "validation"); returns one table row per (model, label), means over seeds
    (with mean and std of each of the ``measures`` keys of the results)."""
    figs, metrics = run_dir.path / "figures", run_dir.path / "metrics"
    groups: dict[tuple[str, str], list[dict]] = {}  # (model, label) -> results over seeds, in run order
    for res in results:
        groups.setdefault((res["model"], res["label"]), []).append(res)
    means = {key: np.mean([np.array(g["r"], dtype=np.float64) for g in group], axis=0)  # (T, T); NaN: unseen
             for key, group in groups.items()}
    rows = []
    for (model, label), group in groups.items():
        r, n = means[model, label], len(group)
        np.savetxt(metrics / f"accuracy_{model}_{label}.csv", r, delimiter=",", fmt="%.4f",
                   header=",".join(f"task{j + 1}" for j in range(tasks)), comments="")
        fig, ax = plt.subplots(figsize=(1.0 + 0.5 * tasks, 0.8 + 0.45 * tasks))
        plots.heatmap(ax, r, f"{scored} accuracy", text=lambda v: f"{v:.2f}".removeprefix("0"))
        title = f"{model.upper()}, {label}: R[i, j]" + (f" (mean of {n} seeds)" if n > 1 else "")
        plots.decorate(ax, "evaluated on task j", "after training task i", title, title_size=9, grid=None,
                       legend=False)
        plots.save(fig, figs / f"accuracy_{model}_{label}.png")
        row = {"model": model, "method": group[0]["method"], "label": label, "lambda": group[0]["lambda"],
               "seeds": n, "steps": group[0]["steps"], "seconds": float(np.mean([g["seconds"] for g in group]))}
        for key in measures:
            row[key], row[key + "_std"] = mean_std([g[key] for g in group])
        rows.append({**row, "task1_final": float(r[-1, 0])})
    write_csv(metrics / "summary.csv", rows)
    for model in sorted({row["model"] for row in rows}):
        _plot_curves({label: group for (m, label), group in groups.items() if m == model}, means, model, tasks,
                     figs, scored)
        sweep = sorted((row for row in rows if row["model"] == model and row["method"] == "ewc"),
                       key=lambda row: row["lambda"])
        if len(sweep) > 1:
            plot_lambda_sweep(sweep, rows, model, figs / f"ewc_lambda_sweep_{model}.png")
    return rows


def _plot_curves(groups: dict[str, list[dict]], means: dict[tuple[str, str], np.ndarray], model: str, tasks: int,
                 figs: Path, scored: str) -> None:
    """One model's task-1 accuracy over the optimiser steps and average accuracy over the tasks learnt,
    one line per label (``groups``: label -> results over seeds), means over seeds."""
    fig, ax = plt.subplots(figsize=(7.0, 4.0))
    for label, group in groups.items():
        steps = [p["step"] for p in group[0]["probes"]]  # first seed: the step grid is the same for every seed
        acc = np.mean([[p["task1_accuracy"] for p in g["probes"]] for g in group], axis=0)
        ax.plot(steps, acc, label=label, lw=1.2)
    steps_per_task = next(iter(groups.values()))[0]["steps"] / tasks
    for t in range(1, tasks):
        ax.axvline(t * steps_per_task, color="gray", lw=0.5, ls=":")
    plots.save_axes(fig, ax, figs / f"task1_accuracy_{model}.png", "optimiser step (dotted: task boundaries)",
                    f"{scored} accuracy on task 1", f"{model.upper()}: task-1 accuracy while tasks 2.. are learnt")
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    for label in groups:
        r = means[model, label]
        ax.plot(range(1, tasks + 1), [r[i, :i + 1].mean() for i in range(tasks)], marker="o", ms=3, label=label)
    plots.hline(ax, REFERENCE["ewc_average_accuracy_public_baseline"], "EWC public baseline (10 tasks)", x=1)
    plots.save_axes(fig, ax, figs / f"average_accuracy_{model}.png", "tasks learnt",
                    f"mean {scored} accuracy over the tasks seen",
                    f"{model.upper()}: average accuracy along the sequence")


def plot_lambda_sweep(sweep: list[dict], rows: list[dict], model: str, path: Path) -> None:
    """The EWC λ sweep of one model as a PNG at ``path``: average accuracy, plasticity and forgetting
    (in [0, 1], seed std as error bars) against λ on a log axis, and the average accuracy of the other
    methods of ``rows`` as dashed lines.

    Args: ``sweep``: the EWC summary rows (:func:`write_outputs`), in λ order; ``rows``: all summary rows;
    ``model``: ``"mlp"`` or ``"cnn"``.
    """
    lams = [max(row["lambda"], 1e-3) for row in sweep]
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    for key, name in (("average_accuracy", "average accuracy after the last task"),
                      ("plasticity", "accuracy on each task right after learning it (plasticity)"),
                      ("forgetting", "forgetting")):
        ax.errorbar(lams, [row[key] for row in sweep], yerr=[row[key + "_std"] for row in sweep], marker="o",
                    capsize=3, label=name)
    for row in rows:
        if row["model"] == model and row["method"] != "ewc":
            plots.hline(ax, row["average_accuracy"], f"{row['label']}: average accuracy", x=lams[0])
    ax.set_xscale("log")
    plots.save_axes(fig, ax, path, "EWC λ", "accuracy",
                    f"{model.upper()}: the EWC λ sweep, stability against plasticity")


FIGURE_CAPTIONS = {  # {scored}: the split measured on, "test" or "validation"
    "accuracy_": "accuracy matrix R[i, j]: {scored} accuracy on task j after training task i",
    "task1_accuracy": "{scored} accuracy on task 1 while the later tasks are learnt",
    "average_accuracy": "mean {scored} accuracy over the tasks seen, along the sequence, with the EWC anchor",
    "ewc_lambda_sweep": "the EWC λ sweep: average accuracy, plasticity and forgetting against λ",
}


def make_record(config: EpochsConfig, rows: list[dict], train_seconds: float | None,
                figures: list[Figure], measures: Collection[str]) -> Record:
    """The run's record: per (model, method) the average accuracy (against the SPEC §9 EWC anchor
    on 10 tasks, unless scored on --validation images; the best EWC λ of each model is the headline)
    and the forgetting, mean and standard error over the seeds; the summary table and the MLP-vs-CNN
    table (``measures``: the columns average accuracy, backward transfer, forgetting and plasticity,
    keys of ``rows``). ``config`` is a ContinualConfig. Descriptions, captions and, with --validation,
    the title name the split scored."""
    best_ewc = {}  # model -> (average accuracy, label) of its best EWC λ, the first of equals
    for row in rows:
        if row["method"] == "ewc" and row["average_accuracy"] > best_ewc.get(row["model"], (-1.0,))[0]:
            best_ewc[row["model"]] = (row["average_accuracy"], row["label"])
    anchor = Reference(REFERENCE["ewc_average_accuracy_public_baseline"], section="§9",
                       note=f"public baselines, EWC on 10 permuted-MNIST tasks (paper: "
                            f"{REFERENCE['ewc_average_accuracy_paper']})")
    metrics = []
    for row in rows:
        name, what, n = f"{row['model']}_{row['label']}", f"{row['model'].upper()}, {row['label']}", row["seeds"]
        is_ewc = row["method"] == "ewc"
        metrics += [
            seed_metric(f"average_accuracy_{name}", row["average_accuracy"], row["average_accuracy_std"], n,
                        lower_is_better=False, headline=is_ewc and best_ewc[row["model"]][1] == row["label"],
                        reference=anchor if is_ewc and config.tasks == 10 and not config.validation else None,
                        description=f"{what}: mean {config.scored} accuracy over the {config.tasks} tasks after "
                                    f"the last one"),
            seed_metric(f"forgetting_{name}", row["forgetting"], row["forgetting_std"], n, lower_is_better=True,
                        description=f"{what}: mean drop from each task's best accuracy to its final one "
                                    f"(Chaudhry et al. 2018)")]
    tables = [Table("methods", ["model", "method", "average accuracy", "backward transfer", "forgetting",
                                "plasticity", "task 1 at end", "steps", "s"],
                    [[row["model"], row["label"], *(row[k] for k in measures), row["task1_final"], row["steps"],
                      row["seconds"]] for row in rows],
                    f"{config.tasks} tasks, {config.epochs} epoch(s) per task, batch {config.batch_size} "
                    f"(+{config.replay_batch} replayed for rehearsal), {config.optimizer} lr {config.lr}; "
                    f"means over {config.seeds} seed(s) from {config.seed}. Accuracies on {config.evaluation}.")]
    models = sorted({row["model"] for row in rows})
    if len(models) > 1:
        average = {(row["model"], row["label"]): row["average_accuracy"] for row in rows}
        tables.append(Table("MLP vs CNN", ["method", *models],
                            [[label, *(average.get((m, label)) for m in models)] for label in dict.fromkeys(
                                row["label"] for row in rows)],
                            f"Average accuracy after the last task, on {config.evaluation}."))
    title = "Continual learning on permuted MNIST" + (", scored on held-out training images" if config.validation
                                                      else "")
    return Record("continual", title, "§9", metrics=metrics, tables=tables,
                  figures=figures, train_seconds=train_seconds, extra={"table": rows, "reference": REFERENCE})


def finish(run_dir: RunDir, config: EpochsConfig, results: list[dict], elapsed: float | None,
           measures: Collection[str]) -> list[dict]:
    """The run's outputs from the results of its jobs (one dict each, as in metrics/results.jsonl) and
    the ContinualConfig ``config``: :func:`write_outputs`, then metrics.json and summary.md of
    :func:`make_record`; returns the summary rows. ``measures``: the keys of the per-job measures
    (average accuracy, backward transfer, forgetting, plasticity) in the results."""
    rows = write_outputs(run_dir, results, config.tasks, measures, config.scored)
    captions = {k: v.format(scored=config.scored) for k, v in FIGURE_CAPTIONS.items()}
    run_dir.write_record(make_record(config, rows, elapsed, run_dir.figures(captions), measures))
    return rows
