"""SPEC §6: the optimisers of :mod:`genlab.optim` compared on MNIST.

The grid is every optimiser x learning rate (0.5, 1e-2, 1e-5) x 3 seeds, 15 epochs each,
on one fixed classifier: an MLP 784-50-10 with a ReLU (39,760 parameters; small so that
the 54 runs fit a shared CPU), minibatches of 128, mean cross-entropy, pixels scaled to
[0, 1], PyTorch's default ``nn.Linear`` initialisation. Runs with the same seed share their
initial weights and their minibatch order (common random numbers), so the optimisers are
compared on the same draws.

All runs of the grid train together as one stacked model (:class:`StackedGrid`): run r's
weights are slice r of tensors of shape (R, fan_in, fan_out) and the forward pass is a
batched matmul. Each (optimiser, learning rate) cell owns leaf tensors stacked over its
seeds and is stepped by its own optimiser; the rules are elementwise, so this is the same
computation as R separate runs (``tests/test_optimizers_experiment.py`` checks it against
a plain per-run loop). A run whose loss becomes NaN or infinite is recorded as diverged,
with its last finite loss; its slice turns to NaN without touching the other runs.

    genlab run optimizers                                   # the full grid: 54 runs, 15 epochs
    genlab run optimizers --epochs 1 --subset 2000 --out /tmp/smoke
    genlab run optimizers --out runs/optimizers --resume    # continue from the last checkpoint
    genlab bench optimizers                                 # grid vs the runs one after another
"""

from __future__ import annotations

import copy
import json
import math
import warnings
from dataclasses import dataclass
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from genlab import plots
from genlab.data import load_flat
from genlab.engine import EpochsConfig, Run, read_csv, resolve_device
from genlab.errors import ConfigError
from genlab.experiments import Experiment
from genlab.optim import OPTIMIZERS
from genlab.record import Metric, Record, Table, mean_std, run_figures

DATASET = "mnist"
IMAGE_DIM = 28 * 28
N_CLASSES = 10


@dataclass
class OptimizersConfig(EpochsConfig):
    """SPEC §6 protocol: all optimisers, learning rates 0.5, 1e-2, 1e-5, 15 epochs, 3 seeds."""

    epochs: int = 15
    """Passes over the 60,000 MNIST training images, every run."""
    optimizers: tuple[str, ...] = tuple(OPTIMIZERS)
    """Optimisers to compare (genlab.optim): sgd momentum rmsprop amsgrad adam adagrad."""
    lrs: tuple[float, ...] = (0.5, 1e-2, 1e-5)
    """Learning rates γ, each tried with every optimiser."""
    repeats: int = 3
    """Runs per (optimiser, learning rate), with seeds seed, seed+1, ..."""
    batch_size: int = 128
    """Minibatch size."""
    hidden: tuple[int, ...] = (50,)
    """Widths of the classifier's hidden layers (ReLU after each)."""
    momentum: float = 0.9
    """ρ of the heavy-ball momentum optimiser."""
    rmsprop_decay: float = 0.99
    """τ of RMSProp (torch's alpha)."""
    beta1: float = 0.9
    """β1 of Adam and AMSGrad."""
    beta2: float = 0.999
    """β2 of Adam and AMSGrad."""
    subset: int | None = None
    """Train on the first N training images only (quick looks and tests)."""
    test_subset: int | None = None
    """Evaluate on the first N test images only (quick looks and tests)."""
    log_every: int = 50
    """Optimiser steps per point of the training-loss curves."""

    def __post_init__(self) -> None:
        super().__post_init__()
        unknown = [o for o in self.optimizers if o not in OPTIMIZERS]
        if unknown or not self.optimizers:
            raise ConfigError(f"--optimizers must be among {' '.join(OPTIMIZERS)}, got {' '.join(self.optimizers)}")
        if len(set(self.optimizers)) != len(self.optimizers) or len(set(self.lrs)) != len(self.lrs):
            raise ConfigError("--optimizers and --lrs must not repeat a value")
        if not self.lrs or not all(0 < lr < math.inf for lr in self.lrs):
            raise ConfigError(f"--lrs must be positive and finite, got {self.lrs}")
        self.require(1, "repeats", "batch_size", "test_subset", "log_every")
        if not all(h >= 1 for h in self.hidden):
            raise ConfigError(f"every --hidden width must be >= 1, got {self.hidden}")
        if self.subset is not None and self.subset < self.batch_size:
            raise ConfigError(f"--subset must be >= --batch-size ({self.batch_size}), got {self.subset}")

    @property
    def seeds(self) -> list[int]:
        return [self.seed + i for i in range(self.repeats)]

    def hyperparameters(self, name: str) -> dict:
        """Keyword arguments of optimiser ``name`` other than the learning rate."""
        return {"momentum": {"momentum": self.momentum}, "rmsprop": {"decay": self.rmsprop_decay},
                "amsgrad": {"betas": (self.beta1, self.beta2)}, "adam": {"betas": (self.beta1, self.beta2)},
                }.get(name, {})


