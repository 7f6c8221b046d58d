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
import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from genlab.data import load_flat
from genlab.engine import EpochsConfig, Run, resolve_device
from genlab.errors import ConfigError
from genlab.experiments import Experiment
from genlab.optim import OPTIMIZERS
from genlab.reports import optimizers as report

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
        evaluate(run.path)
    return run.path


def evaluate(path: Path) -> dict:
    """Write metrics.json, the figures and summary.md of the run directory ``path`` from its
    metrics CSVs (also ``genlab eval RUN_DIR``, for a run stopped part-way): the report
    :func:`genlab.reports.optimizers.summarise` with this experiment's classifier. Returns metrics."""
    return report.summarise(path, make_classifier)


EXPERIMENT = Experiment(
    name="optimizers",
    summary="SPEC §6: SGD, momentum, RMSProp, AMSGrad, Adam, AdaGrad on MNIST (lr x seed grid)",
    config=OptimizersConfig,
    run=run,
    evaluate=evaluate,
)
