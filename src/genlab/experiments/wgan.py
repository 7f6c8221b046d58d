"""SPEC §3: a Wasserstein GAN (Arjovsky et al. 2017) on a 2-D mixture of Gaussians, with
the critic's Lipschitz constant controlled four ways (see :mod:`genlab.lipschitz`).

    generator  h(w) = X2 relu(X1 w + x1) + x2,   w ~ N(0, I)
    critic     d(a) = Y2 relu(Y1 a + y1) + y2
    min_h max_d  E[d(a)] - E[d(h(w))]

The critic is updated every iteration k, the generator when k mod 5 == 0, each with Adam,
betas (0.0, 0.9). After each critic step its weights are spectrally normalised in place
(``spectral-norm``) or clipped (``weight-clip``); ``gradient-penalty`` and
``spectral-regularization`` add a penalty to the critic's loss instead. Every method in
``--lipschitz`` trains from the same initial weights, noise and target sample (one seed),
and the run ends with a table comparing them by exact Wasserstein-1 distance to the target
(``ot.emd2``, 2,000 vs 2,000 samples), modes covered and the share of samples within 3
standard deviations of a mode (figures and record: :mod:`genlab.reports.wgan`).

    genlab run wgan                                     # the four methods (METHODS), 30,000 iterations
    genlab run wgan --lipschitz spectral-norm --iterations 200 --out /tmp/smoke
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from genlab.engine import CurrentUnit, Run, RunConfig, TrainingDiverged, resolve_device, seed_everything
from genlab.errors import ConfigError
from genlab.experiments import Experiment
from genlab.lipschitz import SpectralNormalizer, clip_weights_, gradient_penalty
from genlab.record import Record
from genlab.reports.wgan import finish

Lipschitz = Literal["spectral-norm", "weight-clip", "gradient-penalty", "spectral-regularization"]
METHODS = ("spectral-norm", "weight-clip", "gradient-penalty", "spectral-regularization")


@dataclass
class WGANConfig(RunConfig):
    """SPEC §3 defaults."""

    lipschitz: tuple[Lipschitz, ...] = METHODS
    """Lipschitz control(s) of the critic; each one trains its own generator and critic from
    the same seed (spectral-regularization is the fourth, beyond SPEC §3)."""
    target: Literal["circle", "grid"] = "circle"
    """Mixture: modes evenly on a circle, or a 5 x 5 grid at {-2, ..., 2}^2."""
    modes: int = 8
    """Number of modes on the circle (the grid always has 25)."""
    radius: float = 2.0
    """Radius of the circle of modes."""
    std: float = 0.02
    """Standard deviation of each mode (isotropic)."""
    target_samples: int = 10000
    """Size of the fixed empirical target sample that training draws minibatches from."""
    latent_dim: int = 2
    """Dimension of w ~ N(0, I)."""
    generator_hidden: int = 128
    """Hidden width of the generator."""
    critic_hidden: int = 128
    """Hidden width of the critic."""
    iterations: int = 30000
    """Critic iterations k (the generator steps when k mod n_critic == 0)."""
    n_critic: int = 5
    """Critic steps per generator step."""
    batch_size: int = 256
    """Samples per minibatch (target and generated)."""
    lr_generator: float = 1e-3
    """Adam learning rate of the generator."""
    lr_critic: float = 1e-3
    """Adam learning rate of the critic."""
    betas: tuple[float, float] = (0.0, 0.9)
    """Adam betas, both optimisers."""
    clip: float = 0.01
    """weight-clip: every critic parameter clamped to [-clip, clip] (Arjovsky et al.)."""
    gp_weight: float = 10.0
    """gradient-penalty: lambda (Gulrajani et al.)."""
    sr_weight: float = 1.0
    """spectral-regularization: lambda of (lambda / 2) sum_l sigma_l^2."""
    power_iterations: int = 1
    """Power-iteration steps per critic step (spectral norm and regularisation)."""
    eval_samples: int = 2000
    """Generated and held-out target samples for the final exact W1 (ot.emd2) and mode counts."""
    curve_samples: int = 500
    """Samples per side for the exact W1 tracked during training (cheaper than eval_samples)."""
    w1_every: int = 1000
    """Iterations between exact W1 measurements during training."""
    snapshots: int = 5
    """Points in training shown in the figure (evenly spaced, first and last included)."""
    min_mode_samples: int = 20
    """A mode counts as covered when at least this many of the eval samples are within 3 std of it."""
    log_every: int = 50
    """Iterations averaged into one row of metrics/steps.jsonl."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.lipschitz or any(m not in METHODS for m in self.lipschitz):
            raise ConfigError(f"--lipschitz must be one or more of {', '.join(METHODS)}, got {self.lipschitz}")
        if len(set(self.lipschitz)) != len(self.lipschitz):
            raise ConfigError(f"--lipschitz lists a method twice: {self.lipschitz}")
        if self.target not in ("circle", "grid"):
            raise ConfigError(f"--target must be circle or grid, got {self.target!r}")
        self.require(1, "modes", "target_samples", "latent_dim", "generator_hidden", "critic_hidden", "iterations",
                     "n_critic", "batch_size", "eval_samples", "curve_samples", "w1_every", "log_every",
                     "power_iterations", "min_mode_samples")
        self.require(0, "std", "clip", above=True)
        self.require(2, "snapshots")
        if self.max_steps is not None:
            self.iterations = min(self.iterations, self.max_steps)


