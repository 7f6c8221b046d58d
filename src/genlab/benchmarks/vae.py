"""VAE training speed: genlab's stacked trainer against a plain-PyTorch reference loop.

The reference is the loop a course solution writes (the CS236 homework's shape): a
per-sample ``Dataset`` that scales each uint8 image to [0, 1] and flattens it, a shuffling
``DataLoader`` at batch 100, ``torch.bernoulli`` on each batch, ``nn.Sequential`` encoder and
decoder of ``nn.Linear`` + ``nn.ELU``, the negative ELBO from the same formulas, and the
default ``torch.optim.Adam``; several seeds are several runs of that loop, one after the
other. genlab's step is :func:`genlab.experiments.vae.train_step`: the data set held as one
uint8 tensor gathered per batch with ``index_select`` and binarised by one comparison with
uniform uint8 draws on {0, ..., 254} (exactly Bernoulli(i / 255)), the loss and
its gradients written out (``negative_elbo_and_gradients``) with the matrix products in bf16
where the CPU supports it (``--precision``), fused Adam, and ``--seeds`` models stacked into
batched GEMMs (one optimiser step for all of them). A third loop times the same step with
autocast and autograd's backward pass instead (the ablation).

Rounds alternate reference and genlab so that both see the same background load; the
figure of each side is its median round.

    genlab bench vae --steps 300 --seeds 3 --json
    python benchmarks/bench_vae.py --steps 300
"""

from __future__ import annotations

import statistics

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

from genlab.benchmarks.common import (add_device_argument, add_json_argument, device_name, machine_info,
                                     parser_for, report, time_steps)
from genlab.data import load_split
from genlab.engine import autocast_for, bf16_supported, compute_dtype, resolve_device
from genlab.experiments import vae


class _PerSampleMNIST(Dataset):
    def __init__(self, images):
        self.images = images

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i):
        return torch.from_numpy(self.images[i].copy()).float().div(255.0).view(-1)  # ToTensor, flatten -> (784,)


class ReferenceVAE(nn.Module):
    """The SPEC §4 VAE written plainly, with the assignment's negative_elbo_bound."""

    def __init__(self, latent_dim: int = 10, hidden_dim: int = 300):
        super().__init__()
        self.latent_dim = latent_dim
        self.encoder = nn.Sequential(nn.Linear(784, hidden_dim), nn.ELU(), nn.Linear(hidden_dim, hidden_dim), nn.ELU(),
                                     nn.Linear(hidden_dim, 2 * latent_dim))
        self.decoder = nn.Sequential(nn.Linear(latent_dim, hidden_dim), nn.ELU(), nn.Linear(hidden_dim, hidden_dim),
                                     nn.ELU(), nn.Linear(hidden_dim, 784))

    def negative_elbo_bound(self, x):
        m, h = torch.split(self.encoder(x), self.latent_dim, dim=-1)
        v = F.softplus(h) + 1e-8
        z = m + torch.sqrt(v) * torch.randn_like(m)
        logits = self.decoder(z)
        kl = 0.5 * (v + m.pow(2) - 1 - torch.log(v)).sum(-1)
        rec = F.binary_cross_entropy_with_logits(logits, x, reduction="none").sum(-1)
        return (kl + rec).mean(), kl.mean(), rec.mean()


def time_reference(images, steps: int, warmup: int, batch_size: int, device: torch.device) -> float:
    """Seconds per iteration of the reference loop (one model) over ``steps`` after ``warmup``."""
    model = ReferenceVAE().to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    loader = DataLoader(_PerSampleMNIST(images), batch_size=batch_size, shuffle=True, drop_last=True)
    it = iter(loader)

    def step(i: int) -> None:
        nonlocal it
        try:
            x = next(it)
        except StopIteration:
            it = iter(loader)
            x = next(it)
        x = torch.bernoulli(x.to(device))
        loss, kl, rec = model.negative_elbo_bound(x)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    return time_steps(step, steps, warmup, device) / steps