def make_classifier(hidden: tuple[int, ...] = (50,)) -> nn.Sequential:
    """The fixed MNIST classifier: images (N, 784) float -> logits (N, 10).

    784-50-10 with the default ``hidden``: 39,250 + 510 = 39,760 parameters.
    """
    widths = [IMAGE_DIM, *hidden, N_CLASSES]
    layers = [layer for fan_in, fan_out in zip(widths, widths[1:]) for layer in (nn.Linear(fan_in, fan_out), nn.ReLU())]
    return nn.Sequential(*layers[:-1])  # no ReLU after the output layer


def initial_weights(seed: int, hidden: tuple[int, ...]) -> list[torch.Tensor]:
    """The weights :func:`make_classifier` draws after ``torch.manual_seed(seed)``, in the
    stacked layout: per layer W (fan_in, fan_out) and b (1, fan_out), float32."""
    torch.manual_seed(seed)
    linears = [layer for layer in make_classifier(hidden) if isinstance(layer, nn.Linear)]
    return [t for layer in linears for t in (layer.weight.detach().T.contiguous(), layer.bias.detach()[None])]


@dataclass(frozen=True)
class Cell:
    """One (optimiser, learning rate) pair of the grid."""

    optimizer: str
    lr: float

    @property
    def key(self) -> str:
        return f"{self.optimizer}@{self.lr:g}"


class StackedGrid:
    """R = C x S classifiers trained at once: C (optimiser, lr) cells times S seeds.

    Run r is cell ``r // S`` with seed ``seeds[r % S]``. Per cell, each layer is a leaf W of
    shape (S, fan_in, fan_out) and b of shape (S, 1, fan_out); one optimiser per optimiser
    name holds one parameter group per learning rate.

    Args:
        cells: the (optimiser, lr) pairs.
        seeds: one initialisation per seed, shared by every cell.
        hidden: hidden widths of :func:`make_classifier`.
        hyperparameters: optimiser name -> keyword arguments other than lr.
        device: where the tensors live.
    """

    def __init__(self, cells: list[Cell], seeds: list[int], hidden: tuple[int, ...],
                 hyperparameters: dict[str, dict], device: torch.device):
        self.cells, self.seeds = list(cells), list(seeds)
        inits = [initial_weights(seed, hidden) for seed in seeds]  # per seed: [W0, b0, W1, b1, ...]
        self.params = {cell: [torch.stack([init[i] for init in inits]).to(device).requires_grad_()  # (S, ...)
                              for i in range(len(inits[0]))] for cell in self.cells}
        self.optimizers = {}
        for name in dict.fromkeys(cell.optimizer for cell in self.cells):
            groups = [{"params": self.params[c], "lr": c.lr} for c in self.cells if c.optimizer == name]
            self.optimizers[name] = OPTIMIZERS[name](groups, **hyperparameters.get(name, {}))

    @property
    def n_runs(self) -> int:
        return len(self.cells) * len(self.seeds)

    def run_labels(self) -> list[tuple[str, float, int]]:
        """(optimiser, lr, seed) of each run r, in stacking order."""
        return [(c.optimizer, c.lr, s) for c in self.cells for s in self.seeds]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (S, B, 784): one batch per seed -> logits (R, B, 10); run r sees x[r % S]."""
        h = x.repeat(len(self.cells), 1, 1)  # (R, B, 784)
        n_layers = len(self.params[self.cells[0]]) // 2
        for i in range(n_layers):
            w = torch.cat([self.params[c][2 * i] for c in self.cells])  # (R, fan_in, fan_out)
            b = torch.cat([self.params[c][2 * i + 1] for c in self.cells])  # (R, 1, fan_out)
            h = torch.baddbmm(b, h, w)  # (R, B, fan_out)
            if i < n_layers - 1:
                h = torch.relu(h)
        return h

    def train_step(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """One step of every run on its seed's batch: x (S, B, 784) float, y (S, B) int64.

        Returns the R minibatch losses (mean cross-entropy, nats) before the step, float32.
        """
        logits = self.forward(x)  # (R, B, 10)
        n_runs, batch, n_classes = logits.shape
        targets = y.repeat(len(self.cells), 1).reshape(-1)  # (R * B,)
        losses = F.cross_entropy(logits.reshape(-1, n_classes), targets, reduction="none").view(n_runs, batch).mean(1)
        for opt in self.optimizers.values():
            opt.zero_grad(set_to_none=True)
        losses.sum().backward()  # the runs share no parameter: each gets the gradient of its own loss
        for opt in self.optimizers.values():
            opt.step()
        return losses.detach()

    @torch.no_grad()
    def accuracy(self, x: torch.Tensor, y: torch.Tensor, chunk: int = 1000) -> torch.Tensor:
        """Top-1 accuracy in [0, 1] of every run on x (N, 784), y (N,): float64 (R,)."""
        correct = torch.zeros(self.n_runs, dtype=torch.float64, device=x.device)
        for i in range(0, len(x), chunk):
            xb = x[i:i + chunk].expand(len(self.seeds), -1, -1)  # (S, n, 784), no copy
            pred = self.forward(xb).argmax(-1)  # (R, n)
            correct += (pred == y[i:i + chunk]).sum(1)
        return correct / len(x)

    def state_dict(self) -> dict:
        """Weights and optimiser states (tensors shared with the live grid; save or copy them)."""
        return {"params": {c.key: [p.detach() for p in self.params[c]] for c in self.cells},
                "optimizers": {name: opt.state_dict() for name, opt in self.optimizers.items()}}

    def load_state_dict(self, state: dict) -> None:
        with torch.no_grad():
            for c in self.cells:
                for p, saved in zip(self.params[c], state["params"][c.key]):
                    p.copy_(saved)
        for name, opt in self.optimizers.items():  # a copy: torch's load_state_dict keeps the given tensors
            opt.load_state_dict(copy.deepcopy(state["optimizers"][name]))


def epoch_order(seeds: list[int], n: int, epoch: int, device: torch.device) -> torch.Tensor:
    """Each seed's shuffle of range(n) for ``epoch`` (0-based): int64 (S, n)."""
    return torch.stack([torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1000 + epoch))
                        for seed in seeds]).to(device)