# ---------------------------------------------------------------------------------------
# Target and models
# ---------------------------------------------------------------------------------------

def mode_centres(config: WGANConfig) -> torch.Tensor:
    """(K, 2) float32 mode centres: K points on the circle (angle 2 pi k / K) or the 5 x 5 grid."""
    if config.target == "grid":
        g = torch.arange(-2.0, 3.0)
        return torch.cartesian_prod(g, g)  # (25, 2)
    angles = 2 * math.pi * torch.arange(config.modes) / config.modes
    return config.radius * torch.stack([torch.cos(angles), torch.sin(angles)], dim=1)  # (K, 2)


def target_distribution(config: WGANConfig) -> torch.distributions.Distribution:
    """The mixture: equal weights, N(centre_k, std^2 I) components, event shape (2,)."""
    centres = mode_centres(config)
    return torch.distributions.MixtureSameFamily(
        torch.distributions.Categorical(torch.ones(len(centres))),
        torch.distributions.Independent(torch.distributions.Normal(centres, config.std), 1))


class MLP(nn.Module):
    """One hidden layer: (N, d_in) -> W2 relu(W1 x + b1) + b2 -> (N, d_out)."""

    def __init__(self, d_in: int, hidden: int, d_out: int):
        super().__init__()
        self.hidden = nn.Linear(d_in, hidden)  # W1, b1: X1, x1 (generator) or Y1, y1 (critic)
        self.out = nn.Linear(hidden, d_out)  # W2, b2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(torch.relu(self.hidden(x)))  # (N, d_out)


def build(config: WGANConfig, method: str, device: torch.device):
    """Generator (latent_dim -> 2), critic (2 -> 1), their Adam optimisers and, for the
    spectral methods, the :class:`SpectralNormalizer` of the critic's two weights."""
    generator = MLP(config.latent_dim, config.generator_hidden, 2).to(device)
    critic = MLP(2, config.critic_hidden, 1).to(device)
    fused = device.type in ("cpu", "cuda")
    opt_g = torch.optim.Adam(generator.parameters(), lr=config.lr_generator, betas=config.betas, fused=fused)
    opt_c = torch.optim.Adam(critic.parameters(), lr=config.lr_critic, betas=config.betas, fused=fused)
    normalizer = None
    if method in ("spectral-norm", "spectral-regularization"):
        normalizer = SpectralNormalizer([critic.hidden, critic.out], config.power_iterations,
                                        torch.Generator().manual_seed(config.seed + 7))
    if method == "spectral-norm":
        normalizer.normalize_()  # start 1-Lipschitz
    elif method == "weight-clip":
        clip_weights_(critic.parameters(), config.clip)
    return generator, critic, opt_g, opt_c, normalizer


# ---------------------------------------------------------------------------------------
# Evaluation: exact W1, modes
# ---------------------------------------------------------------------------------------

def wasserstein1(x: np.ndarray, y: np.ndarray) -> float:
    """Exact W1 between the empirical measures of x (N, 2) and y (M, 2), uniform weights,
    Euclidean ground cost: the optimal-transport linear program solved by ``ot.emd2``."""
    import ot

    cost = ot.dist(x.astype(np.float64), y.astype(np.float64), metric="euclidean")
    return float(ot.emd2(np.full(len(x), 1 / len(x)), np.full(len(y), 1 / len(y)), cost, numItermax=10**7))


def mode_statistics(samples: torch.Tensor, centres: torch.Tensor, std: float, min_samples: int) -> dict:
    """High-quality share (distance to the nearest centre <= 3 std), modes covered (at least
    ``min_samples`` high-quality samples) and samples per mode. samples (N, 2), centres (K, 2)."""
    dist = torch.cdist(samples.float(), centres.float())  # (N, K)
    nearest, which = dist.min(dim=1)
    good = nearest <= 3 * std
    counts = torch.bincount(which[good], minlength=len(centres))
    return {"high_quality_share": float(good.float().mean()), "modes_covered": int((counts >= min_samples).sum()),
            "modes": len(centres), "samples_per_mode": counts.tolist()}


