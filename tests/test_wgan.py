"""SPEC §3: spectral normalisation against torch, the gradient penalty by hand, the mixture,
the evaluation, and the real CLI."""

import math

import numpy as np
import pytest
import torch
from torch import nn

from conftest import genlab_here
from genlab.experiments.wgan import (MLP, WGANConfig, mode_centres, mode_statistics,
                                     target_distribution, wasserstein1)
from genlab.record import Record
from genlab.lipschitz import (SpectralNormalizer, clip_weights_, gradient_penalty, power_iteration,
                              spectral_normalize_)


@pytest.mark.parametrize("shape", [(128, 2), (1, 128), (64, 64)])
def test_power_iteration_estimates_the_largest_singular_value(shape):
    torch.manual_seed(0)
    w = torch.randn(shape, dtype=torch.float64)
    u = nn.functional.normalize(torch.randn(shape[0], dtype=torch.float64), dim=0)
    sigma, v = power_iteration(w, u, n_iterations=2000)
    expected = torch.linalg.matrix_norm(w, 2)
    torch.testing.assert_close(sigma, expected, rtol=1e-6, atol=0)
    torch.testing.assert_close(u, w @ v / torch.linalg.vector_norm(w @ v))  # u is updated in place
    # one step from a random u is a lower bound, as u^T W v <= ||W||_2 for unit u, v
    u0 = nn.functional.normalize(torch.randn(shape[0], dtype=torch.float64), dim=0)
    assert power_iteration(w, u0, 1)[0] <= expected + 1e-12


@pytest.mark.parity
def test_spectral_normalize_matches_torch_legacy_spectral_norm_step_by_step():
    """torch.nn.utils.spectral_norm follows Miyato et al.'s Algorithm 1 (persistent u):
    from the same W and u, one step gives the same u and the same W / sigma, step after step."""
    torch.manual_seed(1)
    layer = torch.nn.utils.spectral_norm(nn.Linear(5, 7), n_power_iterations=1)
    w = layer.weight_orig.detach().clone()
    u = layer.weight_u.detach().clone()
    for _ in range(3):
        ours = w.clone()
        spectral_normalize_(ours, u)
        layer(torch.zeros(1, 5))  # a training-mode forward runs torch's power iteration and sets .weight
        torch.testing.assert_close(u, layer.weight_u)
        torch.testing.assert_close(ours, layer.weight, rtol=1e-6, atol=1e-7)


@pytest.mark.parity
def test_spectral_normalize_agrees_with_parametrizations_spectral_norm():
    """torch.nn.utils.parametrizations.spectral_norm keeps v persistent (u <- Wv, v <- W^T u),
    half a step off Algorithm 1; on a fixed W both converge to the same W / ||W||_2."""
    torch.manual_seed(2)
    layer = torch.nn.utils.parametrizations.spectral_norm(nn.Linear(6, 9))
    w = layer.parametrizations.weight.original.detach().clone()
    u = nn.functional.normalize(torch.randn(9), dim=0)
    for _ in range(100):
        torch_weight = layer.weight  # training mode: one power-iteration step per access
    ours = w.clone()
    sigma = spectral_normalize_(ours, u, n_iterations=100)
    torch.testing.assert_close(ours, torch_weight.detach(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(sigma, torch.linalg.matrix_norm(w, 2), rtol=1e-5, atol=0)
    assert torch.linalg.matrix_norm(ours, 2).item() == pytest.approx(1.0, abs=1e-5)


def test_spectral_normalizer_makes_the_critic_1_lipschitz_in_place():
    torch.manual_seed(3)
    critic = MLP(2, 32, 1)
    weight_id = id(critic.hidden.weight)
    normalizer = SpectralNormalizer([critic.hidden, critic.out], n_iterations=1, generator=torch.Generator().manual_seed(0))
    for _ in range(50):  # persistent u: repeated calls converge, each one a single step
        sigmas = normalizer.normalize_()
    assert id(critic.hidden.weight) == weight_id  # the same Parameter, changed in place
    assert sigmas == pytest.approx([1.0, 1.0], abs=1e-4)
    for m in (critic.hidden, critic.out):
        assert torch.linalg.matrix_norm(m.weight.detach(), 2).item() == pytest.approx(1.0, abs=1e-4)
    a, b = torch.randn(1000, 2), torch.randn(1000, 2)  # then |d(a) - d(b)| <= ||a - b||
    with torch.no_grad():
        ratio = (critic(a) - critic(b)).abs().squeeze(1) / (a - b).norm(dim=1)
    assert ratio.max() <= 1 + 1e-4


def test_spectral_regularization_terms_have_the_gradient_sigma_u_vT():
    torch.manual_seed(4)
    layer = nn.Linear(4, 3)
    normalizer = SpectralNormalizer([layer], n_iterations=1)
    w, u_before = layer.weight.detach().clone(), normalizer.u[0].clone()
    (sigma,) = normalizer.sigmas()  # one step: v = W^T u / ||.||, u <- W v / ||.||, sigma = u^T W v
    v = nn.functional.normalize(w.T @ u_before, dim=0)
    u = normalizer.u[0]
    torch.testing.assert_close(sigma.detach(), torch.linalg.vector_norm(w @ v))
    (0.5 * sigma ** 2).backward()
    torch.testing.assert_close(layer.weight.grad, sigma.detach() * torch.outer(u, v))


def _hand_critic() -> MLP:
    critic = MLP(2, 2, 1)
    with torch.no_grad():
        critic.hidden.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 2.0]]))
        critic.hidden.bias.copy_(torch.tensor([0.0, -1.0]))
        critic.out.weight.copy_(torch.tensor([[3.0, 4.0]]))
        critic.out.bias.zero_()
    return critic


