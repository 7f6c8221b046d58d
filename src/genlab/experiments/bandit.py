"""SPEC §7: REINFORCE on a k-armed softmax bandit (Williams 1992).

The policy is pi = softmax(theta) over k arms with rewards R_1..R_k. Sampling arm a_i and
observing R_i gives the REINFORCE update (:func:`reinforce_update`)

    Δtheta = eta R_i ∇_theta log pi(a_i) = eta R_i (e_i - pi),

whose i-th coordinate is eta R_i (1 - pi(a_i)) and whose others are -eta R_i pi(a_j). Its
expectation is eta ∇J with J(theta) = Σ_j pi_j R_j and ∇J = pi ⊙ (R - J) (:func:`exact_gradient`).

Four variants, each run for ``--seeds`` independent seeds at once (one row of theta per seed):

- ``constant``: a constant, large step eta. With positive rewards every sampled arm is pushed
  up, so an early lucky draw of a poor arm can lock the policy onto it.
- ``decaying``: eta_t = eta / (1 + t / decay_steps) (Robbins-Monro steps).
- ``baseline``: eta (R - b) (e_i - pi), b a running mean of the rewards (Williams 1992, §4):
  the same expectation, lower variance, and a below-average arm is pushed down.
- ``adam``: Adam (Kingma and Ba 2015) on the loss -R log pi(a_i), whose gradient is -Δtheta / eta.

It reads no data and has no epochs (``--epochs`` and ``--data-dir`` are refused as unknown
options); ``--max-steps`` caps ``--steps``; ``--resume`` runs it again (seconds, deterministic).

    genlab run bandit
    genlab run bandit --rewards 1 0.9 0.2 --lr 2 --seeds 100
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch

from genlab.engine import RunConfig
from genlab.errors import ConfigError
from genlab.experiments import one_shot
from genlab.record import Record
from genlab.reports import bandit as report
from genlab.tables import write_csv

VARIANTS = ("constant", "decaying", "baseline", "adam")


@dataclass
class BanditConfig(RunConfig):
    """SPEC §7 defaults: 5 arms, 2,000 steps, 50 seeds."""

    rewards: tuple[float, ...] = (1.0, 0.8, 0.6, 0.4, 0.2)
    """Mean reward R_i of each arm (the first maximal one is 'the best arm')."""
    reward_noise: float = 0.0
    """Standard deviation of Gaussian noise added to each observed reward (0: deterministic)."""
    variants: tuple[str, ...] = VARIANTS
    """Update rules to compare: constant, decaying, baseline, adam."""
    steps: int = 2000
    """REINFORCE steps per seed (capped by --max-steps)."""
    seeds: int = 50
    """Independent runs per variant: the rows of one vectorised loop, drawn from one generator seeded by --seed."""
    lr: float = 5.0
    """Step size eta of the constant, decaying and baseline variants (large, on purpose)."""
    decay_steps: float = 10.0
    """decaying: eta_t = lr / (1 + t / decay_steps)."""
    baseline_momentum: float = 0.9
    """baseline: b <- m b + (1 - m) R after each step (b starts at 0)."""
    adam_lr: float = 0.1
    """Adam learning rate of the adam variant."""
    estimator_samples: int = 200_000
    """Samples for the in-run check of the score-function estimator against the exact gradient."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if len(self.rewards) < 2:
            raise ConfigError(f"--rewards needs at least 2 arms, got {len(self.rewards)}")
        unknown = [variant for variant in self.variants if variant not in VARIANTS]
        if unknown:
            raise ConfigError(f"unknown variant {unknown[0]!r}; choose from {', '.join(VARIANTS)}")
        self.require(1, "steps", "seeds")
        self.require(0, "lr", "adam_lr", "decay_steps", above=True)
        if not 0 <= self.baseline_momentum < 1:
            raise ConfigError(f"--baseline-momentum must be in [0, 1), got {self.baseline_momentum}")
        self.require(0, "reward_noise")
        self.require(2, "estimator_samples")


# ---------------------------------------------------------------------------------------
# The maths
# ---------------------------------------------------------------------------------------

def score(theta: torch.Tensor, arm: torch.Tensor) -> torch.Tensor:
    """∇_theta log softmax(theta)[arm] = e_arm - softmax(theta).

    Args: theta (..., k) float; arm (...) int64 in [0, k).
    Returns: (..., k), same dtype as theta.
    """
    one_hot = torch.nn.functional.one_hot(arm, theta.shape[-1]).to(theta.dtype)
    return one_hot - torch.softmax(theta, dim=-1)


