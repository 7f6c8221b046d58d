"""SPEC §7: the REINFORCE update against autograd, the estimator against the exact gradient,
and the experiment through the real CLI."""


import pytest
import torch

from conftest import genlab_here
from genlab.record import Record
from genlab.experiments.bandit import (BanditConfig, exact_gradient, expected_reward, reinforce_update,
                                       score_function_estimate, train)

F64 = torch.float64


@pytest.mark.parametrize("arm", [0, 1, 3])
def test_update_coordinates_match_formula_and_autograd(arm):
    theta = torch.tensor([0.3, -1.2, 2.0, 0.0, 0.7], dtype=F64)
    eta, reward = 0.37, 1.9
    delta = reinforce_update(theta, torch.tensor(arm), torch.tensor(reward, dtype=F64), eta)
    pi = torch.softmax(theta, 0)
    # the sampled arm: eta R (1 - pi(a_i)); every other arm j: -eta R pi(a_j)
    assert delta[arm].item() == pytest.approx(eta * reward * (1 - pi[arm].item()), rel=1e-14)
    others = [j for j in range(5) if j != arm]
    torch.testing.assert_close(delta[others], -eta * reward * pi[others], rtol=1e-14, atol=0)
    leaf = theta.clone().requires_grad_(True)
    (eta * reward * torch.log_softmax(leaf, 0)[arm]).backward()
    torch.testing.assert_close(delta, leaf.grad, rtol=1e-13, atol=1e-15)
    assert delta.sum().item() == pytest.approx(0.0, abs=1e-14)  # softmax is shift-invariant


def test_batched_update_matches_autograd_per_row():
    theta = torch.randn(7, 4, dtype=F64, generator=torch.Generator().manual_seed(3))
    arms = torch.tensor([0, 1, 2, 3, 3, 2, 0])
    rewards = torch.linspace(-1, 2, 7, dtype=F64)
    leaf = theta.clone().requires_grad_(True)
    (0.5 * rewards * torch.log_softmax(leaf, 1)[torch.arange(7), arms]).sum().backward()
    torch.testing.assert_close(reinforce_update(theta, arms, rewards, 0.5), leaf.grad, rtol=1e-13, atol=1e-15)


def test_exact_gradient_matches_autograd():
    theta = torch.tensor([0.5, -0.3, 1.1], dtype=F64)
    rewards = torch.tensor([1.0, 0.2, -0.4], dtype=F64)
    leaf = theta.clone().requires_grad_(True)
    expected_reward(leaf, rewards).backward()
    torch.testing.assert_close(exact_gradient(theta, rewards), leaf.grad, rtol=1e-14, atol=1e-16)


def test_score_function_estimate_is_unbiased():
    theta = torch.tensor([0.5, -0.3, 1.1, 0.0], dtype=F64)
    rewards = torch.tensor([1.0, 0.6, 0.2, 0.9], dtype=F64)
    mean, stderr = score_function_estimate(theta, rewards, 400_000, torch.Generator().manual_seed(0))
    exact = exact_gradient(theta, rewards)
    assert ((mean - exact).abs() / stderr).max() < 4.5  # within MC error
    assert (mean - exact).abs().max() < 3e-3
    assert stderr.max() < 1e-3  # and the test has power: the gradient entries are ~1e-1


def test_reward_baseline_leaves_the_expectation_unchanged():
    theta = torch.tensor([0.2, -0.5, 0.9], dtype=F64)
    rewards = torch.tensor([1.0, 0.5, 0.1], dtype=F64)
    pi = torch.softmax(theta, 0)
    b = 0.7
    mean_with = sum(pi[a] * reinforce_update(theta, torch.tensor(a), rewards[a] - b, 1.0) for a in range(3))
    torch.testing.assert_close(mean_with, exact_gradient(theta, rewards), rtol=1e-13, atol=1e-15)


@pytest.mark.parity
def test_training_is_reproducible_and_baseline_beats_constant():
    config = BanditConfig(steps=300, seeds=40, variants=("constant", "baseline"))
    a, b = train("constant", config, 300), train("constant", config, 300)
    assert torch.equal(a["p_best"], b["p_best"])
    baseline = train("baseline", config, 300)
    assert a["p_best"].shape == (301, 40) and a["theta"].shape == (301, 5)
    torch.testing.assert_close(a["p_best"][0], torch.full((40,), 0.2, dtype=F64))
    assert baseline["p_best"][-1].mean() > a["p_best"][-1].mean()


def test_cli_smoke(tmp_path):
    out = tmp_path / "run"
    genlab_here("run", "bandit", "--steps", "50", "--seeds", "4", "--estimator-samples", "2000", "--out", str(out))
    for name in ("config.json", "env.json", "metrics.json", "summary.md", "metrics/p_best.csv",
                 "metrics/theta_first_seed.csv", "figures/p_best.png", "figures/theta.png"):
        assert (out / name).is_file(), name
    record = Record.read(out)
    metrics = record.extra
    assert record.metric("final_p_best_adam").value == metrics["variants"]["adam"]["final_p_best_mean"]
    assert set(metrics["variants"]) == {"constant", "decaying", "baseline", "adam"}
    assert metrics["maths"]["update_vs_autograd_max_abs_error"] < 1e-12