def sampling_floor(config: WGANConfig, data: torch.Tensor, holdout: torch.Tensor) -> tuple[dict, float]:
    """The floor of the generators' scores: what samples of the target itself score.

    ``data``: the fixed empirical target (target_samples, 2) on the CPU; ``holdout``: the held-out
    target samples (eval_samples, 2). Returns ({"w1": exact W1 of the first ``eval_samples`` of
    ``data`` vs ``holdout``, **:func:`mode_statistics` of ``holdout``}, exact W1 of the first
    ``curve_samples`` of each, the floor of the W1 curve tracked during training).
    """
    n = config.eval_samples
    floor = wasserstein1(data[:n].numpy(), holdout.numpy())
    curve_floor = wasserstein1(data[:config.curve_samples].numpy(), holdout[:config.curve_samples].numpy())
    target_stats = mode_statistics(holdout, mode_centres(config), config.std, config.min_mode_samples)
    return {"w1": floor, **target_stats}, curve_floor


# ---------------------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------------------

def critic_step(generator, critic, opt_c, normalizer, real, latent, method: str, config: WGANConfig) -> torch.Tensor:
    """One critic step: maximise E[d(a)] - E[d(h(w))] (minus the penalty), then the in-place
    Lipschitz projection. Returns the Wasserstein estimate E[d(a)] - E[d(h(w))] before the step."""
    n = real.shape[0]
    with torch.no_grad():
        fake = generator(latent.sample((n,)))  # (N, 2)
    out = critic(torch.cat([real, fake]))  # (2N, 1)
    estimate = out[:n].mean() - out[n:].mean()
    loss = -estimate
    if method == "gradient-penalty":
        loss = loss + config.gp_weight * gradient_penalty(critic, real, fake)
    elif method == "spectral-regularization":
        loss = loss + 0.5 * config.sr_weight * sum(s ** 2 for s in normalizer.sigmas())
    opt_c.zero_grad(set_to_none=True)
    loss.backward()
    opt_c.step()
    if method == "spectral-norm":
        normalizer.normalize_()
    elif method == "weight-clip":
        clip_weights_(critic.parameters(), config.clip)
    return estimate.detach()


def generator_step(generator, critic, opt_g, latent, n: int) -> torch.Tensor:
    """One generator step: minimise -E[d(h(w))] (the only term of the objective that depends on h)."""
    critic.requires_grad_(False)
    loss = -critic(generator(latent.sample((n,)))).mean()
    opt_g.zero_grad(set_to_none=True)
    loss.backward()
    opt_g.step()
    critic.requires_grad_(True)
    return loss.detach()


@torch.no_grad()
def critic_on_grid(critic: nn.Module, lim: float, n: int = 120) -> np.ndarray:
    """Critic values on an n x n grid over [-lim, lim]^2 (rows: y, columns: x), float (n, n)."""
    device = next(critic.parameters()).device
    g = torch.linspace(-lim, lim, n, device=device)
    yy, xx = torch.meshgrid(g, g, indexing="ij")
    return critic(torch.stack([xx.flatten(), yy.flatten()], dim=1)).reshape(n, n).cpu().numpy()