def run(config: OptimizersConfig) -> Path:
    """Train the whole grid; returns the run directory. See the module docstring.

    The checkpoint (:class:`genlab.engine.Run`) is written at every epoch end, every few minutes
    and on Ctrl-C or SIGTERM; it holds the grid (weights and optimiser states) and, as progress,
    each run's divergence record and the epoch's running loss sums, so that a resumed run
    continues exactly.
    """
    device = resolve_device(config.device)
    with Run("optimizers", config, device) as run:
        x_train, y_train = load_flat(DATASET, "train", config.data_dir, config.subset, device)  # (N, 784), (N,)
        x_test, y_test = load_flat(DATASET, "test", config.data_dir, config.test_subset, device)
        n_train, seeds = len(x_train), config.seeds
        steps_per_epoch = math.ceil(n_train / config.batch_size)
        cells = [Cell(name, lr) for name in config.optimizers for lr in config.lrs]
        grid = StackedGrid(cells, seeds, config.hidden, {n: config.hyperparameters(n) for n in config.optimizers},
                           device)
        run.hold(grid=grid)
        labels, n_runs = grid.run_labels(), grid.n_runs
        pos = run.resume() or {
            "step": 0, "epoch": 0, "batch": 0, "block": 0,
            "sums": torch.zeros(2, n_runs, dtype=torch.float64, device=device),  # loss sums: epoch, block
            "last_finite": torch.full((n_runs,), math.nan, device=device),  # last finite minibatch loss of each run
            "diverged_at": torch.full((n_runs,), -1, dtype=torch.int64, device=device)}  # first non-finite step, or -1
        step, epoch, batch, block = pos["step"], pos["epoch"], pos["batch"], pos["block"]
        sums, last_finite, diverged_at = pos["sums"], pos["last_finite"], pos["diverged_at"]

        def progress() -> dict:
            return {"batch": batch, "block": block, "sums": sums, "last_finite": last_finite,
                    "diverged_at": diverged_at}

        total_steps = min(config.epochs * steps_per_epoch, config.max_steps or math.inf)
        print(f"optimizers: {n_runs} runs ({len(config.optimizers)} optimisers x {len(config.lrs)} learning rates x "
              f"{len(seeds)} seeds), {config.epochs} epochs of {steps_per_epoch} steps, trained as one stacked model")
        while epoch < config.epochs and step < total_steps:
            order = epoch_order(seeds, n_train, epoch, device)  # (S, n_train)
            bar = tqdm(total=steps_per_epoch, initial=batch, desc=f"epoch {epoch + 1}", leave=False, disable=None)
            while batch < steps_per_epoch and step < total_steps:
                idx = order[:, batch * config.batch_size:(batch + 1) * config.batch_size]  # (S, B)
                losses = grid.train_step(x_train[idx], y_train[idx])  # (R,)
                # A run diverges at its first non-finite loss; its last finite loss is kept.
                finite = torch.isfinite(losses)
                last_finite = torch.where(finite, losses, last_finite)
                diverged_at = torch.where(~finite & (diverged_at < 0), step + 1, diverged_at)
                sums += losses
                step, batch, block = step + 1, batch + 1, block + 1
                if block == config.log_every or batch == steps_per_epoch or step == total_steps:
                    mean = (sums[1] / block).tolist()
                    run.log_rows("steps.csv", [  # no finite check: a diverged run is recorded, not an error
                        {"step": step, "epoch": round(epoch + batch / steps_per_epoch, 4), "optimizer": o,
                         "lr": lr, "seed": s, "train_loss": mean[r]} for r, (o, lr, s) in enumerate(labels)])
                    sums[1].zero_()
                    block = 0
                bar.update()
                run.step_done(step, epoch, progress)
            bar.close()
            # End of epoch: test accuracy of every run; a diverged run has none.
            epoch += 1
            diverged = (diverged_at >= 0).tolist()
            train_loss, acc = (sums[0] / batch).tolist(), grid.accuracy(x_test, y_test).tolist()
            last, at = last_finite.tolist(), diverged_at.tolist()
            run.log_rows("runs.csv", [
                {"epoch": epoch, "optimizer": o, "lr": lr, "seed": s, "train_loss": train_loss[r],
                 "test_accuracy": math.nan if diverged[r] else acc[r], "diverged": int(diverged[r]),
                 "last_finite_loss": last[r], "diverged_at_step": at[r]} for r, (o, lr, s) in enumerate(labels)])
            best = max((a for a, d in zip(acc, diverged) if not d), default=math.nan)
            run.dir.log_epoch({"epoch": epoch, "steps": step, "seconds": run.elapsed_s, "diverged_runs": sum(diverged),
                               "best_test_accuracy": best}, tensorboard=False)
            batch = 0
            sums.zero_()
            run.checkpoint(step, epoch, progress())
            tqdm.write(f"epoch {epoch}: {run.elapsed_s:7.1f} s, {sum(diverged)} of {n_runs} runs diverged, best test "
                       f"accuracy {best:.4f}")
        summarise(run.path)
    return run.path


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