def time_genlab(images, steps: int, warmup: int, batch_size: int, device: torch.device, seeds: int,
                precision: str = "auto", autograd: bool = False) -> float:
    """Seconds per iteration of genlab's trainer with ``seeds`` stacked models.

    ``autograd=True`` is the ablation of :func:`genlab.experiments.vae.negative_elbo_and_gradients`:
    the same step with ``VAE.negative_elbo_bound`` under autocast and autograd's backward pass.
    """
    config = vae.VAEConfig(seeds=seeds, batch_size=batch_size, precision=precision)
    model, optimizer, gens = vae.build(config, device)
    stream = vae.BatchStream(torch.from_numpy(images.reshape(-1, 784).copy()).to(device), batch_size, gens)
    dtype, autocast = compute_dtype(device, precision), autocast_for(device, precision)

    def step(i: int) -> None:
        eps = vae.draw_noise(gens, batch_size, config.latent_dim, device)
        if not autograd:
            vae.train_step(model, optimizer, stream.next(), eps, dtype)
            return
        x = stream.next()
        with autocast:
            nelbo, _, _ = model.negative_elbo_bound(x, eps)
        optimizer.zero_grad(set_to_none=True)
        nelbo.sum().backward()
        optimizer.step()

    return time_steps(step, steps, warmup, device) / steps


def main(argv: list[str] | None = None) -> dict:
    parser = parser_for("vae", __doc__)
    parser.add_argument("--steps", type=int, default=300, help="timed iterations per loop and round")
    parser.add_argument("--warmup", type=int, default=20, help="untimed iterations first")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds; the median is reported")
    parser.add_argument("--seeds", type=int, default=3, help="models trained together by genlab")
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--iterations", type=int, default=10000, help="run length the projections are for")
    parser.add_argument("--precision", default="auto", choices=["auto", "bf16", "fp32"],
                        help="genlab's arithmetic (the reference is always fp32)")
    add_device_argument(parser)
    add_json_argument(parser)
    args = parser.parse_args(argv)
    device = resolve_device(args.device)
    torch.manual_seed(0)
    images, _ = load_split(vae.DATASET, "train")
    ref, one, many, plain = [], [], [], []
    for _ in range(args.rounds):
        ref.append(time_reference(images, args.steps, args.warmup, args.batch_size, device))
        one.append(time_genlab(images, args.steps, args.warmup, args.batch_size, device, 1, args.precision))
        plain.append(time_genlab(images, args.steps, args.warmup, args.batch_size, device, 1, args.precision,
                                 autograd=True))
        many.append(time_genlab(images, args.steps, args.warmup, args.batch_size, device, args.seeds, args.precision))
    ref, one, many, plain = (statistics.median(t) for t in (ref, one, many, plain))
    n = args.iterations
    result = {
        "reference_ms_per_iteration": round(ref * 1e3, 3),
        "genlab_ms_per_iteration": round(one * 1e3, 3),
        f"genlab_{args.seeds}_seeds_ms_per_iteration": round(many * 1e3, 3),
        "genlab_autograd_ms_per_iteration": round(plain * 1e3, 3),
        "speedup_one_seed": round(ref / one, 2),
        "speedup_over_autograd_step": round(plain / one, 2),
        f"speedup_{args.seeds}_seeds": round(args.seeds * ref / many, 2),
        f"reference_s_for_{n}_iterations_per_seed": round(ref * n, 1),
        f"genlab_s_for_{n}_iterations_one_seed": round(one * n, 1),
        f"genlab_s_for_{n}_iterations_per_seed_with_{args.seeds}_stacked": round(many * n / args.seeds, 1),
        "steps": args.steps,
        "rounds": args.rounds,
        "batch_size": args.batch_size,
        "bf16": bf16_supported(device) if args.precision == "auto" else args.precision == "bf16",
        "device": device_name(device),
        **machine_info(),
    }
    return report(result, args.json,
                  f"reference          {ref * 1e3:8.2f} ms/iteration   {ref * n:7.1f} s per seed for {n}\n"
                  f"genlab, 1 seed     {one * 1e3:8.2f} ms/iteration   {one * n:7.1f} s per seed\n"
                  f"  autograd step    {plain * 1e3:8.2f} ms/iteration   {plain * n:7.1f} s per seed\n"
                  f"genlab, {args.seeds} stacked  {many * 1e3:8.2f} ms/iteration   "
                  f"{many * n / args.seeds:7.1f} s per seed\n"
                  f"speed-up {ref / one:.2f}x (one seed), {args.seeds * ref / many:.2f}x ({args.seeds} seeds)")