def test_gradient_penalty_by_hand_per_sample():
    """d(a) = [3, 4] relu([[1, 0], [0, 2]] a + [0, -1]). At x_hat = (1, 1) both units are
    active, grad = (3, 8); at (1, 0) only the first, grad = (3, 0). The penalty is the mean of
    the per-sample (||grad|| - 1)^2, not the squared norm of the batch-mean gradient."""
    critic = _hand_critic()
    real = torch.tensor([[2.0, 2.0], [1.0, 0.0]])
    fake = torch.tensor([[0.0, 0.0], [5.0, 5.0]])
    eps = torch.tensor([[0.5], [1.0]])  # x_hat = (1, 1) and (1, 0)
    gp = gradient_penalty(critic, real, fake, eps)
    expected = ((math.sqrt(73) - 1) ** 2 + (3 - 1) ** 2) / 2
    assert gp.item() == pytest.approx(expected, rel=1e-6)
    batch_norm_version = (math.hypot(3, 4) - 1) ** 2  # ||mean grad|| = ||(3, 4)|| = 5: what per-sample avoids
    assert abs(gp.item() - batch_norm_version) > 1
    gp.backward()  # the penalty is differentiable in the critic's parameters (double backward)
    assert critic.hidden.weight.grad is not None and torch.isfinite(critic.hidden.weight.grad).all()


def test_gradient_penalty_of_a_linear_critic_and_its_gradient():
    w = torch.tensor([[0.6, 0.8]], requires_grad=True)  # ||w|| = 1: no penalty anywhere
    critic = lambda x: x @ w.T  # noqa: E731
    real, fake = torch.randn(16, 2), torch.randn(16, 2)
    assert gradient_penalty(critic, real, fake).item() == pytest.approx(0.0, abs=1e-12)
    w2 = torch.tensor([[3.0, 4.0]], requires_grad=True)  # ||w|| = 5: (5 - 1)^2 = 16, d/dw = 2 (5 - 1) w / 5
    gp = gradient_penalty(lambda x: x @ w2.T, real, fake)
    assert gp.item() == pytest.approx(16.0)
    gp.backward()
    torch.testing.assert_close(w2.grad, 2 * 4 * torch.tensor([[3.0, 4.0]]) / 5)


def test_weight_clipping():
    critic = _hand_critic()
    clip_weights_(critic.parameters(), 0.5)
    assert all(p.abs().max() <= 0.5 for p in critic.parameters())
    assert critic.out.weight.tolist() == [[0.5, 0.5]] and critic.hidden.bias.tolist() == [0.0, -0.5]
    with pytest.raises(ValueError, match="clip"):
        clip_weights_(critic.parameters(), 0.0)


