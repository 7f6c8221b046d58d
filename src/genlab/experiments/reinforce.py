"""SPEC §8: policy gradient as zeroth-order optimisation of a classifier.

A classifier with two logits defines a policy p_w(y | x) over labels. It is trained only
through a black-box loss L(x, y) of the input and a label *sampled from the model*, which
returns numbers and no gradient. The score-function (REINFORCE) estimator (Williams 1992,
eq. 11; the log-derivative trick p ∇ log p = ∇p)

    ∇_w E_{y ~ p_w(.|x)}[L(x, y)] = E_{y ~ p_w(.|x)}[(L(x, y) - b) ∇_w log p_w(y | x)]
                                   ≈ 1/(N K) Σ_i Σ_k (L(x_i, y_ik) - b) ∇_w log p_w(y_ik | x_i)

is unbiased for any b that does not depend on the sampled y_ik: b = 0 (``plain``) or a
running mean of past losses (``baseline``, Williams 1992 §7, reinforcement comparison).
The same network, trained with supervised cross-entropy on the same data, minibatches,
initialisation and step budget, is the comparison.

Tasks (``--task``):

* ``mnist-gt5``: MNIST images, 784 pixels in [0, 1]; label 1 when the digit is > 5.
  Only 39 % of the digits are 6-9, so always answering 0 scores 60.3 % on the test set.
* ``threshold``: the scalar toy x ~ U[0, 10], label 1 when x > 5 (60,000 training and
  10,000 test draws from a fixed generator, the same for every seed).

The black-box loss is the 0-1 loss L(x, y) = 1[y != t(x)] with t the true label.

    genlab run reinforce                                  # MNIST > 5, 3 seeds, plain + baseline + supervised
    genlab run reinforce --task threshold
    genlab run reinforce --steps 20 --seeds 1 --subset 512 --out /tmp/smoke
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from genlab.data import load_flat
from genlab.engine import CurrentUnit, DataConfig, GeneratorStates, Run, resolve_device, seed_everything
from genlab.errors import ConfigError
from genlab.experiments import Experiment
from genlab.quality import top1_accuracy
from genlab.reports import reinforce as report

TOY_SIZES = {"train": 60_000, "test": 10_000}
TOY_DATA_SEED = 0  # the toy data set is the same for every --seed
OBJECTIVE_SIZE = 2_000  # training examples on which the expected 0-1 loss is tracked
# metrics/curves.csv: one row per (method, seed, evaluated step); empty where not measured
COLUMNS = ["method", "seed", "step", "test_accuracy", "train_objective", "train_loss", "baseline",
           "grad_var", "grad_var_labels", "grad_sq_norm"]


@dataclass
class ReinforceConfig(DataConfig):
    """SPEC §8 defaults."""

    task: Literal["mnist-gt5", "threshold"] = "mnist-gt5"
    """mnist-gt5: MNIST, label 1 when the digit is > 5; threshold: x ~ U[0, 10], label 1 when x > 5."""
    estimator: tuple[Literal["plain", "baseline"], ...] = ("plain", "baseline")
    """Score-function estimators to train with: plain (b = 0) and/or baseline (b = running mean of the loss)."""
    supervised: bool = True
    """Also train the same network with supervised cross-entropy (the comparison)."""
    seeds: int = 3
    """Number of seeds: --seed, --seed + 1, ...; every method is trained once per seed."""
    steps: int = 2000
    """Optimiser steps per training (the budget, the same for every method)."""
    batch_size: int = 64
    """Inputs per minibatch (N)."""
    samples_per_input: int = 1
    """Labels sampled from the model per input (K); the estimate averages over N * K terms."""
    optimizer: Literal["adam", "sgd"] = "adam"
    """Optimiser, the same for every method."""
    lr: float = 1e-3
    """Learning rate."""
    hidden: int = 64
    """Width of the hidden ReLU layer (0: logistic regression, a single linear layer)."""
    baseline_decay: float = 0.9
    """Decay of the baseline's exponential running mean of the minibatch loss (bias-corrected)."""
    eval_every: int = 20
    """Steps between test-accuracy evaluations (step 0 and the last step are always evaluated)."""
    variance_every: int = 200
    """Steps between measurements of the gradient-estimate variance (0: never)."""
    variance_estimates: int = 32
    """Independent gradient estimates per variance measurement."""
    target_accuracy: float = 0.75
    """Test accuracy whose first crossing is reported as 'steps to reach'."""
    subset: int | None = None
    """Train on the first N training examples only (tests and quick looks)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        self.require(1, "seeds", "steps", "batch_size", "samples_per_input", "eval_every")
        self.require(0, "hidden", "variance_every")
        self.require(2, "variance_estimates")
        self.require(0, "lr", above=True)
        if not 0 <= self.baseline_decay < 1:
            raise ConfigError(f"--baseline-decay must be in [0, 1), got {self.baseline_decay}")
        if not 0 < self.target_accuracy <= 1:
            raise ConfigError(f"--target-accuracy must be in (0, 1], got {self.target_accuracy}")
        if self.subset is not None and self.subset < self.batch_size:
            raise ConfigError(f"--subset must be >= --batch-size ({self.batch_size}), got {self.subset}")
        if not self.estimator and not self.supervised:
            raise ConfigError("nothing to train: give --estimator plain/baseline or keep --supervised")
        self.estimator = tuple(dict.fromkeys(self.estimator))  # drop repeats, keep order

    @property
    def methods(self) -> list[str]:
        return [f"reinforce-{e}" for e in self.estimator] + (["supervised"] if self.supervised else [])


# ---------------------------------------------------------------------------------------
# The task: data and the black-box loss
# ---------------------------------------------------------------------------------------

class ZeroOneLoss:
    """The black box: L(x, y) = 1[y != t(x)], the 0-1 loss of label y for input x, computed in
    NumPy and handed back as a fresh tensor, so no gradient can flow through it into x or y.

    Args:
        target: t, NumPy inputs (N, d) float32 -> true labels (N,) int: a :class:`LabelLookup`
            for MNIST (the way a human labeller would answer), :func:`threshold_target` for the toy.
    """

    def __init__(self, target: Callable[[np.ndarray], np.ndarray]):
        self.target = target

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """x (N, d) float, y (K, N) int64 labels in {0, 1} -> float32 (K, N) losses in {0, 1}, no grad."""
        t = np.asarray(self.target(x.detach().cpu().numpy()))  # (N,)
        y_np = y.detach().cpu().numpy()  # (K, N)
        return torch.from_numpy((y_np != t[None, :]).astype(np.float32)).to(y.device)


class LabelLookup:
    """t(x) for a labelled image set: a dict from each row's bytes to its label.

    Args: images float32 (N, d) exactly as the model sees them, labels int (N,).
    Raises: KeyError (naming the position) for an input that is not in the set;
    ValueError when two identical rows carry different labels.
    """

    def __init__(self, images: np.ndarray, labels: np.ndarray):
        self.table: dict[bytes, int] = {}
        for row, label in zip(np.ascontiguousarray(images, dtype=np.float32), labels.tolist()):
            if self.table.setdefault(row.tobytes(), label) != label:
                raise ValueError("two identical inputs carry different labels; the 0-1 loss is ill-defined")

    def __call__(self, x: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(x, dtype=np.float32)
        try:
            return np.array([self.table[row.tobytes()] for row in x], dtype=np.int64)
        except KeyError:
            bad = next(i for i, row in enumerate(x) if row.tobytes() not in self.table)
            raise KeyError(f"input {bad} of the batch is not in the labelled set the black box knows") from None


def threshold_target(x: np.ndarray) -> np.ndarray:
    """The toy's rule: x (N, 1) -> 1[x > 5] (N,) int64."""
    return (x[:, 0] > 5.0).astype(np.int64)


