"""Continual-learning speed: genlab's EWC trainer against a plain-PyTorch reference loop.

Both train the same MLP on permuted MNIST with SGD with ``--past-tasks`` tasks already
consolidated (the cost of EWC grows with them in the plain loop), and both estimate a
Fisher diagonal from ``--fisher-samples`` examples.

The reference is what a course solution writes: a per-sample ``Dataset`` that scales,
standardises and permutes each image, a shuffling ``DataLoader``, and the penalty
λ/2 Σ_t Σ_i F_t,i (θ_i − θ*_t,i)² summed over the stored tasks in the loss, differentiated
by autograd; the Fisher diagonal from one backward pass per example. genlab holds the data
set as one standardised tensor permuted by indexing, keeps the penalty as one quadratic
per parameter and adds its gradient λ (A θ − b) directly (``--ewc-update gradient``, the reference's update rule)
(:class:`genlab.experiments.continual.EWC`), and takes per-example gradients with
``torch.func.vmap`` (:func:`genlab.experiments.continual.fisher_diagonal`).

    genlab bench continual --steps 100 --json
    python benchmarks/bench_continual.py --steps 100
"""

from __future__ import annotations

import time

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from genlab.benchmarks.common import (add_device_argument, add_json_argument, device_name, machine_info,
                                     parser_for, report, sync, time_steps)
from genlab.data import load_split
from genlab.engine import resolve_device
from genlab.experiments import continual as cl


class _PermutedMNIST(Dataset):
    def __init__(self, images: np.ndarray, labels: np.ndarray, perm: torch.Tensor):
        self.images, self.labels, self.perm = images, labels, perm

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i):
        x = torch.from_numpy(self.images[i].copy()).float().div(255.0).view(-1)  # ToTensor, flattened
        x = (x - cl.MNIST_MEAN) / cl.MNIST_STD  # Normalize
        return x[self.perm], int(self.labels[i])


def _past_tasks(model: torch.nn.Module, tasks: int, seed: int = 0) -> list[tuple[dict, dict]]:
    """Synthetic (Fisher, θ*) pairs of the model's shapes, the same for both loops."""
    gen = torch.Generator().manual_seed(seed)
    return [({k: torch.rand(p.shape, generator=gen) * 1e-3 for k, p in model.named_parameters()},
             {k: p.detach() + 0.01 * torch.randn(p.shape, generator=gen) for k, p in model.named_parameters()})
            for _ in range(tasks)]


def time_reference(images, labels, perm, anchors, steps, warmup, batch_size, lam, hidden, device) -> float:
    """Optimiser steps per second of the plain loop."""
    torch.manual_seed(0)
    model = cl.MLP(hidden).to(device)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    anchors = [({k: v.to(device) for k, v in f.items()}, {k: v.to(device) for k, v in s.items()}) for f, s in anchors]
    loader = DataLoader(_PermutedMNIST(images, labels, perm), batch_size=batch_size, shuffle=True, drop_last=True)
    it = iter(loader)

    def step(i: int) -> None:
        x, y = next(it)
        x, y = x.to(device), y.to(device)
        loss = F.cross_entropy(model(x), y)
        for fisher, star in anchors:
            for name, p in model.named_parameters():
                loss = loss + lam / 2 * (fisher[name] * (p - star[name]) ** 2).sum()
        opt.zero_grad()
        loss.backward()
        opt.step()

    return steps / time_steps(step, steps, warmup, device)


def time_genlab(images, labels, perm, anchors, steps, warmup, batch_size, lam, hidden, device) -> float:
    """Optimiser steps per second of genlab's step."""
    torch.manual_seed(0)
    model = cl.MLP(hidden).to(device)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    ewc = cl.EWC(model)
    with torch.no_grad():
        saved = [p.clone() for p in model.parameters()]
        for fisher, star in anchors:
            for (name, p) in model.named_parameters():
                p.copy_(star[name])
            ewc.consolidate({k: v.to(device) for k, v in fisher.items()})
        for p, s in zip(model.parameters(), saved):
            p.copy_(s)
    x_all = torch.from_numpy(images.reshape(len(images), -1).astype(np.float32) / 255.0)
    x_all = ((x_all - cl.MNIST_MEAN) / cl.MNIST_STD).to(device)
    y_all = torch.from_numpy(labels.astype(np.int64)).to(device)
    perm = perm.to(device)
    order = torch.randperm(len(x_all), device=device)

    def step(i: int) -> None:
        idx = order[i * batch_size:(i + 1) * batch_size]
        cl.train_step(model, opt, x_all[idx][:, perm], y_all[idx], ewc, lam, update="gradient")  # the same maths

    return steps / time_steps(step, steps, warmup, device)