def test_mixture_and_mode_statistics():
    config = WGANConfig(std=0.02)
    centres = mode_centres(config)
    assert centres.shape == (8, 2)
    torch.testing.assert_close(centres.norm(dim=1), torch.full((8,), 2.0))
    torch.manual_seed(0)
    x = target_distribution(config).sample((40000,))
    stats = mode_statistics(x, centres, 0.02, 20)
    # within 3 std of the own centre in 2-D: P(chi2_2 <= 9) = 1 - exp(-4.5)
    assert stats["high_quality_share"] == pytest.approx(1 - math.exp(-4.5), abs=0.003)
    assert stats["modes_covered"] == 8
    assert np.allclose(np.array(stats["samples_per_mode"]) / 40000, (1 - math.exp(-4.5)) / 8, atol=0.006)
    grid = mode_centres(WGANConfig(target="grid"))
    assert grid.shape == (25, 2) and grid.min() == -2 and grid.max() == 2
    collapsed = centres[:1].repeat(100, 1)  # every sample on one mode
    assert mode_statistics(collapsed, centres, 0.02, 20)["modes_covered"] == 1


def test_exact_wasserstein1_closed_forms():
    x = np.array([[0.0, 0.0], [1.0, 0.0]])
    assert wasserstein1(x, x + [0.0, 3.0]) == pytest.approx(3.0)  # a translation moves every point by 3
    y = np.array([[1.0, 0.0], [0.0, 0.0]])
    assert wasserstein1(x, y) == pytest.approx(0.0)  # the same measure, points reordered
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(300, 1)), rng.normal(size=(300, 1))
    a2, b2 = np.hstack([a, np.zeros_like(a)]), np.hstack([b, np.zeros_like(b)])
    assert wasserstein1(a2, b2) == pytest.approx(np.abs(np.sort(a[:, 0]) - np.sort(b[:, 0])).mean())  # 1-D: sorted


def test_config_validation():
    with pytest.raises(ValueError, match="lipschitz"):
        WGANConfig(lipschitz=("spectral-norm", "spectral-norm"))
    with pytest.raises(ValueError, match="iterations"):
        WGANConfig(iterations=0)
    assert WGANConfig(max_steps=30).iterations == 30


@pytest.mark.slow
def test_cli_smoke_all_methods(tmp_path):
    out = tmp_path / "run"
    genlab_here("run", "wgan", "--lipschitz", "spectral-norm", "weight-clip", "gradient-penalty",
                "spectral-regularization", "--iterations", "60", "--w1-every", "30", "--log-every", "10",
                "--eval-samples", "300", "--curve-samples", "100", "--target-samples", "1000", "--out", str(out))
    for name in ("config.json", "env.json", "metrics.json", "summary.md", "metrics/steps.jsonl",
                 "checkpoints/last.pt", "figures/snapshots.png", "figures/wasserstein.png"):
        assert (out / name).is_file(), name
    record = Record.read(out)
    metrics = record.extra
    assert record.metric("w1_weight-clip").value == metrics["methods"][1]["w1"]
    assert [m["method"] for m in metrics["methods"]] == ["spectral-norm", "weight-clip", "gradient-penalty",
                                                         "spectral-regularization"]
    assert all(m["w1"] > 0 and 0 <= m["modes_covered"] <= 8 for m in metrics["methods"])
    sn = metrics["methods"][0]
    assert sn["critic_spectral_norms"] == pytest.approx([1.0, 1.0], abs=0.05)  # normalised after every step
    assert "| spectral-norm |" in (out / "summary.md").read_text()
    steps = (out / "metrics" / "steps.jsonl").read_bytes()
    # resume: every method is already in the checkpoint, nothing retrains, the table is rewritten
    genlab_here("run", "wgan", "--lipschitz", "spectral-norm", "weight-clip", "gradient-penalty",
                "spectral-regularization", "--iterations", "60", "--w1-every", "30", "--log-every", "10",
                "--eval-samples", "300", "--curve-samples", "100", "--target-samples", "1000", "--out", str(out),
                "--resume")
    again = Record.read(out).extra
    assert [m["w1"] for m in again["methods"]] == [m["w1"] for m in metrics["methods"]]
    assert (out / "metrics" / "steps.jsonl").read_bytes() == steps