def plot_losses(steps: list[dict], figures: Path) -> list[Path]:
    """figures/loss_lr{lr}.png: training loss against epoch, one line per optimiser (mean over
    seeds, min-max band), a cross where a run diverged."""
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
        plots.hline(ax, math.log(N_CLASSES), "chance: ln 10", x=x[0])
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


def summarise(path: Path) -> dict:
    """Write metrics.json, the figures and summary.md of the run directory ``path`` from its
    metrics CSVs (also ``genlab eval RUN_DIR``, for a run stopped part-way). Returns metrics."""
    path = Path(path)
    config = json.loads((path / "config.json").read_text())
    runs, steps, epochs = (read_csv(path / "metrics" / f"{name}.csv") for name in ("runs", "steps", "epochs"))
    table = final_table(runs)
    lrs = [f"{float(lr):g}" for lr in config["lrs"]]
    n_params = sum(p.numel() for p in make_classifier(tuple(config["hidden"])).parameters())
    done = max((int(r["epoch"]) for r in runs), default=0)
    widths = "-".join(map(str, [IMAGE_DIM, *config["hidden"], N_CLASSES]))
    metrics = {"epochs_done": done, "epochs": config["epochs"],
               "seconds": float(epochs[-1]["seconds"]) if epochs else None,
               "runs": len({(r["optimizer"], r["lr"], r["seed"]) for r in runs}),
               "classifier": f"MLP {widths}, {n_params} parameters",
               "final_test_accuracy": table}
    figures = path / "figures"
    figures.mkdir(exist_ok=True)
    if steps:
        plot_losses(steps, figures)
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


EXPERIMENT = Experiment(
    name="optimizers",
    summary="SPEC §6: SGD, momentum, RMSProp, AMSGrad, Adam, AdaGrad on MNIST (lr x seed grid)",
    config=OptimizersConfig,
    run=run,
    evaluate=summarise,
)
