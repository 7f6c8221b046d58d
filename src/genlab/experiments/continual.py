"""SPEC §9: catastrophic forgetting on permuted MNIST, and two remedies.

A sequence of T tasks, each MNIST under its own fixed pixel permutation (Goodfellow et al.
2013, "An empirical investigation of catastrophic forgetting"; Kirkpatrick et al. 2017,
§2.1). One network with one shared 10-way head learns them in order. Three methods:

- naive: plain sequential training; what it forgets is the baseline.
- ewc: elastic weight consolidation (Kirkpatrick et al. 2017, eq. 3). After task t the
  diagonal empirical Fisher information F_t (squared per-sample gradients of
  log p(y | x, θ) at the true labels, averaged over ``--fisher-samples`` examples) and the
  parameters θ*_t are stored; training on later tasks adds λ/2 Σ_t Σ_i F_t,i (θ_i − θ*_t,i)²
  to the loss. ``--ewc-lambdas`` sweeps λ.
- rehearsal: a replay memory of ``--memory-per-task`` training examples of each finished
  task; every batch of the current task is joined by ``--replay-batch`` examples drawn from
  the memory, evenly across the past tasks (Robins 1995; Chaudhry et al. 2019, "tiny
  episodic memories"). Same number of optimiser steps as the other methods.

Outputs: per method the accuracy matrix R[i, j] (test accuracy on task j after training
task i) as CSV and heat map, average accuracy and backward transfer (Lopez-Paz & Ranzato
2017, eq. 2-3) and forgetting (Chaudhry et al. 2018) after the last task, task-1 accuracy
over the sequence, the λ sweep, and an MLP vs CNN table when both models run. λ and the width
are chosen on ``--validation N`` held-out training images, not the test set (the recipe is in
docs/results/continual.md).

    genlab run continual                                     # 10 tasks, MLP, all methods
    genlab run continual --model mlp cnn --ewc-lambdas 10 100 1000
    genlab run continual --tasks 3 --max-steps 20 --out /tmp/smoke
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from genlab.data import load_flat
from genlab.engine import CurrentUnit, EpochsConfig, GeneratorStates, Run, RunDir, reopen, resolve_device
from genlab.errors import ConfigError
from genlab.experiments import Experiment
from genlab.quality import top1_accuracy
from genlab.reports import continual as report

Method = Literal["naive", "ewc", "rehearsal"]
ModelName = Literal["mlp", "cnn"]
FisherKind = Literal["empirical", "exact"]
MNIST_MEAN, MNIST_STD = 0.1307, 0.3081  # of the 60,000 training pixels scaled to [0, 1]
MNIST_TRAIN, MNIST_TEST = 60000, 10000  # images per split
VALIDATION_SEED = 0  # the held-out draw of --validation; fixed, so every run and seed shares one split


@dataclass
class ContinualConfig(EpochsConfig):
    """SPEC §9 defaults."""

    tasks: int = 10
    """Number of permuted-MNIST tasks, each a fixed pixel permutation drawn from the seed."""
    methods: tuple[Method, ...] = ("naive", "ewc", "rehearsal")
    """Methods to run, each from the same initialisation and data order."""
    model: tuple[ModelName, ...] = ("mlp",)
    """Networks: mlp (784-h-h-10, ReLU) and/or cnn (two 3x3 conv + pool blocks, one hidden dense layer)."""
    epochs: int = 1
    """Passes over the 60,000 training images per task."""
    batch_size: int = 128
    """Examples of the current task per optimiser step."""
    optimizer: Literal["sgd", "adam"] = "sgd"
    """Optimiser of every task: sgd, or adam (betas 0.9, 0.999; needs --ewc-update gradient for EWC)."""
    lr: float = 0.1
    """Learning rate of the optimiser."""
    momentum: float = 0.0
    """SGD momentum."""
    hidden: int = 1000
    """Width of the MLP's two hidden layers (docs/results/continual.md compares 256 to 1000: EWC needs the width)."""
    ewc_lambda: float = 10.0
    """EWC penalty weight λ when no sweep is given (the best of the sweep at width 1000)."""
    ewc_lambdas: tuple[float, ...] = ()
    """A λ sweep: one EWC run per value (overrides --ewc-lambda)."""
    ewc_update: Literal["proximal", "gradient"] = "proximal"
    """How the penalty enters SGD: gradient (add λ(Aθ − b) to the gradient; unstable once lr·λ·max F > 2) or
    proximal (the exact proximal step of the quadratic after the SGD step on the data loss; stable for every λ)."""
    fisher_samples: int = 2000
    """Training examples of the finished task whose squared gradients estimate its Fisher diagonal."""
    fisher: FisherKind = "empirical"
    """EWC's Fisher: empirical (squared gradients at the true labels, as in the EWC paper) or exact (the expectation
    over the model's own predictive distribution, 10 backward passes per example)."""
    memory_per_task: int = 1000
    """Rehearsal: training examples kept from each finished task."""
    replay_batch: int = 128
    """Rehearsal: memory examples added to every batch, spread evenly over the past tasks."""
    eval_samples: int = 10000
    """Images per task for the accuracy matrix: the first N of the 10,000 test images (or of the held-out ones)."""
    probe_every: int = 100
    """Optimiser steps between checks of task-1 accuracy (on the first 1,000 evaluation images)."""
    validation: int = 0
    """Hold out N of the 60,000 training images (a fixed draw, the same for every seed), train on the rest and
    measure every accuracy on them instead of the test set: for choosing λ and --hidden. 0: off."""
    seeds: int = 1
    """Repeats with seeds seed, seed+1, ...: new permutations, initialisation and data order each."""
    max_steps: int | None = None
    """Optimiser steps per sequence of tasks, spread evenly over the tasks (smoke runs)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        self.require(1, "tasks", "batch_size", "memory_per_task", "fisher_samples", "eval_samples", "probe_every",
                     "seeds")
        self.require(0, "replay_batch")
        if not self.methods or not self.model:
            raise ConfigError("--methods and --model need at least one value each")
        if not 0 <= self.validation < MNIST_TRAIN:
            raise ConfigError(f"--validation N holds out N of the {MNIST_TRAIN} training images: pass "
                              f"0 <= N < {MNIST_TRAIN} (0: evaluate on the test set), got {self.validation}")
        if self.eval_samples > max(MNIST_TEST, self.validation):
            raise ConfigError(f"--eval-samples is at most {max(MNIST_TEST, self.validation)} (the MNIST test set "
                              f"or --validation), got {self.eval_samples}")
        if self.optimizer == "adam" and self.ewc_update == "proximal" and "ewc" in self.methods:
            raise ConfigError("the proximal EWC step is the proximal operator for an SGD step of size --lr; "
                             "with --optimizer adam pass --ewc-update gradient")
        if any(lam < 0 for lam in self.lambdas):
            raise ConfigError(f"EWC λ must be >= 0, got {self.lambdas}")

    @property
    def lambdas(self) -> tuple[float, ...]:
        return tuple(self.ewc_lambdas) or (self.ewc_lambda,)

    @property
    def scored(self) -> str:
        """The split every accuracy is measured on: "validation" or "test"."""
        return "validation" if self.validation else "test"

    @property
    def evaluation(self) -> str:
        """One line naming the images the accuracy matrix is measured on."""
        if self.validation:
            n = min(self.eval_samples, self.validation)
            return f"validation: {n:,} of {self.validation:,} held-out training images"
        return f"test: {min(self.eval_samples, MNIST_TEST):,} of the {MNIST_TEST:,} MNIST test images"


# ---------------------------------------------------------------------------------------
# Tasks and models
# ---------------------------------------------------------------------------------------

def permutations(tasks: int, seed: int, pixels: int = 784) -> torch.Tensor:
    """int64 (tasks, pixels): row t is task t's pixel permutation, drawn from ``seed``."""
    gen = torch.Generator().manual_seed(seed)
    return torch.stack([torch.randperm(pixels, generator=gen) for _ in range(tasks)])