def reinforce_update(theta: torch.Tensor, arm: torch.Tensor, reward: torch.Tensor, eta: float | torch.Tensor
                     ) -> torch.Tensor:
    """The REINFORCE step Δtheta = eta R ∇ log pi(arm) (Williams 1992, eq. 11, one sample).

    Args: theta (..., k); arm (...) int64; reward (...) (use R - b for a baseline); eta a
    scalar or broadcastable to (...).
    Returns: Δtheta (..., k).
    """
    return (torch.as_tensor(eta, dtype=theta.dtype) * reward).unsqueeze(-1) * score(theta, arm)


def expected_reward(theta: torch.Tensor, rewards: torch.Tensor) -> torch.Tensor:
    """J(theta) = Σ_j softmax(theta)_j R_j. theta (..., k), rewards (k,) -> (...)."""
    return (torch.softmax(theta, dim=-1) * rewards).sum(-1)


def exact_gradient(theta: torch.Tensor, rewards: torch.Tensor) -> torch.Tensor:
    """∇J(theta) = pi ⊙ (R - J) in closed form. theta (..., k), rewards (k,) -> (..., k)."""
    pi = torch.softmax(theta, dim=-1)
    return pi * (rewards - expected_reward(theta, rewards).unsqueeze(-1))


def score_function_estimate(theta: torch.Tensor, rewards: torch.Tensor, n: int, generator: torch.Generator
                            ) -> tuple[torch.Tensor, torch.Tensor]:
    """Monte-Carlo score-function estimate of ∇J: (1/n) Σ R(a_s) (e_{a_s} - pi), a_s ~ pi.

    Args: theta (k,), rewards (k,), n samples.
    Returns: (mean (k,), standard error (k,)) of the n single-sample estimates.
    """
    pi = torch.softmax(theta, dim=-1)
    arms = torch.multinomial(pi, n, replacement=True, generator=generator)  # (n,)
    samples = rewards[arms].unsqueeze(-1) * score(theta.expand(n, -1), arms)  # (n, k)
    return samples.mean(0), samples.std(0) / math.sqrt(n)


# ---------------------------------------------------------------------------------------
# Training: every seed in one (S, k) tensor
# ---------------------------------------------------------------------------------------

def train(variant: str, config: BanditConfig, steps: int) -> dict[str, torch.Tensor]:
    """Run one variant for ``config.seeds`` seeds from the uniform policy (theta = 0).

    Returns float64 tensors: ``p_best`` (steps + 1, S) and ``expected_reward`` (steps + 1, S)
    after each step (row 0: the start), ``theta`` (steps + 1, k) of the first seed, ``arms``
    (steps, S) int64, ``final_pi`` (S, k); and ``pi`` (steps + 1, S, k) float32.
    """
    rewards = torch.tensor(config.rewards, dtype=torch.float64)
    generator = torch.Generator().manual_seed(config.seed)  # the same draws' randomness per variant
    theta = torch.zeros(config.seeds, len(rewards), dtype=torch.float64)
    if variant == "adam":
        theta = torch.nn.Parameter(theta)
        optimizer = torch.optim.Adam([theta], lr=config.adam_lr)
    baseline = torch.zeros(config.seeds, dtype=torch.float64)
    thetas, arms = [theta.detach().clone()], []
    for t in range(steps):
        with torch.no_grad():
            arm = torch.multinomial(torch.softmax(theta, dim=-1), 1, generator=generator).squeeze(1)  # (S,)
            reward = rewards[arm]
            if config.reward_noise > 0:
                reward = reward + config.reward_noise * torch.randn(config.seeds, generator=generator,
                                                                    dtype=torch.float64)
        if variant == "constant":
            theta += reinforce_update(theta, arm, reward, config.lr)
        elif variant == "decaying":
            theta += reinforce_update(theta, arm, reward, config.lr / (1 + t / config.decay_steps))
        elif variant == "baseline":
            theta += reinforce_update(theta, arm, reward - baseline, config.lr)
            baseline = config.baseline_momentum * baseline + (1 - config.baseline_momentum) * reward
        elif variant == "adam":
            # gradient of the surrogate loss -R log pi(a): -R (e_a - pi)
            theta.grad = -reinforce_update(theta.detach(), arm, reward, 1.0)
            optimizer.step()
        thetas.append(theta.detach().clone())
        arms.append(arm)
    thetas = torch.stack(thetas)  # (T+1, S, k)
    pi = torch.softmax(thetas, dim=-1)
    p_best = pi[..., int(torch.argmax(rewards))].contiguous()  # (T+1, S); contiguous rows sum in one fixed order
    return {"p_best": p_best, "expected_reward": expected_reward(thetas, rewards), "theta": thetas[:, 0],
            "arms": torch.stack(arms), "final_pi": pi[-1], "pi": pi.float()}