@dataclass
class Task:
    """Inputs float32 (N, d) and true labels int64 (N,) for training and test, and the black box."""

    name: str
    x_train: torch.Tensor
    t_train: torch.Tensor
    x_test: torch.Tensor
    t_test: torch.Tensor
    loss: ZeroOneLoss

    @property
    def majority_accuracy(self) -> float:
        """Test accuracy of always answering the training set's majority label."""
        majority = int(self.t_train.float().mean().item() > 0.5)
        return (self.t_test == majority).float().mean().item()


def load_task(name: str, data_dir: Path | None = None, subset: int | None = None) -> Task:
    """The data of ``--task`` on the CPU. MNIST pixels are scaled to [0, 1] and flattened."""
    if name == "mnist-gt5":
        (x_train, d_train), (x_test, d_test) = (load_flat("mnist", s, data_dir) for s in ("train", "test"))
        x_train, t_train = x_train[:subset], (d_train[:subset] > 5).long()  # (N, 784) in [0, 1], (N,)
        loss = ZeroOneLoss(LabelLookup(x_train.numpy(), t_train.numpy()))
        return Task(name, x_train, t_train, x_test, (d_test > 5).long(), loss)
    if name == "threshold":
        gen = torch.Generator().manual_seed(TOY_DATA_SEED)
        x_train, x_test = (torch.rand(TOY_SIZES[s], 1, generator=gen) * 10 for s in ("train", "test"))  # U[0, 10]
        x_train = x_train[:subset]
        t_train, t_test = (torch.from_numpy(threshold_target(x.numpy())) for x in (x_train, x_test))
        return Task(name, x_train, t_train, x_test, t_test, ZeroOneLoss(threshold_target))
    raise ValueError(f"unknown task {name!r}; known: mnist-gt5, threshold")


