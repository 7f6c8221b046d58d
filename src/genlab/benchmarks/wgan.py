"""WGAN (SPEC §3) training speed: genlab's critic and generator steps against a plain
reference loop, per Lipschitz method, in one run.

The reference is the loop a course solution writes: ``nn.Sequential`` models, the critic
wrapped in ``torch.nn.utils.parametrizations.spectral_norm`` (a power-iteration step and a
division at every critic forward) for spectral normalisation, separate critic forwards on
the real and the fake batch, the fake batch generated with autograd on and then detached,
weight clipping by a loop over ``p.data``, the gradient penalty as in Gulrajani et al.'s
code, and default (foreach) Adam. genlab's steps are
:func:`genlab.experiments.wgan.critic_step` and :func:`~genlab.experiments.wgan.generator_step`:
one critic forward for real and fake, the fake batch under ``no_grad``, spectral
normalisation applied in place once per critic step (:mod:`genlab.lipschitz`), fused Adam.

    genlab bench wgan --iterations 500 --json
    python benchmarks/bench_wgan.py --iterations 500
"""

from __future__ import annotations

import time

import torch
from torch import nn

from genlab.benchmarks.common import add_device_argument, add_json_argument, machine_info, parser_for, report
from genlab.engine import resolve_device
from genlab.experiments import wgan

METHODS = ("spectral-norm", "weight-clip", "gradient-penalty")


def _setup(config: wgan.WGANConfig, device: torch.device):
    torch.manual_seed(0)
    data = wgan.target_distribution(config).sample((config.target_samples,)).to(device)
    latent = torch.distributions.Independent(
        torch.distributions.Normal(torch.zeros(config.latent_dim, device=device),
                                   torch.ones(config.latent_dim, device=device)), 1)
    return data, latent


def time_reference(config: wgan.WGANConfig, method: str, iterations: int, warmup: int, device: torch.device) -> float:
    """Critic iterations per second of the reference loop."""
    data, latent = _setup(config, device)
    h = config.critic_hidden
    generator = nn.Sequential(nn.Linear(config.latent_dim, config.generator_hidden), nn.ReLU(),
                              nn.Linear(config.generator_hidden, 2)).to(device)
    critic = nn.Sequential(nn.Linear(2, h), nn.ReLU(), nn.Linear(h, 1)).to(device)
    if method == "spectral-norm":
        critic[0] = nn.utils.parametrizations.spectral_norm(critic[0])
        critic[2] = nn.utils.parametrizations.spectral_norm(critic[2])
    opt_g = torch.optim.Adam(generator.parameters(), lr=config.lr_generator, betas=config.betas)
    opt_c = torch.optim.Adam(critic.parameters(), lr=config.lr_critic, betas=config.betas)
    b = config.batch_size

    def iteration(real: torch.Tensor, k: int) -> None:
        fake = generator(latent.sample((b,))).detach()
        loss = critic(fake).mean() - critic(real).mean()
        if method == "gradient-penalty":
            eps = torch.rand(b, 1, device=device)
            x_hat = (eps * real + (1 - eps) * fake).requires_grad_(True)
            grad = torch.autograd.grad(critic(x_hat), x_hat, grad_outputs=torch.ones(b, 1, device=device),
                                       create_graph=True)[0]
            loss = loss + config.gp_weight * ((grad.norm(2, dim=1) - 1) ** 2).mean()
        opt_c.zero_grad()
        loss.backward()
        opt_c.step()
        if method == "weight-clip":
            for p in critic.parameters():
                p.data.clamp_(-config.clip, config.clip)
        if k % config.n_critic == 0:
            loss_g = -critic(generator(latent.sample((b,)))).mean()
            opt_g.zero_grad()
            loss_g.backward()
            opt_g.step()

    return _iterations_per_second(iteration, data, b, iterations, warmup)


def time_genlab(config: wgan.WGANConfig, method: str, iterations: int, warmup: int, device: torch.device) -> float:
    """Critic iterations per second of genlab's steps."""
    data, latent = _setup(config, device)
    generator, critic, opt_g, opt_c, normalizer = wgan.build(config, method, device)

    def iteration(real: torch.Tensor, k: int) -> None:
        wgan.critic_step(generator, critic, opt_c, normalizer, real, latent, method, config)
        if k % config.n_critic == 0:
            wgan.generator_step(generator, critic, opt_g, latent, config.batch_size)

    return _iterations_per_second(iteration, data, config.batch_size, iterations, warmup)


def _iterations_per_second(iteration, data: torch.Tensor, batch_size: int, iterations: int, warmup: int) -> float:
    """Runs ``iteration(real, k)`` for k < warmup + iterations on batches drawn with replacement
    from ``data`` and returns the timed iterations (those after ``warmup``) per second."""
    start = None
    for k in range(warmup + iterations):
        if k == warmup:
            start = time.perf_counter()
        iteration(data[torch.randint(len(data), (batch_size,), device=data.device)], k)
    return iterations / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> dict:
    parser = parser_for("wgan", __doc__)
    parser.add_argument("--iterations", type=int, default=500, help="timed critic iterations per loop")
    parser.add_argument("--warmup", type=int, default=20, help="untimed iterations first")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--hidden", type=int, default=128, help="hidden width of both networks")
    add_device_argument(parser, default="cpu")
    add_json_argument(parser)
    args = parser.parse_args(argv)
    device = resolve_device(args.device)
    config = wgan.WGANConfig(batch_size=args.batch_size, generator_hidden=args.hidden, critic_hidden=args.hidden)
    result = {"iterations": args.iterations, "batch_size": args.batch_size, "hidden": args.hidden,
              "device": str(device), **machine_info(), "methods": {}}
    for method in METHODS:
        ref = time_reference(config, method, args.iterations, args.warmup, device)
        ours = time_genlab(config, method, args.iterations, args.warmup, device)
        result["methods"][method] = {"reference_iterations_per_s": round(ref, 1),
                                     "genlab_iterations_per_s": round(ours, 1), "ratio": round(ours / ref, 2)}
    return report(result, args.json, "\n".join(
        f"{method:17s} reference {r['reference_iterations_per_s']:8.1f} it/s   "
        f"genlab {r['genlab_iterations_per_s']:8.1f} it/s   ratio {r['ratio']:.2f}x"
        for method, r in result["methods"].items()))