def load_mnist(split: str, data_dir: Path | None, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """MNIST ``split`` as float32 (N, 784) standardised pixels and int64 (N,) labels on ``device``."""
    return load_flat("mnist", split, data_dir, device=device, mean=MNIST_MEAN, std=MNIST_STD)


def validation_split(n_valid: int, n_train: int = MNIST_TRAIN,
                     seed: int = VALIDATION_SEED) -> tuple[torch.Tensor, torch.Tensor]:
    """(kept, held_out): int64 sorted indices into the ``n_train`` training images, disjoint and together
    all of them; ``held_out`` holds ``n_valid`` of them, uniformly without replacement from ``seed`` (not
    the run's --seed, so that every run and seed shares the split; a larger ``n_valid`` holds out a superset)."""
    order = torch.randperm(n_train, generator=torch.Generator().manual_seed(seed))
    return order[n_valid:].sort().values, order[:n_valid].sort().values


def run_data(config: ContinualConfig, device: torch.device) -> dict[str, torch.Tensor]:
    """The images of a run: ``train_x`` float32 (N, 784), ``train_y`` int64 (N,) for training, the Fisher and
    the replay memory; ``eval_x``, ``eval_y`` for every accuracy: the 10,000 test images, or with
    ``config.validation`` the held-out training images of :func:`validation_split` (the rest is trained on)."""
    train_x, train_y = load_mnist("train", config.data_dir, device)
    if not config.validation:
        eval_x, eval_y = load_mnist("test", config.data_dir, device)
        return {"train_x": train_x, "train_y": train_y, "eval_x": eval_x, "eval_y": eval_y}
    kept, held = (i.to(device) for i in validation_split(config.validation, len(train_x)))
    return {"train_x": train_x[kept], "train_y": train_y[kept], "eval_x": train_x[held], "eval_y": train_y[held]}


class MLP(nn.Module):
    """Flat images (N, 784) -> logits (N, 10): Linear-ReLU-Linear-ReLU-Linear."""

    def __init__(self, hidden: int = 400):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(784, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
                                 nn.Linear(hidden, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class CNN(nn.Module):
    """Flat images (N, 784) -> logits (N, 10). 1x28x28 -> 16x14x14 -> 32x7x7 -> 128 -> 10."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),  # (N, 16, 14, 14)
            nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),  # (N, 32, 7, 7)
        )
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(32 * 7 * 7, 128), nn.ReLU(), nn.Linear(128, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x.view(-1, 1, 28, 28)))  # (N, 10)


# ---------------------------------------------------------------------------------------
# EWC (Kirkpatrick et al. 2017)
# ---------------------------------------------------------------------------------------

def fisher_diagonal(model: nn.Module, x: torch.Tensor, y: torch.Tensor, chunk_size: int = 128,
                    kind: FisherKind = "empirical") -> dict[str, torch.Tensor]:
    """Diagonal Fisher information of a classifier, averaged over the N examples (x, y).

    - ``kind="empirical"``: F_i = (1/N) Σ_n (∂ log p(y_n | x_n, θ) / ∂θ_i)² at the true labels,
      as in the EWC paper's permuted-MNIST experiments (Kirkpatrick et al. 2017, eq. 3 and §2.1).
    - ``kind="exact"``: F_i = (1/N) Σ_n Σ_c p(c | x_n, θ) (∂ log p(c | x_n, θ) / ∂θ_i)², the
      expectation over the model's own predictive distribution (Martens 2020, "New insights and
      perspectives on the natural gradient method"; Kunstner et al. 2019, "Limitations of the
      empirical Fisher approximation"); ``y`` is unused and it costs C times "empirical".

    An all-``nn.Linear`` model (the MLP) takes the per-layer closed form: a Linear weight's
    per-example gradient is δ_n a_nᵀ, so Σ_n (δ_n a_nᵀ)² = (δ²)ᵀ (a²), one GEMM per layer
    (Goodfellow 2015, "Efficient per-example gradient computations"). Other models (the CNN)
    take per-example gradients with ``torch.func.vmap(grad(...))``. The model's mode is kept.

    Args:
        model: maps float (N, ...) inputs to logits (N, C); no layer may mix examples (no batch norm).
        x: inputs (N, ...); y: int64 labels (N,).
        chunk_size: examples per batched pass (memory: chunk_size × parameters floats on the vmap path).
        kind: "empirical" or "exact".

    Returns:
        {parameter name: tensor of the parameter's shape and dtype}, every entry >= 0.

    Raises:
        ValueError: for an unknown ``kind``.
        RuntimeError: an all-Linear model that applies a layer twice or to inputs that are not (N, fan_in).
    """
    if kind not in ("empirical", "exact"):
        raise ValueError(f"unknown Fisher kind {kind!r}; choose 'empirical' or 'exact'")
    linears = _linear_layers(model)
    total = {k: torch.zeros_like(p) for k, p in model.named_parameters()}
    for i in range(0, len(x), chunk_size):
        xb, yb = x[i:i + chunk_size], y[i:i + chunk_size]
        if linears is not None:
            _fisher_sum_linear(model, linears, xb, yb if kind == "empirical" else None, total)
        elif kind == "empirical":
            _fisher_sum_vmap(model, xb, yb, None, total)
        else:
            with torch.no_grad():
                probs = torch.softmax(model(xb), dim=1)  # (n, C)
            for c in range(probs.shape[1]):
                _fisher_sum_vmap(model, xb, torch.full_like(yb, c), probs[:, c], total)
    return {k: v / len(x) for k, v in total.items()}


def _linear_layers(model: nn.Module) -> dict[str, nn.Linear] | None:
    """{module name: layer} when every parameter of ``model`` is an ``nn.Linear``'s, else None."""
    linears = {name: m for name, m in model.named_modules() if isinstance(m, nn.Linear)}
    owned = {f"{name}.{p}" if name else p for name, m in linears.items() for p, _ in m.named_parameters()}
    return linears if owned == {k for k, _ in model.named_parameters()} else None


def _fisher_sum_linear(model: nn.Module, linears: dict[str, nn.Linear], x: torch.Tensor, y: torch.Tensor | None,
                       total: dict[str, torch.Tensor]) -> None:
    """total += Σ_n (∂ log p(y_n | x_n) / ∂θ)² (y given) or Σ_n Σ_c p(c | x_n) (∂ log p(c | x_n) / ∂θ)²
    (y None) for an all-Linear model, per layer in closed form from one forward pass."""
    inputs, outputs, handles = {}, {}, []

    def keep(name):
        def hook(module, args, output):
            if name in inputs or args[0].dim() != 2:
                raise RuntimeError(f"fisher_diagonal's per-layer path needs each nn.Linear applied once to "
                                   f"(N, fan_in) inputs; {name!r} is not")
            inputs[name], outputs[name] = args[0].detach(), output
        return hook

    for name, layer in linears.items():
        handles.append(layer.register_forward_hook(keep(name)))
    try:
        with torch.enable_grad():
            log_probs = F.log_softmax(model(x), dim=1)  # (n, C)
    finally:
        for h in handles:
            h.remove()
    if y is not None:
        targets = [(log_probs.gather(1, y[:, None]).sum(), None)]
    else:
        probs = log_probs.detach().exp()
        targets = [(log_probs[:, c].sum(), probs[:, c]) for c in range(log_probs.shape[1])]
    for i, (objective, weight) in enumerate(targets):
        # Per-example terms do not interact, so the gradient of their sum at a layer's output
        # holds each example's own δ_n.
        deltas = torch.autograd.grad(objective, list(outputs.values()), retain_graph=i + 1 < len(targets))
        for name, delta in zip(outputs, deltas):
            d2 = delta.square()  # (n, fan_out)
            if weight is not None:
                d2 = d2 * weight[:, None]
            prefix = f"{name}." if name else ""
            total[prefix + "weight"] += d2.T @ inputs[name].square()  # (fan_out, fan_in)
            if linears[name].bias is not None:
                total[prefix + "bias"] += d2.sum(0)


def _fisher_sum_vmap(model: nn.Module, x: torch.Tensor, y: torch.Tensor, weight: torch.Tensor | None,
                     total: dict[str, torch.Tensor]) -> None:
    """total += Σ_n w_n (∂ log p(y_n | x_n) / ∂θ)² from per-example gradients by vmap."""
    from torch.func import functional_call, grad, vmap

    params = {k: v.detach() for k, v in model.named_parameters()}
    buffers = {k: v.detach() for k, v in model.named_buffers()}

    def log_likelihood(p, xi, yi):
        logits = functional_call(model, (p, buffers), (xi.unsqueeze(0),))  # (1, C)
        return -F.cross_entropy(logits, yi.unsqueeze(0))  # log p(y | x, θ)

    grads = vmap(grad(log_likelihood), in_dims=(None, 0, 0))(params, x, y)  # each (n, *shape)
    for k, g in grads.items():
        sq = g.square()
        if weight is not None:
            sq = sq * weight.view(-1, *([1] * (sq.dim() - 1)))
        total[k] += sq.sum(0)


def ewc_penalty(params: dict[str, torch.Tensor], anchors: list[tuple[dict, dict]], lam: float) -> torch.Tensor:
    """λ/2 Σ_t Σ_i F_t,i (θ_i − θ*_t,i)² (Kirkpatrick et al. 2017, eq. 3, one term per past task).

    The plain definition, differentiable by autograd; :class:`EWC` computes the same value
    and its gradient in one pass however many tasks are stored.

    Args:
        params: {name: θ}; anchors: per past task (Fisher {name: F_t}, {name: θ*_t}).

    Returns:
        A scalar tensor (0 when there are no anchors).
    """
    total = sum(((fisher[k] * (params[k] - star[k]).pow(2)).sum() for fisher, star in anchors for k in params),
                torch.zeros(()))
    return 0.5 * lam * total


class EWC:
    """The sum over past tasks of EWC penalties, kept as one quadratic per parameter.

    Σ_t F_t (θ − θ*_t)² = A θ² − 2 b θ + c with A = Σ_t F_t, b = Σ_t F_t θ*_t,
    c = Σ_t F_t θ*_t², so the penalty λ/2 Σ (A θ² − 2 b θ + c) and its gradient
    λ (A θ − b) cost one pass over the parameters for any number of tasks.
    """

    def __init__(self, model: nn.Module):
        self.params = dict(model.named_parameters())
        self.a = {k: torch.zeros_like(p) for k, p in self.params.items()}
        self.b = {k: torch.zeros_like(p) for k, p in self.params.items()}
        self.c = torch.zeros((), dtype=torch.float64)
        self.tasks = 0

    def consolidate(self, fisher: dict[str, torch.Tensor]) -> None:
        """Add the finished task's term, anchored at the current parameters."""
        with torch.no_grad():
            for k, p in self.params.items():
                self.a[k] += fisher[k]
                self.b[k] += fisher[k] * p
                self.c += (fisher[k] * p * p).sum().double().cpu()
        self.tasks += 1

    @torch.no_grad()
    def penalty(self, lam: float) -> float:
        """λ/2 Σ_t Σ_i F_t,i (θ_i − θ*_t,i)², in nats (float)."""
        quad = sum(((self.a[k] * p * p - 2 * self.b[k] * p).sum().double().cpu() for k, p in self.params.items()),
                   torch.zeros((), dtype=torch.float64))
        return float(0.5 * lam * (quad + self.c).clamp_min(0))

    @torch.no_grad()
    def proximal_(self, lam: float, lr: float) -> None:
        """θ ← (θ + η λ b) / (1 + η λ A): the proximal step of the penalty with step size η = ``lr``.

        argmin_u ||u − θ||² / (2η) + λ/2 Σ_t F_t (u − θ*_t)², exactly and for every λ ≥ 0
        (Parikh & Boyd 2014, "Proximal algorithms", §4.2). After a plain SGD step on the data
        loss it makes one proximal-gradient step on loss + penalty; a gradient step on the
        penalty instead diverges once η λ max A > 2.
        """
        if self.tasks == 0 or lam == 0:
            return
        for k, p in self.params.items():
            p.add_(self.b[k], alpha=lr * lam).div_(self.a[k].mul(lr * lam).add_(1.0))

    @torch.no_grad()
    def add_gradient_(self, lam: float) -> None:
        """p.grad += λ (A θ − b) for every parameter: the penalty's gradient."""
        if self.tasks == 0 or lam == 0:
            return
        for k, p in self.params.items():
            grad = torch.addcmul(-self.b[k], self.a[k], p).mul_(lam)
            if p.grad is None:
                p.grad = grad
            else:
                p.grad.add_(grad)

    def state_dict(self) -> dict:
        return {"a": self.a, "b": self.b, "c": self.c, "tasks": self.tasks}

    def load_state_dict(self, state: dict) -> None:
        for k in self.params:
            self.a[k].copy_(state["a"][k])
            self.b[k].copy_(state["b"][k])
        self.c, self.tasks = state["c"].cpu().clone(), state["tasks"]


# ---------------------------------------------------------------------------------------
# Rehearsal
# ---------------------------------------------------------------------------------------

class ReplayMemory:
    """Training-set indices of ``per_task`` examples of each finished task.

    Examples are stored as (task, index into the training set); their images are permuted
    by their own task's permutation when replayed.
    """

    def __init__(self, per_task: int, device: torch.device | str = "cpu"):
        self.per_task = per_task
        self.device = torch.device(device)
        self.indices: list[torch.Tensor] = []  # one int64 (per_task,) per finished task, on the CPU where the
        # draws are made, so that no draw waits for the device

    def __len__(self) -> int:
        return sum(len(i) for i in self.indices)

    @property
    def tasks(self) -> int:
        return len(self.indices)

    def add_task(self, n_train: int, generator: torch.Generator) -> None:
        """Keep ``per_task`` training examples of the task just finished, uniformly without replacement."""
        kept = torch.randperm(n_train, generator=generator)[:self.per_task]
        self.indices.append(kept)

    def sample(self, n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """``n`` examples spread evenly over the stored tasks.

        Every task gets ⌊n / T⌋ examples and ``n mod T`` tasks, chosen at random, one more;
        within a task the examples are drawn uniformly with replacement.

        Returns:
            (task ids, training-set indices), both int64 (n,) on the memory's device.

        Raises:
            ValueError: the memory is empty.
        """
        if not self.indices:
            raise ValueError("the replay memory is empty")
        t = self.tasks
        counts = torch.full((t,), n // t, dtype=torch.int64)
        counts[torch.randperm(t, generator=generator)[:n % t]] += 1
        task_ids = torch.repeat_interleave(torch.arange(t), counts)  # (n,)
        stored = torch.stack(self.indices)  # (T, per_task)
        slot = torch.randint(stored.shape[1], (n,), generator=generator)
        return task_ids.to(self.device), stored[task_ids, slot].to(self.device)

    def state_dict(self) -> dict:
        return {"indices": list(self.indices)}

    def load_state_dict(self, state: dict) -> None:
        self.indices = [i.cpu() for i in state["indices"]]


# ---------------------------------------------------------------------------------------
# Measures (Lopez-Paz & Ranzato 2017; Chaudhry et al. 2018)
# ---------------------------------------------------------------------------------------

def average_accuracy(r: np.ndarray) -> float:
    """ACC = (1/T) Σ_j R[T-1, j]: mean test accuracy over all tasks after the last one."""
    return float(np.mean(r[-1]))


def backward_transfer(r: np.ndarray) -> float:
    """BWT = 1/(T-1) Σ_{j<T-1} (R[T-1, j] − R[j, j]); negative is forgetting, 0 for T = 1."""
    t = r.shape[0]
    return float(np.mean(r[-1, :-1] - np.diag(r)[:-1])) if t > 1 else 0.0


def forgetting(r: np.ndarray) -> float:
    """1/(T-1) Σ_{j<T-1} (max_{i<T-1} R[i, j] − R[T-1, j]): the best accuracy lost; 0 for T = 1."""
    t = r.shape[0]
    if t == 1:
        return 0.0
    best = np.array([r[j:t - 1, j].max() for j in range(t - 1)])
    return float(np.mean(best - r[-1, :-1]))


def plasticity(r: np.ndarray) -> float:
    """Mean of R[j, j]: how well each task is learnt when it is the current one."""
    return float(np.mean(np.diag(r)))


MEASURES = {"average_accuracy": average_accuracy, "backward_transfer": backward_transfer, "forgetting": forgetting,
            "plasticity": plasticity}


# ---------------------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Job:
    """One sequence of tasks: a model, a method (with its λ) and a seed."""

    model: str
    method: str
    lam: float | None
    seed: int

    @property
    def name(self) -> str:
        return f"{self.model}_{self.label}_s{self.seed}"

    @property
    def label(self) -> str:
        return f"ewc{self.lam:g}" if self.method == "ewc" else self.method


def jobs_of(config: ContinualConfig) -> list[Job]:
    """The run's jobs in training order: per model, per seed, per method (per λ for EWC)."""
    return [Job(model, method, lam, seed) for model in config.model
            for seed in range(config.seed, config.seed + config.seeds)
            for method in config.methods for lam in (config.lambdas if method == "ewc" else (None,))]


@torch.no_grad()
def evaluate_tasks(model: nn.Module, x: torch.Tensor, y: torch.Tensor, perms: torch.Tensor,
                   batch_size: int = 2000) -> np.ndarray:
    """float64 (T,): accuracy on images x (N, 784), labels y (N,), under each of the permutations (T, 784)."""
    acc = np.array([top1_accuracy(model.eval(), x[:, perm], y, batch_size) for perm in perms])
    model.train()
    return acc


def train_step(model: nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor,
               ewc: EWC | None, lam: float, update: str = "proximal") -> torch.Tensor:
    """One SGD step on the cross-entropy of (x (B, 784), y (B,)) and the EWC penalty, if any.

    ``update`` "gradient" adds the penalty's gradient λ(Aθ − b) before the step; "proximal"
    follows the step with the penalty's proximal step (:meth:`EWC.proximal_`).

    Returns the batch's cross-entropy in nats (a detached scalar tensor).
    """
    loss = F.cross_entropy(model(x), y)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    if ewc is not None and update == "gradient":
        ewc.add_gradient_(lam)
    opt.step()
    if ewc is not None and update == "proximal":
        ewc.proximal_(lam, opt.param_groups[0]["lr"])
    return loss.detach()


def run_job(job: Job, config: ContinualConfig, data: dict, run: Run, unit: CurrentUnit, done: list[dict]) -> dict:
    """Train ``job`` over all tasks; returns its results dict.

    The run's step counts optimiser steps over every job, its epoch the tasks finished over every
    job (the rows of tasks.csv); ``done`` holds the results of the jobs before this one. ``unit``
    holds the job's objects and its position (restored when the run stopped inside this job).
    """
    train_x, train_y = data["train_x"], data["train_y"]
    device, n_train, tasks = train_x.device, len(train_x), config.tasks
    eval_x, eval_y = data["eval_x"][:config.eval_samples], data["eval_y"][:config.eval_samples]
    probe_x, probe_y = data["eval_x"][:1000], data["eval_y"][:1000]
    perms = permutations(tasks, job.seed).to(device)  # (T, 784)
    torch.manual_seed(job.seed)
    model = (MLP(config.hidden) if job.model == "mlp" else CNN()).to(device)
    opt = (torch.optim.Adam(model.parameters(), lr=config.lr) if config.optimizer == "adam"
           else torch.optim.SGD(model.parameters(), lr=config.lr, momentum=config.momentum))
    gen = torch.Generator().manual_seed(job.seed + 7919)  # data order, memory, replay and Fisher samples
    ewc = EWC(model) if job.method == "ewc" else None
    memory = ReplayMemory(config.memory_per_task, device) if job.method == "rehearsal" else None
    objects = {"model": model, "opt": opt, "gen": GeneratorStates([gen]), "ewc": ewc, "memory": memory}
    lam = job.lam or 0.0
    base, first_task = sum(d["steps"] for d in done), len(done) * tasks  # the run's step and epoch before this job
    pos = unit.start(job.name, {"step": base, "task": 0, "pass": 0, "batch": 0, "order": None, "losses": torch.zeros(0),
                                "r": torch.full((tasks, tasks), math.nan, dtype=torch.float64), "probes": [],
                                "job_start": run.elapsed_s},
                     **{name: obj for name, obj in objects.items() if obj is not None})
    step, task, pass_, batch, order = pos["step"] - base, pos["task"], pos["pass"], pos["batch"], pos["order"]
    losses, probes, job_start = list(pos["losses"]), list(pos["probes"]), pos["job_start"]
    r = pos["r"].cpu().numpy().copy()  # (T, T) accuracy matrix, NaN for tasks not yet seen
    logged = len(losses)  # this task's losses already in steps.jsonl

    def flush() -> None:
        nonlocal logged
        if logged < len(losses):
            values = torch.stack(losses[logged:]).tolist()
            run.log_steps([{"step": base + step - len(values) + 1 + i, "loss": v} for i, v in enumerate(values)],
                          check=("loss",))
            logged = len(losses)

    def progress() -> dict:
        flush()  # the steps file never lags behind a checkpoint
        pos.update({"step": base + step, "task": task, "pass": pass_, "batch": batch, "order": order,
                    "losses": torch.stack(losses) if losses else torch.zeros(0), "r": torch.from_numpy(r),
                    "probes": probes})
        return {"done": done}

    steps_per_epoch = n_train // config.batch_size
    per_task = math.ceil(config.max_steps / tasks) if config.max_steps is not None else math.inf
    while task < tasks:
        perm = perms[task]
        while pass_ < config.epochs:
            if batch == 0:
                order = torch.randperm(n_train, generator=gen).to(device)
            while batch < steps_per_epoch and step < per_task * (task + 1):  # --max-steps spread over the tasks
                idx = order[batch * config.batch_size:(batch + 1) * config.batch_size]
                x, y = train_x[idx][:, perm], train_y[idx]  # (B, 784), (B,)
                if memory is not None and memory.tasks and config.replay_batch:
                    # Replay: past examples under their own task's permutation.
                    t_r, i_r = memory.sample(config.replay_batch, gen)
                    x_r = torch.gather(train_x[i_r], 1, perms[t_r])  # (R, 784)
                    x, y = torch.cat([x, x_r]), torch.cat([y, train_y[i_r]])
                losses.append(train_step(model, opt, x, y, ewc, lam, config.ewc_update))
                step, batch = step + 1, batch + 1
                if step % config.probe_every == 0:
                    probes.append({"step": step, "task": task + 1,
                                   "task1_accuracy": float(evaluate_tasks(model, probe_x, probe_y, perms[:1])[0])})
                    flush()
                run.step_done(base + step, first_task + task, progress)
            pass_, batch = pass_ + 1, 0
        # End of task: accuracy row, then consolidate (EWC) or remember (rehearsal).
        r[task, :task + 1] = evaluate_tasks(model, eval_x, eval_y, perms[:task + 1])  # unseen tasks stay NaN
        probes.append({"step": step, "task": task + 1, "task1_accuracy": float(r[task, 0])})
        flush()
        loss = float(torch.stack(losses).mean())
        penalty = ewc.penalty(lam) if ewc is not None else 0.0
        if ewc is not None:
            pick = torch.randperm(n_train, generator=gen)[:config.fisher_samples].to(device)
            ewc.consolidate(fisher_diagonal(model, train_x[pick][:, perm], train_y[pick], kind=config.fisher))
        if memory is not None:
            memory.add_task(n_train, gen)
        task, pass_, losses, logged = task + 1, 0, [], 0
        row = {"job": job.name, "model": job.model, "method": job.method, "lambda": job.lam, "seed": job.seed,
               "task": task, "step": step, "loss": loss, "penalty": penalty, "accuracy_current": r[task - 1, task - 1],
               "average_accuracy_seen": float(r[task - 1, :task].mean()), "seconds": run.elapsed_s - job_start}
        run.log_rows("tasks.csv", [row])
        tqdm.write(f"{row['job']} task {row['task']}: acc on it {row['accuracy_current']:.4f}, "
                   f"mean over seen {row['average_accuracy_seen']:.4f} ({row['seconds']:.0f} s)")
        run.checkpoint(base + step, first_task + task, progress())
    return {"job": job.name, "model": job.model, "method": job.method, "label": job.label, "lambda": job.lam,
            "seed": job.seed, "r": [[None if np.isnan(v) else float(v) for v in row] for row in r],  # NaN: unseen
            "probes": probes, "steps": step, "seconds": run.elapsed_s - job_start,
            **{key: measure(r) for key, measure in MEASURES.items()}}


def run(config: ContinualConfig) -> Path:
    """Run every (model, seed, method, λ) job in turn; returns the run directory. The checkpoint
    (also at every task end) holds the finished jobs' results and, as a :class:`genlab.engine.CurrentUnit`,
    the current job's objects and position."""
    device = resolve_device(config.device)
    unit = CurrentUnit()
    with Run("continual", config, device, job=unit) as run:
        data = run_data(config, device)
        print(f"continual: training on {len(data['train_x']):,} images; accuracies on {config.evaluation}")
        done = list((run.resume() or {"done": []})["done"])
        for job in jobs_of(config)[len(done):]:
            done.append(run_job(job, config, data, run, unit, done))
            unit.end()
            run.log_rows("results.jsonl", done[-1:])
        run.checkpoint(sum(d["steps"] for d in done), len(done) * config.tasks, {"done": done})
        report.finish(run.dir, config, done, run.elapsed_s, MEASURES)
    return run.path


def evaluate(run_path: Path) -> dict:
    """``genlab eval RUN_DIR``: rebuild figures, table and summary from metrics/results.jsonl."""
    _, config = reopen(run_path, "continual", ContinualConfig, torch.device("cpu"))
    run_dir = RunDir("continual", config, torch.device("cpu"))
    return {"table": report.finish(run_dir, config, run_dir.read_rows("results.jsonl"), None, MEASURES)}


EXPERIMENT = Experiment(
    name="continual", config=ContinualConfig, run=run, evaluate=evaluate,
    summary="SPEC §9: catastrophic forgetting on permuted MNIST: naive, EWC (λ sweep), rehearsal; MLP and CNN")
