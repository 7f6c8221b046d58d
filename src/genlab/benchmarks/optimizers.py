"""SPEC §6 grid speed: all runs stacked into one model against the same runs one after another.

Both sides train the same runs (every optimiser x learning rate x seed of the grid) for
the same number of steps on the same MNIST minibatches, with the same genlab.optim
optimisers and the same torch thread count:

* ``plain``: the loop a course solution writes, one run after another: ``nn.Sequential``
  MLP, ``F.cross_entropy``, ``zero_grad`` / ``backward`` / ``step``, batches by tensor
  indexing (and, with ``--dataloader``, also a shuffling ``DataLoader`` over a
  ``TensorDataset``, timed as a third side);
* ``grid``: :class:`genlab.experiments.optimizers.StackedGrid`, every run in one batched
  forward and backward.

Wall seconds (what a user waits) and process CPU seconds (steadier on a shared machine)
are both reported; the sides alternate ``--rounds`` times and the best round counts.

    genlab bench optimizers --steps 40 --json
    python benchmarks/bench_optimizers.py --steps 40
"""

from __future__ import annotations

import math
import time

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from genlab.benchmarks.common import add_json_argument, machine_info, parser_for, report
from genlab.data import load_flat
from genlab.experiments.optimizers import DATASET, Cell, OptimizersConfig, StackedGrid, epoch_order, make_classifier
from genlab.optim import OPTIMIZERS


def _clock() -> tuple[float, float]:
    return time.perf_counter(), time.process_time()


def time_plain(config: OptimizersConfig, x, y, order, steps: int, dataloader: bool = False) -> tuple[float, float]:
    """(wall s, CPU s) to train every run of the grid for ``steps`` steps, one after another."""
    start = _clock()
    for name in config.optimizers:
        for lr in config.lrs:
            for s, seed in enumerate(config.seeds):
                torch.manual_seed(seed)
                model = make_classifier(config.hidden)
                opt = OPTIMIZERS[name](model.parameters(), lr=lr, **config.hyperparameters(name))
                if dataloader:
                    batches = iter(DataLoader(TensorDataset(x, y), batch_size=config.batch_size, shuffle=True))
                for i in range(steps):
                    if dataloader:
                        xb, yb = next(batches)
                    else:
                        idx = order[s, i * config.batch_size:(i + 1) * config.batch_size]
                        xb, yb = x[idx], y[idx]
                    loss = F.cross_entropy(model(xb), yb)
                    opt.zero_grad()
                    loss.backward()
                    opt.step()
    end = _clock()
    return end[0] - start[0], end[1] - start[1]


def time_grid(config: OptimizersConfig, x, y, order, steps: int) -> tuple[float, float]:
    """(wall s, CPU s) to train every run of the grid for ``steps`` steps as one StackedGrid."""
    start = _clock()
    cells = [Cell(name, lr) for name in config.optimizers for lr in config.lrs]
    grid = StackedGrid(cells, config.seeds, config.hidden, {n: config.hyperparameters(n) for n in config.optimizers},
                       x.device)
    for i in range(steps):
        idx = order[:, i * config.batch_size:(i + 1) * config.batch_size]  # (S, B)
        grid.train_step(x[idx], y[idx])
    end = _clock()
    return end[0] - start[0], end[1] - start[1]


def main(argv: list[str] | None = None) -> dict:
    parser = parser_for("optimizers", __doc__)
    parser.add_argument("--steps", type=int, default=60, help="training steps per run (at most one epoch)")
    parser.add_argument("--rounds", type=int, default=2, help="alternations of the sides; the best round counts")
    parser.add_argument("--threads", type=int, default=None, help="torch threads, both sides (default: as set)")
    parser.add_argument("--dataloader", action="store_true", help="also time the plain loop with a DataLoader")
    add_json_argument(parser)
    args = parser.parse_args(argv)
    if args.steps < 1 or args.rounds < 1:
        parser.error("--steps and --rounds must be >= 1")
    if args.threads:
        torch.set_num_threads(args.threads)
    config = OptimizersConfig()  # the full-size grid: 6 optimisers x 3 lrs x 3 seeds, MLP 784-50-10, batch 128
    steps_per_epoch = math.ceil(60000 / config.batch_size)
    steps = min(args.steps, steps_per_epoch - 1)
    device = torch.device("cpu")
    x, y = load_flat(DATASET, "train", None, None, device)
    order = epoch_order(config.seeds, len(x), 0, device)
    sides = {"plain": lambda: time_plain(config, x, y, order, steps), "grid": lambda: time_grid(config, x, y, order, steps)}
    if args.dataloader:
        sides["plain_dataloader"] = lambda: time_plain(config, x, y, order, steps, dataloader=True)
    time_grid(config, x, y, order, 2)  # warm-up: allocator, kernels
    best = {name: (math.inf, math.inf) for name in sides}
    for _ in range(args.rounds):
        for name, fn in sides.items():
            wall, cpu = fn()
            best[name] = (min(best[name][0], wall), min(best[name][1], cpu))
    n_runs = len(config.optimizers) * len(config.lrs) * config.repeats
    full_steps = config.epochs * steps_per_epoch
    result = {
        "runs": n_runs, "steps_per_run": steps, "batch_size": config.batch_size,
        "classifier": f"MLP 784-{'-'.join(map(str, config.hidden))}-10",
        **{f"{name}_wall_s": round(w, 2) for name, (w, c) in best.items()},
        **{f"{name}_cpu_s": round(c, 2) for name, (w, c) in best.items()},
        "speedup_wall": round(best["plain"][0] / best["grid"][0], 2),
        "speedup_cpu": round(best["plain"][1] / best["grid"][1], 2),
        # the full grid (54 runs x 15 epochs x 469 steps) at these rates, training only
        "full_grid_plain_cpu_min": round(best["plain"][1] / steps * full_steps / 60, 1),
        "full_grid_stacked_cpu_min": round(best["grid"][1] / steps * full_steps / 60, 1),
        **machine_info(),
    }
    lines = [f"{n_runs} runs x {steps} steps, batch {config.batch_size}, {torch.get_num_threads()} thread(s)"]
    lines += [f"{name:17s} {wall:8.2f} s wall {cpu:8.2f} s CPU" for name, (wall, cpu) in best.items()]
    lines.append(f"speedup (plain / grid): {result['speedup_wall']:.2f}x wall, {result['speedup_cpu']:.2f}x CPU")
    return report(result, args.json, "\n".join(lines))
