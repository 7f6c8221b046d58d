"""SPEC §11: the two uniform KLs computed three ways, forward-KL moment matching, the
reverse-KL fit on one mode, and the experiment through the real CLI."""

import math

import pytest
import torch

from conftest import genlab_here
from genlab.record import Record
from genlab.experiments.divergence import (DivergenceConfig, fit, kl_quadrature, mixture, moment_matching,
                                           reverse_kl_loss, uniform_kl)


def test_uniform_kl_is_log4_one_way_and_infinite_the_other():
    u = uniform_kl(mc_samples=10_000)
    assert u["torch_pq"] == pytest.approx(math.log(4), rel=1e-14)
    assert u["quad_pq"] == pytest.approx(math.log(4), rel=1e-12)
    assert u["mc_pq"] == pytest.approx(math.log(4), rel=1e-12)
    assert u["torch_qp"] == math.inf and u["mc_qp"] == math.inf
    # with p floored at eps the integral is (3/4) log(1/(4 eps)) - (1/4) log 4: unbounded as eps -> 0
    for eps, value in u["quad_qp_floor"].items():
        assert value == pytest.approx(0.75 * math.log(0.25 / eps) - 0.25 * math.log(4), rel=1e-9)
    assert u["floor_slope"] == pytest.approx(0.75, rel=1e-9) and u["q_mass_outside"] == 0.75


def test_quadrature_kl_matches_closed_form_between_gaussians():
    config = DivergenceConfig(modes=(0.3,), mode_stds=(1.2,), weights=(1.0,))
    forward, reverse = (kl_quadrature(mixture(config), -0.5, 0.7, reverse) for reverse in (False, True))
    P, Q = torch.distributions.Normal(0.3, 1.2), torch.distributions.Normal(-0.5, 0.7)
    assert forward == pytest.approx(torch.distributions.kl_divergence(P, Q).item(), rel=1e-6)
    assert reverse == pytest.approx(torch.distributions.kl_divergence(Q, P).item(), rel=1e-6)


def test_reverse_kl_loss_is_unbiased_for_the_true_kl():
    config = DivergenceConfig(modes=(0.3,), mode_stds=(1.2,), weights=(1.0,))
    eps = torch.randn(400_000, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    mean, log_std = torch.tensor(-0.5, dtype=torch.float64), torch.tensor(math.log(0.7), dtype=torch.float64)
    estimate = reverse_kl_loss(mean, log_std, mixture(config), eps).item()
    exact = torch.distributions.kl_divergence(torch.distributions.Normal(-0.5, 0.7),
                                              torch.distributions.Normal(0.3, 1.2)).item()
    assert estimate == pytest.approx(exact, abs=5e-3)


@pytest.fixture(scope="module")
def fits():
    config = DivergenceConfig(steps=1500, batch_size=256, p_samples=20000)
    torch.manual_seed(0)
    p = mixture(config)
    data = p.sample((config.p_samples,))
    generator = torch.Generator().manual_seed(0)
    forward = fit("forward", config, p, data, config.steps, generator)[-1]
    reverse = fit("reverse", config, p, data, config.steps, generator)[-1]
    return config, data, forward, reverse


def test_forward_kl_fit_matches_moments(fits):
    config, data, forward, _ = fits
    mean, std = moment_matching(config)
    assert (mean, std) == pytest.approx((0.0, math.sqrt(4 + 0.25)))  # ½(0.25 + 4) · 2 - 0
    # the maximum-likelihood fit reaches the data's moments, which estimate P's
    assert forward["mean"] == pytest.approx(data.mean().item(), abs=0.03)
    assert forward["std"] == pytest.approx(data.std().item(), abs=0.03)
    assert forward["mean"] == pytest.approx(mean, abs=0.06) and forward["std"] == pytest.approx(std, abs=0.06)


def test_reverse_kl_fit_sits_on_one_mode(fits):
    config, _, _, reverse = fits
    assert reverse["mean"] == pytest.approx(2.0, abs=0.05)  # the start 0.5 lies on the side of +2
    assert reverse["std"] == pytest.approx(0.5, abs=0.05)


def test_cli_smoke(tmp_path):
    out = tmp_path / "run"
    genlab_here("run", "divergence", "--steps", "30", "--p-samples", "500", "--batch-size", "64", "--out", str(out))
    for name in ("config.json", "env.json", "metrics.json", "summary.md", "metrics/fits.csv",
                 "figures/uniform_kl.png", "figures/fits.png", "figures/training.png"):
        assert (out / name).is_file(), name
    record = Record.read(out)
    metrics = record.extra
    assert record.metric("kl_pq_uniform").verdict == "meets"
    assert metrics["uniform"]["torch_pq"] == pytest.approx(math.log(4))
    assert float(metrics["uniform"]["torch_qp"]) == math.inf
    assert set(metrics["gaussian_fit"]) >= {"forward", "reverse", "moment_matching"}
