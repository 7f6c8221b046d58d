"""SPEC §12: the optimal discriminator, V(G, D*) = -log 4 + 2 JSD, and the vanishing minimax
generator gradient, each computed (genlab.theory) and checked against a closed form, scipy
or autograd."""

import math

import pytest
import torch
from scipy.spatial.distance import jensenshannon

from genlab.experiments.gan import minimax_generator_loss
from genlab.experiments.dcgan import generator_loss as non_saturating_generator_loss
from genlab.theory import generator_gradients, grid_densities, jensen_shannon, optimal_discriminator, value


@pytest.fixture(scope="module")
def densities():
    x, p_data, p_g = grid_densities()
    return x, p_data, p_g, optimal_discriminator(p_data, p_g)


def test_bce_minimiser_is_p_data_over_p_data_plus_p_g(densities):
    _, p_data, p_g, d_numeric = densities
    d_star = p_data / (p_data + p_g)
    assert (d_numeric - d_star).abs().max().item() < 1e-4
    assert d_star.min() < 0.01 and d_star.max() > 0.7  # the densities differ: D* is far from 1/2


def test_value_at_the_optimum_is_minus_log4_plus_2jsd(densities):
    _, p_data, p_g, d_numeric = densities
    jsd = jensen_shannon(p_data, p_g)
    assert jsd.item() == pytest.approx(jensenshannon(p_data.numpy(), p_g.numpy()) ** 2, rel=1e-9)  # scipy: sqrt(JSD)
    assert 0.05 < jsd.item() < math.log(2)
    v = value(p_data, p_g, d_numeric)
    assert v.item() == pytest.approx(-math.log(4) + 2 * jsd.item(), abs=1e-7)
    # D* maximises V: any other discriminator does worse, D = 1/2 gives exactly -log 4
    assert value(p_data, p_g, torch.full_like(p_data, 0.5)).item() == pytest.approx(-math.log(4))
    for eps in (1e-2, -1e-2):
        assert value(p_data, p_g, (d_numeric + eps).clamp(1e-6, 1 - 1e-6)) < v
    # p_g = p_data: JSD = 0 and V(G, D*) = -log 4, the global minimum over G
    assert value(p_data, p_data, torch.full_like(p_data, 0.5)).item() == pytest.approx(-math.log(4))
    assert jensen_shannon(p_data, p_data).item() == pytest.approx(0.0, abs=1e-15)


def test_minimax_gradient_is_minus_expected_d_times_logit_gradient():
    for shift in (0.0, -3.0):
        g = generator_gradients(shift)
        torch.testing.assert_close(g["minimax"], g["minimax_formula"], rtol=1e-10, atol=1e-14)
        torch.testing.assert_close(g["non_saturating"], g["non_saturating_formula"], rtol=1e-10, atol=1e-14)


def test_minimax_gradient_vanishes_as_d_of_g_goes_to_zero_non_saturating_does_not():
    shifts = (0.0, -4.0, -8.0, -12.0, -16.0)
    rows = [generator_gradients(s) for s in shifts]
    d = [r["d_fake"] for r in rows]
    mm = [r["minimax"].norm().item() for r in rows]
    ns = [r["non_saturating"].norm().item() for r in rows]
    assert d[-1] < 1e-5 and all(a > b for a, b in zip(d, d[1:]))
    assert all(a > b for a, b in zip(mm, mm[1:])) and mm[-1] < 1e-5 * mm[0]  # -> 0 like D(G(z))
    limit = rows[-1]["mean_dh"].norm().item()  # the non-saturating gradient -> -E[dh/dtheta] != 0
    assert ns[-1] == pytest.approx(limit, rel=1e-5) and limit > 1e-3
    torch.testing.assert_close(rows[-1]["non_saturating"], -rows[-1]["mean_dh"], rtol=1e-5, atol=1e-6)
    # the ratio of the two gradients' norms is of the order of D / (1 - D) once D(G(z)) is small
    assert 0.2 < (mm[-1] / ns[-1]) / (d[-1] / (1 - d[-1])) < 5


def test_generator_losses_match_their_formulas_and_logit_derivatives():
    h = torch.linspace(-30, 10, 41, dtype=torch.float64).unsqueeze(1).requires_grad_(True)
    d = torch.sigmoid(h.detach())
    mm = minimax_generator_loss(h)
    ns = non_saturating_generator_loss(h)
    # float32 internally, stable at D -> 0 where log(1 - D) would cancel
    assert mm.item() == pytest.approx(torch.log1p(-d).mean().item(), rel=1e-5)
    assert ns.item() == pytest.approx((-torch.log(d)).mean().item(), rel=1e-5)
    (g_mm,) = torch.autograd.grad(mm, h)
    (g_ns,) = torch.autograd.grad(ns, h)
    n = len(h)
    # dL/dh = -D / N and -(1 - D) / N, up to float32 rounding of sigmoid near 1 (spacing 6e-8)
    torch.testing.assert_close(g_mm, -d / n, rtol=1e-5, atol=1e-8)
    torch.testing.assert_close(g_ns, -(1 - d) / n, rtol=1e-5, atol=1e-8)


def test_score_identity_p_grad_log_p_is_grad_p():
    from genlab.theory import score_identity

    out = score_identity()
    # the two sides by two different autograd graphs in float64; a dropped factor p would be off by O(1)
    torch.testing.assert_close(out["lhs"], out["rhs"], rtol=1e-10, atol=1e-15)
    # and against the closed form: d/dmu N = N (x - mu) / sigma^2
    x, mu, sigma = out["x"], 0.3, 1.2
    density = torch.exp(-0.5 * ((x - mu) / sigma) ** 2) / (sigma * math.sqrt(2 * math.pi))
    torch.testing.assert_close(out["rhs"][:, 0], density * (x - mu) / sigma**2, rtol=1e-10, atol=1e-15)


def test_score_function_estimator_is_unbiased():
    from genlab.theory import score_function_estimates

    theta = torch.tensor([0.5, -1.0, 2.0, 0.0], dtype=torch.float64)
    rewards = torch.tensor([1.0, 3.0, -2.0, 0.5], dtype=torch.float64)
    est = score_function_estimates(theta, rewards, n=50_000, seed=1)
    torch.testing.assert_close(est["expectation"], est["exact"], rtol=1e-12, atol=1e-14)  # exactly, by enumeration
    assert ((est["mean"] - est["exact"]).abs() < 4 * est["stderr"]).all()  # Monte Carlo, within 4 s.e.
    # the closed form of the exact gradient: pi_i (R_i - E[R])
    pi = torch.softmax(theta, 0)
    torch.testing.assert_close(est["exact"], pi * (rewards - (pi * rewards).sum()), rtol=1e-12, atol=1e-14)