def worse_arm_mass(pi: torch.Tensor, best: int) -> torch.Tensor:
    """The largest probability on an arm other than ``best``: pi (..., k) -> (...); above 0.9
    the policy is locked on a worse arm."""
    return torch.cat([pi[..., :best], pi[..., best + 1:]], dim=-1).amax(-1)


def check_maths(config: BanditConfig) -> dict:
    """The closed forms beside autograd and Monte Carlo, at a random theta (recorded in metrics)."""
    rewards = torch.tensor(config.rewards, dtype=torch.float64)
    generator = torch.Generator().manual_seed(config.seed + 1)
    theta = torch.randn(len(rewards), dtype=torch.float64, generator=generator)
    # (1) the update formula vs autograd of eta R log pi(a), for every arm
    errors = []
    for arm in range(len(rewards)):
        leaf = theta.clone().requires_grad_(True)
        (config.lr * rewards[arm] * torch.log_softmax(leaf, -1)[arm]).backward()
        errors.append((leaf.grad - reinforce_update(theta, torch.tensor(arm), rewards[arm], config.lr)).abs().max())
    # (2) the score-function estimate vs the exact gradient (and autograd of J)
    leaf = theta.clone().requires_grad_(True)
    expected_reward(leaf, rewards).backward()
    exact = exact_gradient(theta, rewards)
    mean, stderr = score_function_estimate(theta, rewards, config.estimator_samples, generator)
    return {
        "theta": theta.tolist(),
        "update_vs_autograd_max_abs_error": max(e.item() for e in errors),
        "exact_gradient": exact.tolist(),
        "exact_gradient_vs_autograd_max_abs_error": (leaf.grad - exact).abs().max().item(),
        "score_function_estimate": mean.tolist(),
        "score_function_standard_error": stderr.tolist(),
        "score_function_max_z": ((mean - exact).abs() / stderr).max().item(),
        "estimator_samples": config.estimator_samples,
    }


def compute(config: BanditConfig, out: Path) -> Record:
    """Train every variant for every seed, write the per-step tables and the figures under
    ``out``; returns the record (see the module docstring)."""
    steps = min(config.steps, config.max_steps or config.steps)
    best = int(torch.argmax(torch.tensor(config.rewards)))
    checkpoints = sorted({t for t in (0, 10, 100, 1000, steps) if t <= steps})
    results, per_variant, rows = {}, {}, []
    for variant in config.variants:
        r = results[variant] = train(variant, config, steps)
        p = r["p_best"]  # (T+1, S)
        curve = [{"variant": variant, "step": t, "p_best_mean": p[t].mean().item(),
                  "p_best_std": p[t].std().item() if config.seeds > 1 else 0.0,
                  "p_best_q10": p[t].quantile(0.1).item(), "p_best_q90": p[t].quantile(0.9).item(),
                  "expected_reward_mean": r["expected_reward"][t].mean().item()} for t in range(steps + 1)]
        rows += curve
        per_variant[variant] = {
            "final_p_best_mean": curve[-1]["p_best_mean"], "final_p_best_std": curve[-1]["p_best_std"],
            "seeds_converged_to_best": int((p[-1] > 0.9).sum()),
            "seeds_locked_on_worse_arm": int((worse_arm_mass(r["final_pi"], best) > 0.9).sum()),
            "final_expected_reward_mean": curve[-1]["expected_reward_mean"],
            "mean_expected_reward": r["expected_reward"].mean().item(),
            "best_arm_pulls": float((r["arms"] == best).double().mean()),
            "p_best_at": [curve[t]["p_best_mean"] for t in checkpoints],
            "theta_first_seed_final": r["theta"][-1].tolist(),
        }
    write_csv(out / "metrics" / "p_best.csv", rows)
    shown = "constant" if "constant" in results else next(iter(results))  # the variant whose theta is drawn
    theta = results[shown]["theta"]
    write_csv(out / "metrics" / "theta_first_seed.csv",
              [{"variant": shown, "step": t, **{f"theta_{i + 1}": v for i, v in enumerate(theta[t].tolist())}}
               for t in range(steps + 1)])
    report.plot_p_best(results, config, worse_arm_mass, out / "figures" / "p_best.png")
    report.plot_theta(theta, config, shown, out / "figures" / "theta.png")
    return report.make_record(config, {"steps": steps, "best_arm": best + 1, "checkpoints": checkpoints,
                                       "variants": per_variant, "maths": check_maths(config)})


EXPERIMENT = one_shot("bandit", "SPEC §7: REINFORCE on a softmax bandit: constant, decaying, baseline and Adam "
                      "steps over seeds", BanditConfig, compute, report.CAPTIONS)