# ---------------------------------------------------------------------------------------
# Model and estimators
# ---------------------------------------------------------------------------------------

class Classifier(nn.Module):
    """x (N, d) float32 -> 2 logits (N, 2): Linear(d, hidden) -> ReLU -> Linear(hidden, 2), or
    one Linear(d, 2) when hidden = 0 (logistic regression). p_w(y | x) = softmax(logits)_y."""

    def __init__(self, in_features: int, hidden: int = 64):
        super().__init__()
        if hidden:
            self.net = nn.Sequential(nn.Linear(in_features, hidden), nn.ReLU(), nn.Linear(hidden, 2))
        else:
            self.net = nn.Linear(in_features, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def sample_labels(logits: torch.Tensor, k: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """K labels per input from p(y | x) = softmax(logits): logits (N, 2) -> int64 (K, N).

    y = 1[u < p(1 | x)] with u ~ U[0, 1) drawn on the CPU from ``generator`` (so that a
    seed gives the same labels on any device).
    """
    p1 = torch.softmax(logits.detach().float(), dim=-1)[:, 1]  # (N,)
    u = torch.rand(k, logits.shape[0], generator=generator).to(logits.device)  # (K, N)
    return (u < p1[None, :]).long()


def score_function_surrogate(logits: torch.Tensor, labels: torch.Tensor, losses: torch.Tensor,
                             baseline: float = 0.0) -> torch.Tensor:
    """A scalar whose gradient is the score-function estimate (Williams 1992, eq. 11)

        g = 1/(N K) Σ_i Σ_k (L_ik - b) ∇_w log p_w(y_ik | x_i).

    Args:
        logits: (N, 2), attached to the model's parameters w.
        labels: int64 (K, N), sampled from the model.
        losses: float (K, N), the black box's L(x_i, y_ik); treated as constants.
        baseline: b, which must not depend on these samples (0 gives the plain estimator).

    Returns: a scalar (float32, or float64 for float64 logits) whose value is not the loss; only its gradient is.
    """
    log_p = F.log_softmax(logits.to(torch.promote_types(logits.dtype, torch.float32)), dim=-1)  # (N, 2)
    log_p_y = log_p.gather(1, labels.T).T  # (K, N): log p_w(y_ik | x_i)
    return ((losses.detach() - baseline) * log_p_y).mean()


class RunningMean:
    """The baseline b: an exponential running mean of past minibatch losses, bias-corrected
    as in Adam (Kingma & Ba 2015, §3): m ← β m + (1 − β) L̄, b = m / (1 − β^t); b = 0 before
    the first update, so the first step is a plain one."""

    def __init__(self, decay: float):
        self.decay, self.mean, self.count = decay, 0.0, 0

    @property
    def value(self) -> float:
        return self.mean / (1 - self.decay ** self.count) if self.count else 0.0

    def update(self, x: float) -> None:
        self.mean = self.decay * self.mean + (1 - self.decay) * x
        self.count += 1

    def state_dict(self) -> dict:
        return {"mean": self.mean, "count": self.count}

    def load_state_dict(self, state: dict) -> None:
        self.mean, self.count = state["mean"], state["count"]


def expected_zero_one(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """J = mean_i (1 − p_w(t_i | x_i)): the expected 0-1 loss of the policy, the objective
    REINFORCE minimises. logits (N, 2), targets int64 (N,) -> scalar."""
    return 1 - torch.softmax(logits.float(), -1).gather(1, targets[:, None]).mean()


# ---------------------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------------------

@dataclass
class Gradient:
    """Draws one minibatch gradient estimate of a method; the closure the loop and the
    variance probe share. ``baseline`` is read, never updated, here."""

    method: str
    model: Classifier
    task: Task
    k: int
    baseline: RunningMean

    def loss(self, x: torch.Tensor, t: torch.Tensor, gen: torch.Generator) -> tuple[torch.Tensor, float | None]:
        """(differentiable surrogate, mean black-box loss or None for supervised)."""
        logits = self.model(x)  # (N, 2)
        if self.method == "supervised":
            return F.cross_entropy(logits.float(), t), None
        labels = sample_labels(logits, self.k, gen)  # (K, N)
        with torch.no_grad():
            losses = self.task.loss(x, labels)  # (K, N), from the black box
        b = self.baseline.value if self.method == "reinforce-baseline" else 0.0
        return score_function_surrogate(logits, labels, losses, b), losses.mean().item()


def flat_grad(scalar: torch.Tensor, params: list[torch.Tensor]) -> torch.Tensor:
    return torch.cat([g.reshape(-1) for g in torch.autograd.grad(scalar, params)])  # (P,)


def gradient_variance(grad: Gradient, x: torch.Tensor, t: torch.Tensor, batch_size: int, n: int,
                      gen: torch.Generator) -> dict[str, float]:
    """The spread of the minibatch gradient estimate g at the current parameters, from ``n``
    minibatches drawn (with replacement) from x (N, d), t (N,).

    Returns (all float, in squared gradient units, summed over every parameter):
        grad_var: tr Cov(g) = E||g − E g||² over fresh minibatches and fresh sampled labels
            (what the optimiser sees); the unbiased sample variance of the n draws.
        grad_var_labels: E_batch[tr Cov(g | batch)], the part due to sampling labels alone,
            from a second label draw g' on each minibatch: mean of ||g − g'||² / 2
            (0 for supervised, which samples no labels).
        grad_sq_norm: ||E g||², the signal, estimated without bias as ||mean g||² − grad_var / n.
    """
    params = list(grad.model.parameters())
    draws, label_gaps = [], []
    for _ in range(n):
        idx = torch.randint(len(x), (batch_size,), generator=gen).to(x.device)
        g = flat_grad(grad.loss(x[idx], t[idx], gen)[0], params).double()  # (P,)
        draws.append(g)
        if grad.method != "supervised":
            g_again = flat_grad(grad.loss(x[idx], t[idx], gen)[0], params).double()  # same batch, new labels
            label_gaps.append((g - g_again).square().sum().item() / 2)
    draws = torch.stack(draws)  # (n, P)
    var = draws.var(0).sum().item()
    return {"grad_var": var, "grad_var_labels": float(np.mean(label_gaps)) if label_gaps else 0.0,
            "grad_sq_norm": draws.mean(0).square().sum().item() - var / n}


def train(method: str, seed: int, task: Task, config: ReinforceConfig, device: torch.device,
          x_train: torch.Tensor, t_train: torch.Tensor, x_test: torch.Tensor, t_test: torch.Tensor,
          unit: CurrentUnit | None = None, step_done: Callable[[int], None] = lambda step: None,
          log: Callable[[dict], None] = lambda row: None) -> dict:
    """Train one method with one seed; returns {"method", "seed", "curve": its rows}.

    The seed fixes the initialisation, the minibatch order and the variance probes, so all
    methods of one seed start from the same weights and see the same minibatches. ``unit`` holds
    the training's state (model, optimiser, generators, baseline, loop counters) and resumes it
    where a checkpoint inside it left off; ``step_done(step)`` is called after every optimiser step,
    ``log(row)`` with every row of the curve.
    """
    seed_everything(seed)
    model = Classifier(x_train.shape[1], config.hidden).to(device)
    opt = (torch.optim.Adam if config.optimizer == "adam" else torch.optim.SGD)(model.parameters(), lr=config.lr)
    order_gen = torch.Generator().manual_seed(seed)  # minibatch order
    label_gen = torch.Generator().manual_seed(seed + 1_000_003)  # labels sampled in training
    probe_gen = torch.Generator().manual_seed(seed + 2_000_003)  # variance probes only
    baseline = RunningMean(config.baseline_decay)
    state = (unit or CurrentUnit()).start(f"{method}/{seed}", {"step": 0, "curve": [], "window": [], "order": None},
                                          model=model, opt=opt, baseline=baseline,
                                          generators=GeneratorStates([order_gen, label_gen, probe_gen]))
    grad = Gradient(method, model, task, config.samples_per_input, baseline)
    total = config.steps if config.max_steps is None else min(config.steps, config.max_steps)
    n, per_epoch = len(x_train), len(x_train) // config.batch_size
    curve, window = state["curve"], state["window"]

    def record(step: int) -> None:
        model.eval()
        with torch.no_grad():
            objective = expected_zero_one(model(x_train[:OBJECTIVE_SIZE]), t_train[:OBJECTIVE_SIZE]).item()
        row = {"method": method, "seed": seed, "step": step,
               "test_accuracy": top1_accuracy(model, x_test, t_test, 10_000),
               "train_objective": objective, "train_loss": float(np.mean(window)) if window else math.nan,
               "baseline": baseline.value if method == "reinforce-baseline" else 0.0}
        if config.variance_every and (step % config.variance_every == 0 or step == total):
            row.update(gradient_variance(grad, x_train, t_train, config.batch_size, config.variance_estimates,
                                         probe_gen))
        model.train()
        window.clear()
        curve.append(row)
        log(row)

    if state["step"] == 0:
        record(0)
    for step in range(state["step"] + 1, total + 1):
        if (step - 1) % per_epoch == 0:
            state["order"] = torch.randperm(n, generator=order_gen).to(device)
        i = (step - 1) % per_epoch
        idx = state["order"][i * config.batch_size:(i + 1) * config.batch_size]
        # Supervised: ∇ CE(p_w(.|x), t). REINFORCE: sample y ~ p_w(.|x), ask the black box for
        # L(x, y), step along 1/(NK) Σ (L − b) ∇ log p_w(y | x); then b ← running mean.
        surrogate, black_box_loss = grad.loss(x_train[idx], t_train[idx], label_gen)
        opt.zero_grad(set_to_none=True)
        surrogate.backward()
        opt.step()
        if black_box_loss is not None:
            baseline.update(black_box_loss)
        window.append(black_box_loss if black_box_loss is not None else surrogate.item())
        if step % config.eval_every == 0 or step == total:
            record(step)
        state["step"] = step
        step_done(step)
    return {"method": method, "seed": seed, "curve": curve}


def run(config: ReinforceConfig) -> Path:
    """Train every method for every seed; returns the run directory.

    The run's step counts optimiser steps over the (method, seed) trainings in order (training
    i's step s is step i * steps + s), its epoch the trainings finished. The checkpoint holds the
    finished trainings and the whole state of the one in progress (a :class:`CurrentUnit`), so
    ``--resume`` continues inside a training exactly; on a finished run it rewrites the outputs.
    """
    device = resolve_device(config.device)
    unit = CurrentUnit()
    with Run("reinforce", config, device, unit=unit) as run:
        task = load_task(config.task, config.data_dir, config.subset)
        tensors = [t.to(device) for t in (task.x_train, task.t_train, task.x_test, task.t_test)]
        units = [(m, config.seed + s) for s in range(config.seeds) for m in config.methods]
        total = config.steps if config.max_steps is None else min(config.steps, config.max_steps)
        progress = run.resume() or {"step": 0, "done": {}, "started_s": None}
        done, started = progress["done"], progress["started_s"]  # started: elapsed_s when the training began
        if config.resume:
            print(f"{len(done)} of {len(units)} trainings already done")
        bar = tqdm(total=total * len(units), initial=progress["step"], unit="step", desc="reinforce",
                   dynamic_ncols=True, disable=None)
        for index, (method, seed) in enumerate(units):
            key = f"{method}/{seed}"
            if key in done:
                continue
            bar.set_postfix(method=method, seed=seed)
            started = run.elapsed_s if started is None else started

            def step_done(step: int) -> None:
                bar.update(1)
                run.step_done(index * total + step, index, lambda: {"done": done, "started_s": started})

            done[key] = train(method, seed, task, config, device, *tensors, unit=unit, step_done=step_done,
                              log=lambda row: run.log_rows("curves.csv", [{k: row.get(k, "") for k in COLUMNS}],
                                                           check=("train_objective",)))
            done[key]["seconds"], started = run.elapsed_s - started, None
            unit.end()
            run.checkpoint((index + 1) * total, index + 1, {"done": done, "started_s": None})
            tqdm.write(f"{key}: test accuracy {done[key]['curve'][-1]['test_accuracy']:.4f} "
                       f"({done[key]['seconds']:.1f} s)")
        bar.close()
        report.finish(run.dir, config, task.majority_accuracy, [done[f"{m}/{s}"] for m, s in units], run.elapsed_s,
                      OBJECTIVE_SIZE)
    return run.path


EXPERIMENT = Experiment(
    name="reinforce",
    summary="SPEC §8: REINFORCE (score function) vs supervised training of a 2-logit classifier, MNIST > 5 or x > 5",
    config=ReinforceConfig,
    run=run,
)