def train_method(config: WGANConfig, method: str, index: int, data: torch.Tensor, holdout: torch.Tensor,
                 lim: float, run: Run, unit: CurrentUnit, done: dict) -> dict:
    """Train one generator/critic pair with the Lipschitz control ``method``, the ``index``-th of
    ``--lipschitz``, held by ``unit`` (resumed where a checkpoint inside it left off; ``done``, the
    finished methods' results, is checkpointed with it). Returns the critic estimates
    (iterations,), snapshots, exact-W1 curve [(iteration, W1)] and the final evaluation."""
    device, n = run.device, config.iterations
    seed_everything(config.seed)  # the same initial weights, noise and minibatches for every method
    generator, critic, opt_g, opt_c, normalizer = build(config, method, device)
    state = unit.start(method, {"k": 0, "estimates": torch.zeros(n), "snapshots": {}, "w1_curve": [], "rows": [],
                                "started_s": run.elapsed_s},
                       generator=generator, critic=critic, opt_g=opt_g, opt_c=opt_c,
                       **({"normalizer": normalizer} if normalizer else {}))
    zeros = torch.zeros(config.latent_dim, device=device)
    latent = torch.distributions.Independent(torch.distributions.Normal(zeros, torch.ones_like(zeros)), 1)
    snap_at = {round(i * n / (config.snapshots - 1)) for i in range(config.snapshots)}
    eval_z = torch.randn(config.eval_samples, config.latent_dim,
                         generator=torch.Generator().manual_seed(config.seed + 3))
    estimates, snapshots, w1_curve, rows = state["estimates"], state["snapshots"], state["w1_curve"], state["rows"]

    @torch.no_grad()
    def generated(count: int) -> torch.Tensor:  # (count, 2), from the first count evaluation latents
        return generator(eval_z[:count].to(device)).cpu()

    def measure(k: int) -> None:  # the snapshot and the exact W1 due at iteration k (both at the end)
        if k in snap_at:
            snapshots[k] = {"fake": generated(1000), "critic": torch.from_numpy(critic_on_grid(critic, lim)).float()}
        if k % config.w1_every == 0 or k == n:
            w1_curve.append((k, wasserstein1(generated(config.curve_samples).numpy(),
                                             holdout[:config.curve_samples].numpy())))

    for k in tqdm(range(state["k"], n), initial=state["k"], total=n, desc=f"wgan {method}", dynamic_ncols=True,
                  disable=None, mininterval=2):
        measure(k)
        real = data[torch.randint(len(data), (config.batch_size,), device=device)]  # (B, 2)
        estimates[k] = critic_step(generator, critic, opt_c, normalizer, real, latent, method, config)
        if k % config.n_critic == 0:
            generator_step(generator, critic, opt_g, latent, config.batch_size)
        if (k + 1) % config.log_every == 0:
            window = estimates[k + 1 - config.log_every:k + 1]
            if not torch.isfinite(window).all():
                raise TrainingDiverged(f"{method}: non-finite Wasserstein estimate at iteration {k}; "
                                       "lower the learning rates")
            rows.append({"step": k + 1, f"{method}/wasserstein_estimate": float(window.mean())})
        state["k"] = k + 1
        run.step_done(index * n + k + 1, index, lambda: {"done": done})
    measure(n)
    run.log_steps(rows + [{"step": k, f"{method}/w1_exact_{config.curve_samples}": w} for k, w in w1_curve])
    elapsed = run.elapsed_s - state["started_s"]
    fake = generated(config.eval_samples)
    result = {"method": method, "w1": wasserstein1(fake.numpy(), holdout.numpy()),
              **mode_statistics(fake, mode_centres(config), config.std, config.min_mode_samples),
              "final_estimate": float(estimates[-config.log_every:].mean()), "seconds": elapsed,
              "iterations_per_s": n / elapsed}
    if normalizer is not None:
        with torch.no_grad():
            result["critic_spectral_norms"] = [float(torch.linalg.matrix_norm(m.weight, 2)) for m in normalizer.modules]
    tqdm.write(f"{method}: W1 {result['w1']:.4f}, modes {result['modes_covered']}/{result['modes']}, "
               f"high quality {result['high_quality_share']:.3f}, {result['iterations_per_s']:.0f} it/s")
    return {"estimates": estimates, "snapshots": snapshots, "w1_curve": w1_curve, "result": result}


def run(config: WGANConfig) -> Path:
    """Train every method of ``--lipschitz`` in turn; returns the run directory.

    Method i's iteration k is the run's step i * iterations + k + 1, its epoch the methods
    finished. The checkpoint holds the finished methods' results and the one in training (a
    :class:`CurrentUnit`), so ``--resume`` continues inside a method exactly.
    """
    device = resolve_device(config.device)
    unit = CurrentUnit()
    with Run("wgan", config, device, unit=unit) as run:
        seed_everything(config.seed)
        target = target_distribution(config)
        data = target.sample((config.target_samples,)).to(device)  # (target_samples, 2), the fixed empirical target
        holdout = target.sample((config.eval_samples,))  # (eval_samples, 2), fresh target samples for evaluation
        lim = (2.0 if config.target == "grid" else config.radius) + 1.0
        done = (run.resume() or {"done": {}})["done"]
        for index, method in enumerate(config.lipschitz):
            if method not in done:
                done[method] = train_method(config, method, index, data, holdout, lim, run, unit, done)
                unit.end()
                run.checkpoint((index + 1) * config.iterations, index + 1, {"done": done})
        data = data.cpu()
        target_vs_target, curve_floor = sampling_floor(config, data, holdout)
        finish(run.dir, config, done, data, lim, target_vs_target, curve_floor, run.elapsed_s)
    return run.path


def evaluate(run_path: Path) -> dict:
    """``genlab eval RUN_DIR``: the comparison of a finished run (its record's ``extra``)."""
    return Record.read(run_path).extra


EXPERIMENT = Experiment(
    name="wgan",
    summary="SPEC §3: WGAN on a 2-D Gaussian mixture; spectral norm vs weight clipping vs gradient penalty",
    config=WGANConfig,
    run=run,
    evaluate=evaluate,
)