def time_fisher(images, labels, n: int, hidden: int, device) -> tuple[float, float, float]:
    """(reference, genlab) examples per second of the Fisher diagonal, and their max relative gap."""
    torch.manual_seed(0)
    model = cl.MLP(hidden).to(device)
    x = torch.from_numpy(images[:n].reshape(n, -1).astype(np.float32) / 255.0).to(device)
    y = torch.from_numpy(labels[:n].astype(np.int64)).to(device)
    sync(device)
    start = time.perf_counter()
    ref = {k: torch.zeros_like(p) for k, p in model.named_parameters()}
    for xi, yi in zip(x, y):  # one backward pass per example
        model.zero_grad()
        F.log_softmax(model(xi[None]), dim=1)[0, yi].backward()
        for k, p in model.named_parameters():
            ref[k] += p.grad ** 2 / n
    sync(device)
    t_ref = time.perf_counter() - start
    start = time.perf_counter()
    ours = cl.fisher_diagonal(model, x, y)
    sync(device)
    t_ours = time.perf_counter() - start
    gap = max(float(((ours[k] - ref[k]).abs().max() / ref[k].abs().max().clamp_min(1e-30))) for k in ref)
    return n / t_ref, n / t_ours, gap


def main(argv: list[str] | None = None) -> dict:
    parser = parser_for("continual", __doc__)
    parser.add_argument("--steps", type=int, default=100, help="timed optimiser steps per loop")
    parser.add_argument("--warmup", type=int, default=10, help="untimed steps first")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--hidden", type=int, default=400, help="MLP width")
    parser.add_argument("--past-tasks", type=int, default=9, help="consolidated tasks (9 = the last of 10)")
    parser.add_argument("--ewc-lambda", type=float, default=100.0)
    parser.add_argument("--fisher-samples", type=int, default=500)
    add_device_argument(parser)
    add_json_argument(parser)
    args = parser.parse_args(argv)
    device = resolve_device(args.device)
    images, labels = load_split("mnist", "train")
    perm = cl.permutations(1, seed=0)[0]
    anchors = _past_tasks(cl.MLP(args.hidden), args.past_tasks)
    common = (images, labels, perm, anchors, args.steps, args.warmup, args.batch_size, args.ewc_lambda, args.hidden,
              device)
    ref = time_reference(*common)
    ours = time_genlab(*common)
    fisher_ref, fisher_ours, gap = time_fisher(images, labels, args.fisher_samples, args.hidden, device)
    result = {
        "reference_steps_per_s": round(ref, 2),
        "genlab_steps_per_s": round(ours, 2),
        "ratio": round(ours / ref, 2),
        "reference_fisher_examples_per_s": round(fisher_ref, 1),
        "genlab_fisher_examples_per_s": round(fisher_ours, 1),
        "fisher_ratio": round(fisher_ours / fisher_ref, 2),
        "fisher_max_relative_gap": gap,
        "steps": args.steps, "batch_size": args.batch_size, "hidden": args.hidden, "past_tasks": args.past_tasks,
        "device": device_name(device),
        **machine_info(),
    }
    return report(result, args.json,
                  f"EWC training step, {args.past_tasks} past tasks, batch {args.batch_size}:\n"
                  f"  reference {ref:8.2f} steps/s\n  genlab    {ours:8.2f} steps/s\n  ratio     {ours / ref:8.2f}x\n"
                  f"Fisher diagonal, {args.fisher_samples} examples:\n"
                  f"  reference {fisher_ref:8.1f} examples/s\n  genlab    {fisher_ours:8.1f} examples/s\n"
                  f"  ratio     {fisher_ours / fisher_ref:8.2f}x   (max relative difference {gap:.1e})")
